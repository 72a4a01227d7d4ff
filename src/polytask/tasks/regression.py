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

    def fit_labels(self, examples, known=None) -> None:
        self.set_labels([])  # no vocabulary

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
        return F.mse_loss(logits.float().squeeze(-1), labels)  # logits [B, 1] -> [B]

    def divergence(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(a.float(), b.float())

    def soft_targets(self, logits, temperature):
        return torch.stack([x.float() for x in logits]).mean(0)  # [B, 1]: the teachers' mean output

    def soft_loss(self, logits, targets, labels, temperature):
        return F.mse_loss(logits.float(), targets.float())  # regression has no temperature

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
