"""A restricted pickle reader for datasets that ship pickles: plain data only, never code.

``pickle.load`` can call any importable function while it reads, so a tampered data file could run code.
:func:`load_plain_pickle` refuses every opcode that looks up a global (``GLOBAL``, ``STACK_GLOBAL``, the
``EXT`` codes) and every persistent id, which leaves only what the pickle machine builds by itself: ``None``,
booleans, ints, floats, strings, bytes, and lists, tuples, dicts and sets of those.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from polytask.errors import UserError


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asks for a global or a persistent object: code, not plain data."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 - reached by GLOBAL/STACK_GLOBAL/EXT opcodes
        raise RefusedPickle(f"refusing to load {module}.{name}: only plain data is allowed")

    def persistent_load(self, pid):  # noqa: D102
        raise RefusedPickle("refusing a persistent id: only plain data is allowed")


def loads_plain_pickle(data: bytes, where: str = "pickle") -> Any:
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except RefusedPickle as e:
        raise UserError(f"{where}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise UserError(f"{where}: not a readable pickle ({type(e).__name__}: {e})") from None


def load_plain_pickle(path: str | Path) -> Any:
    """The plain data in ``path``; a UserError naming the file for anything else."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    return loads_plain_pickle(data, str(path))
