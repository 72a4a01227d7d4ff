"""PCGrad: project away the conflicting part of each task's gradient."""

from __future__ import annotations

import random

import torch

from polytask.weighting.base import WEIGHTINGS, StepContext
from polytask.weighting.gradient import GradientMethod


@WEIGHTINGS.register("pcgrad")
class PCGrad(GradientMethod):
    """Yu, Kumar, Gupta, Levine, Hausman & Finn 2020, "Gradient Surgery for Multi-Task Learning" (NeurIPS).

    For each task i, in a random order over the other tasks j: if ``g_i · g_j < 0`` (the gradients conflict),
    ``g_i`` loses its component along ``g_j``: ``g_i -= (g_i · g_j) / |g_j|^2 * g_j``. The shared update is the
    sum of the projected gradients; heads get their own task's gradient. The order is drawn from the step
    number, so every process projects in the same order. Needs ``sampling: all_tasks``.

    Example::

        train:
          sampling: all_tasks
          weighting: {method: pcgrad}
    """

    def combine(self, grads: torch.Tensor, losses, ctx: StepContext) -> torch.Tensor:
        k = grads.shape[0]
        rng = random.Random(f"pcgrad-{ctx.step}")
        out = grads.clone()
        for i in range(k):
            others = [j for j in range(k) if j != i]
            rng.shuffle(others)
            for j in others:
                dot = torch.dot(out[i], grads[j])
                if dot < 0:
                    out[i] -= dot / (grads[j].pow(2).sum() + 1e-12) * grads[j]
        return out.sum(0)
