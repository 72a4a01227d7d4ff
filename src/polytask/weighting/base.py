"""The loss-weighting axis: how the per-task losses of a step become one update.

A weighting method is a small class registered in ``WEIGHTINGS``. The training loop calls exactly one
method of it per micro-batch, ``backward(losses, ctx)``, and never asks for its name. A method that only
re-weights losses computes ``sum_i w_i * L_i`` and calls ``ctx.backward`` once; a method that needs
per-task gradients (gradient surgery) may call ``ctx.backward`` per task with ``retain_graph`` and read
``ctx.shared_parameters()``. Methods never store the model: what they need arrives in ``ctx``.
State that must survive a resume goes through ``state_dict`` / ``load_state_dict`` (JSON-able values).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from polytask.errors import UserError
from polytask.registry import Registry


@dataclass
class StepContext:
    """What a weighting method may use during one micro-batch.

    ``backward(loss, retain_graph=False)`` backpropagates (scaled by ``scale`` for gradient accumulation,
    synchronised across processes when ``synced``); ``shared_parameters()`` lists the trainable encoder
    parameters; ``step`` is the optimizer step about to be taken; ``all_reduce_mean(t)`` averages a tensor
    over processes (for methods that compute their own per-task gradients with ``torch.autograd.grad``).
    """

    backward: Callable[..., None]
    shared_parameters: Callable[[], list[torch.nn.Parameter]]
    step: int
    scale: float = 1.0  # what ``backward`` multiplies a loss by (1 / the optimizer step's groups)
    synced: bool = True  # whether this backward all-reduces gradients across processes (last group)
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t  # mean over processes
    epoch: int = 0
    last_layer_parameters: Callable[[], list[torch.nn.Parameter]] = list  # the encoder's top layer


class Weighting:
    """Base class: holds the static task weights from ``tasks.<name>.weight`` and rejects unknown options."""

    options: dict[str, Any] = {}  # option name -> default
    # True for methods that need every task's loss at each step: they require ``sampling: all_tasks``.
    needs_all_tasks = False
    # True for methods whose cross-process bookkeeping does not depend on which tasks a batch holds, so a
    # partially labelled joint batch (a task with no labelled row on some process) cannot desynchronise them.
    partial_labels_ok = False
    # True for methods that compute per-task gradients on the shared parameters (gradient surgery, GradNorm).
    per_task_gradients = False

    def __init__(self, task_weights: dict[str, float], options: dict[str, Any] | None = None):
        self.task_weights = dict(task_weights)
        self.tasks = list(task_weights)
        self.opts = {**self.options, **(options or {})}

    @classmethod
    def check_options(cls, options: dict[str, Any], path: str) -> None:
        for key, value in options.items():
            if key not in cls.options:
                allowed = ", ".join(cls.options) or "none"
                raise UserError(f"unknown config key '{path}.{key}' for this weighting method; "
                                f"its options: {allowed}")
            default = cls.options[key]
            if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                    not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
                raise UserError(f"config key '{path}.{key}' has bad value {value!r}; expected a number >= 0")

    def backward(self, losses: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def end_step(self, all_reduce_mean: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Called once per optimizer step, after every backward of the step and before the model update:
        methods with their own learned parameters update them here (gradients averaged over processes)."""

    def weights(self) -> dict[str, float]:
        """Current weight per task, for logging."""
        return dict(self.task_weights)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting method")
