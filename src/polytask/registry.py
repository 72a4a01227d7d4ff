"""A tiny name -> object registry with a decorator.

Every extension axis (task types, loss weightings, ...) owns one ``Registry``. Entries register where they
are defined, and each axis package imports its modules explicitly in its ``__init__`` so that registration
never depends on which modules a user happened to import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from polytask.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes. ``get`` of an unknown name raises a UserError listing the valid names.

    Example::

        TASK_TYPES = Registry("task type")

        @TASK_TYPES.register("classification")
        class Classification: ...

        TASK_TYPES.get("classification")  # -> Classification
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str, where: str = "") -> T:
        if name not in self._entries:
            prefix = f"{where}: " if where else ""
            raise UserError(f"{prefix}unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
