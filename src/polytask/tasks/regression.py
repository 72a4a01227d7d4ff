"""Regression: one number per text (or pair), mean-squared-error loss."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr

from polytask.errors import UserError
from polytask.tasks.base import TASK_TYPES, TaskType


@TASK_TYPES.register("regression")
class Regression(TaskType):
    """A real-valued target per text (or text pair), e.g. a similarity score.

    Column ``label`` holds a number. Loss: MSE. Prediction: ``{"value": float}``.
    Metrics: Pearson and Spearman correlation, MSE and its square root (RMSE, in the label's unit).

    With ``standardize`` (the default) the head's linear layer learns ``(label - mean) / std`` of the training
    split and an affine layer after it maps back to the label's unit, so outputs (predictions, distillation
    targets, exports) stay in that unit while the loss — the MSE divided by ``std**2`` — and the head's
    starting point (the mean) do not depend on the label's scale: a 1-5 rating head starts at the mean rating
    instead of 0. ``mean`` and ``std`` are stored in the checkpoint's task spec.
    """

    type_name = "regression"
    metric_names = ("pearson", "spearman", "mse", "rmse")
    main_metric = "pearson"

    def parse_label(self, value: Any, where: str) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{where}: label column '{self.cfg.label}' of regression task '{self.name}' must be "
                            f"a finite number, got {value!r}")
        return float(value)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.target_mean, self.target_std = 0.0, 1.0  # the unit of the head's linear layer

    def fit_labels(self, examples, known=None) -> None:
        self.set_labels([])  # no vocabulary
        values = [float(ex.label) for ex in examples if ex.label is not None]
        if self.cfg.standardize and values:
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            self.target_mean, self.target_std = mean, (std if std > 1e-6 else 1.0)  # a constant target: unit scale

    def inherit_fit(self, base: TaskType) -> None:
        """A run that continues from a checkpoint keeps the base head's unit (its weights were learnt in it)."""
        if base.type_name == self.type_name:  # (a task of another type is refused where the base is read)
            self.target_mean, self.target_std = base.target_mean, base.target_std

    def build_head(self, hidden: int, dropout: float) -> torch.nn.Module:
        head = super().build_head(hidden, dropout)
        return torch.nn.Sequential(*head, Rescale(self.target_mean, self.target_std))

    def encode_label(self, label: float, where: str) -> float:
        return label

    def placeholder_labels(self, feature):
        return 0.0  # distillation's unlabelled rows: never read by a loss

    def collate_labels(self, labels: list[float], seq_len: int) -> torch.Tensor:
        return torch.tensor(labels, dtype=torch.float)  # [B]

    @property
    def num_outputs(self) -> int:
        return 1

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float().squeeze(-1), labels) / self.target_std ** 2  # logits [B, 1] -> [B]

    def divergence(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(a.float(), b.float()) / self.target_std ** 2

    def soft_targets(self, logits, temperature):
        return torch.stack([x.float() for x in logits]).mean(0)  # [B, 1]: the teachers' mean output

    def soft_loss(self, logits, targets, labels, temperature):
        return F.mse_loss(logits.float(), targets.float()) / self.target_std ** 2  # regression has no temperature

    def ensemble_logits(self, logits):
        return self.soft_targets(logits, 1.0)

    def decode(self, logits: torch.Tensor, batch: dict[str, Any]) -> list[dict[str, float]]:
        return [{"value": round(float(v), 6)} for v in logits.float().squeeze(-1)]

    def metrics(self, predictions: list[dict[str, float]], golds: list[float]) -> dict[str, Any]:
        pred = [p["value"] for p in predictions]
        constant = len(set(pred)) < 2 or len(set(golds)) < 2  # correlation undefined: report 0
        mse = float(sum((p - g) ** 2 for p, g in zip(pred, golds)) / max(len(golds), 1))
        return {
            "pearson": 0.0 if constant else float(pearsonr(golds, pred)[0]),
            "spearman": 0.0 if constant else float(spearmanr(golds, pred)[0]),
            "mse": mse,
            "rmse": math.sqrt(mse),
        }

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "target_mean": self.target_mean, "target_std": self.target_std}

    def load_spec(self, spec: dict[str, Any]) -> None:
        super().load_spec(spec)  # checkpoints written before standardisation: the identity
        self.target_mean, self.target_std = spec.get("target_mean", 0.0), spec.get("target_std", 1.0)


class Rescale(torch.nn.Module):
    """``x * std + mean``: the head's standardised output back in the label's unit (constants of the task spec,
    not weights)."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = float(mean), float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * self.std + self.mean  # in fp32: a bf16 rating near 4 would be rounded to 1/64

    def extra_repr(self) -> str:
        return f"mean={self.mean:.6g}, std={self.std:.6g}"
