"""Single-label classification: softmax over the labels, cross-entropy loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, classification_report, f1_score

from polytask.errors import UserError
from polytask.tasks.base import TASK_TYPES, TaskType, soft_cross_entropy, softmax_targets, symmetric_kl


@TASK_TYPES.register("classification")
class Classification(TaskType):
    """One label per text (or text pair), e.g. sentiment or topic.

    Column ``label`` holds a string (numbers are read as their string form). Prediction:
    ``{"label": str, "score": probability}``. Metrics: accuracy, macro/micro F1, per-label report.
    """

    type_name = "classification"
    metric_names = ("accuracy", "macro_f1", "micro_f1")
    main_metric = "accuracy"

    def parse_label(self, value: Any, where: str) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise UserError(f"{where}: label column '{self.cfg.label}' of classification task '{self.name}' "
                            f"must be a string or an integer, got {value!r}")
        value = str(value)
        if not value.strip():
            raise UserError(f"{where}: empty label in column '{self.cfg.label}'")
        return value

    def encode_label(self, label: str, where: str) -> int:
        return self.label_id(label, where)

    def placeholder_labels(self, feature):
        return 0  # distillation's unlabelled rows: never read by a loss

    def collate_labels(self, labels: list[int], seq_len: int) -> torch.Tensor:
        return torch.tensor(labels, dtype=torch.long)  # [B]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)  # logits [B, C], labels [B]

    def divergence(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return symmetric_kl(a, b)  # [B, C]

    def soft_targets(self, logits, temperature):
        return softmax_targets(logits, temperature)  # [B, C]

    def soft_loss(self, logits, targets, labels, temperature):
        return soft_cross_entropy(logits, targets, temperature)

    def ensemble_logits(self, logits):
        return softmax_targets(logits, 1.0).clamp(min=1e-12).log()  # log of the mean probabilities

    def decode(self, logits: torch.Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        probs = logits.float().softmax(-1)  # [B, C]
        score, idx = probs.max(-1)
        return [{"label": self.labels[i], "score": round(float(s), 6)} for i, s in zip(idx.tolist(), score)]

    def metrics(self, predictions: list[dict[str, Any]], golds: list[str]) -> dict[str, Any]:
        pred = [p["label"] for p in predictions]
        return {
            "accuracy": float(accuracy_score(golds, pred)),
            "macro_f1": float(f1_score(golds, pred, average="macro", labels=self.labels, zero_division=0)),
            "micro_f1": float(f1_score(golds, pred, average="micro", labels=self.labels, zero_division=0)),
            "report": classification_report(golds, pred, labels=self.labels, output_dict=True, zero_division=0),
        }
