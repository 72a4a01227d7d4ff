"""Static weighting: the fixed weighted sum L = sum_i w_i * L_i."""

from __future__ import annotations

import torch

from polytask.weighting.base import WEIGHTINGS, StepContext, Weighting


@WEIGHTINGS.register("static")
class StaticWeighting(Weighting):
    """Fixed weights ``w_i`` from ``tasks.<name>.weight`` (default 1.0): ``L = sum_i w_i * L_i``.

    The classic multi-task objective (e.g. MT-DNN, Liu et al. 2019). With one task per batch, each step's
    loss is ``w_task * L_task``, so a weight scales that task's gradient.

    Example::

        train:
          weighting: {method: static}
    """

    partial_labels_ok = True  # per-task state is a fixed vector over every task

    def backward(self, losses: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        total = sum(self.task_weights[t] * loss for t, loss in losses.items())
        ctx.backward(total)
        return total.detach()
