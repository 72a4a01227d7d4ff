"""The soft-target objective of knowledge distillation, for every head type."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from polytask.tasks import TaskType


@dataclass
class SoftTargets:
    """Knowledge distillation from soft targets (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a
    Neural Network"), per head type through the task type's ``soft_loss``:

    - classification: ``KL(teacher || student) * T^2`` of the outputs softened at temperature ``T``;
    - token tagging: the same, per labelled token (the first token of each word or character);
    - multi-label: per-label Bernoulli KL (soft BCE) summed over labels, ``* T^2``;
    - regression: mean squared error to the teacher's output.

    A labelled row trains on ``(1 - alpha) * hard + alpha * soft``; a row with no label (``distill_data``) on
    ``soft`` alone. ``T^2`` keeps the soft gradients on the hard loss's scale whatever ``T``.

    Example::

        train:
          distill: {teacher: runs/atis, student: {layers: 3}, alpha: 0.5, temperature: 2.0}
    """

    alpha: float
    temperature: float

    def __call__(self, task: TaskType, logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
                 hard: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(objective, soft loss)`` of one task's rows; ``hard`` is their label loss (None: unlabelled rows)."""
        soft = task.soft_loss(logits, targets, labels, self.temperature)
        if hard is None:
            return soft, soft
        return (1.0 - self.alpha) * hard + self.alpha * soft, soft
