"""Random loss weighting: fresh random task weights at every step."""

from __future__ import annotations

import random
from typing import Any

import torch

from polytask.weighting.base import WEIGHTINGS, StepContext, Weighting


@WEIGHTINGS.register("rlw")
class RandomLossWeighting(Weighting):
    """Lin, Ye, Xu, Shi & Zhang 2022, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
    Multi-Task Learning" (TMLR).

    At every optimizer step the weights are ``K * softmax(z)`` with ``z ~ N(0, 1)`` per task (the paper's
    normal-softmax variant), times ``tasks.<name>.weight``. The draw depends only on the step number and
    option ``seed``, so every process draws the same weights and a resumed run draws what the uninterrupted
    run would have. With one task per batch, a batch's loss is scaled by its task's weight of that step.

    Example::

        train:
          weighting: {method: rlw}
    """

    partial_labels_ok = True  # per-task state is a fixed vector over every task

    options = {"seed": 0}

    def __init__(self, task_weights, options=None):
        super().__init__(task_weights, options)
        self.current = {t: 1.0 for t in self.tasks}

    def draw(self, step: int) -> dict[str, float]:
        rng = random.Random(f"rlw-{self.opts['seed']}-{step}")
        z = torch.tensor([rng.gauss(0.0, 1.0) for _ in self.tasks])
        w = len(self.tasks) * torch.softmax(z, 0)
        return dict(zip(self.tasks, w.tolist()))

    def backward(self, losses: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        self.current = self.draw(ctx.step)
        total = sum(self.task_weights[t] * self.current[t] * loss for t, loss in losses.items())
        ctx.backward(total)
        return total.detach()

    def weights(self) -> dict[str, float]:
        return {t: self.task_weights[t] * self.current[t] for t in self.tasks}

    def state_dict(self) -> dict[str, Any]:
        return {}
