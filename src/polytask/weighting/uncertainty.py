"""Uncertainty weighting: each task's weight is learned as a homoscedastic noise scale."""

from __future__ import annotations

from typing import Any

import torch

from polytask.weighting.base import WEIGHTINGS, StepContext, Weighting
from polytask.weighting.learned import LearnedVector


@WEIGHTINGS.register("uw")
class UncertaintyWeighting(Weighting):
    """Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics" (CVPR).

    Each task has a learned log-variance ``s_i``; the objective is ``sum_i w_i * (exp(-s_i) * L_i + s_i)``
    (the form used for classification and regression alike by most implementations): a task whose loss stays
    high is down-weighted, and the ``+ s_i`` term stops every weight from collapsing to zero. ``s_i`` starts at 0
    (weight 1) and is updated by its own Adam (option ``lr``, default 0.01) once per optimizer step, from
    gradients averaged over processes. Works with any sampling mode: with one task per batch, a batch updates
    its own task's ``s_i``. Logged weight: ``exp(-s_i)``.

    Example::

        train:
          weighting: {method: uw, lr: 0.01}
    """

    partial_labels_ok = True  # per-task state is a fixed vector over every task

    options = {"lr": 0.01}

    def __init__(self, task_weights, options=None):
        super().__init__(task_weights, options)
        self.log_var = LearnedVector(self.tasks, init=0.0, lr=float(self.opts["lr"]))

    def backward(self, losses: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        total = sum(self.task_weights[t] * (torch.exp(-self.log_var[t]) * loss.float() + self.log_var[t])
                    for t, loss in losses.items())
        ctx.backward(total)
        return total.detach()

    def end_step(self, all_reduce_mean) -> None:
        self.log_var.step(all_reduce_mean)

    def weights(self) -> dict[str, float]:
        return {t: self.task_weights[t] * float(torch.exp(-self.log_var[t].detach())) for t in self.tasks}

    def state_dict(self) -> dict[str, Any]:
        return {"log_var": self.log_var.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.log_var.load_state_dict(state["log_var"])
