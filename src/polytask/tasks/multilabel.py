"""Multi-label classification: an independent sigmoid per label, binary cross-entropy loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import classification_report, f1_score

from polytask.errors import UserError
from polytask.tasks.base import TASK_TYPES, TaskType, symmetric_kl


@TASK_TYPES.register("multilabel_classification")
class MultiLabelClassification(TaskType):
    """Any number of labels per text, e.g. ATIS utterances with two intents.

    Column ``label`` holds a list of strings, or one string split on ``label_separator`` (default ``;``).
    Loss: binary cross-entropy summed over labels, averaged over examples (so an 18-label head pulls on the
    shared encoder about as hard as an 18-way softmax classifier does). Prediction: every label whose
    probability exceeds ``threshold``; when none does, the single most probable label (a text always gets
    at least one label): ``{"labels": [...], "scores": {label: probability}}``.
    Metrics: ``accuracy`` is exact-set match; micro/macro F1 over labels; per-label report.
    """

    type_name = "multilabel_classification"
    metric_names = ("accuracy", "micro_f1", "macro_f1")
    main_metric = "accuracy"

    def parse_label(self, value: Any, where: str) -> list[str]:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(self.cfg.label_separator)]
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                                  for v in value):
            raise UserError(f"{where}: label column '{self.cfg.label}' of multilabel task '{self.name}' must "
                            f"be a list of strings or a '{self.cfg.label_separator}'-separated string, "
                            f"got {value!r}")
        labels = sorted({str(v) for v in value if str(v).strip()})
        if not labels:
            raise UserError(f"{where}: empty label list in column '{self.cfg.label}'")
        return labels

    def raw_labels(self, label: list[str]) -> list[str]:
        return label

    def encode_label(self, label: list[str], where: str) -> list[int]:
        return [self.label_id(lab, where) for lab in label]

    def placeholder_labels(self, feature):
        return []  # distillation's unlabelled rows: never read by a loss

    def collate_labels(self, labels: list[list[int]], seq_len: int) -> torch.Tensor:
        out = torch.zeros(len(labels), len(self.labels))  # [B, C] multi-hot
        for row, ids in enumerate(labels):
            out[row, ids] = 1.0
        return out

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # logits, labels [B, C]: BCE summed over the C labels, mean over the B examples. A mean over labels
        # too would reach the shared encoder at 1/C the scale of a C-way softmax's cross-entropy (ATIS: 1/18
        # of the tagging loss), and the head would barely train beside other tasks.
        return F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum") / max(logits.shape[0], 1)

    def divergence(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # each label is a Bernoulli variable: logits x -> two-class logits [log sigmoid(x), log sigmoid(-x)]
        def two(x):
            x = x.float().reshape(-1, 1)
            return torch.cat([F.logsigmoid(x), F.logsigmoid(-x)], -1)  # [B*C, 2]

        return symmetric_kl(two(a), two(b)) * a.shape[-1]  # summed over labels, mean over examples

    def soft_targets(self, logits, temperature):
        return torch.stack([(x.float() / temperature).sigmoid() for x in logits]).mean(0)  # [B, C]

    def soft_loss(self, logits, targets, labels, temperature):
        # each label a Bernoulli: KL(target || sigmoid(s / T)) summed over labels, mean over examples, x T^2
        # (the scale of the hard loss); the BCE minus the targets' own entropy, so a perfect match reads 0
        p = targets.float().clamp(1e-7, 1 - 1e-7)
        bce = F.binary_cross_entropy_with_logits(logits.float() / temperature, p, reduction="sum")
        entropy = -(p * p.log() + (1 - p) * (1 - p).log()).sum()
        return (bce - entropy) / max(logits.shape[0], 1) * temperature ** 2

    def ensemble_logits(self, logits):
        return torch.logit(self.soft_targets(logits, 1.0), eps=1e-7)  # the mean probabilities, as logits

    def decode(self, logits: torch.Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        probs = logits.float().sigmoid()  # [B, C]
        out = []
        for row in probs:
            chosen = (row > self.cfg.threshold).nonzero().flatten().tolist() or [int(row.argmax())]
            chosen.sort(key=lambda i: -float(row[i]))
            out.append({"labels": [self.labels[i] for i in chosen],
                        "scores": {self.labels[i]: round(float(row[i]), 6) for i in chosen}})
        return out

    def metrics(self, predictions: list[dict[str, Any]], golds: list[list[str]]) -> dict[str, Any]:
        pred_sets = [set(p["labels"]) for p in predictions]
        gold_sets = [set(g) for g in golds]
        y_true = torch.zeros(len(golds), len(self.labels), dtype=torch.long)
        y_pred = torch.zeros_like(y_true)
        for r, (g, p) in enumerate(zip(gold_sets, pred_sets)):
            y_true[r, [self.label_to_id[x] for x in g]] = 1
            y_pred[r, [self.label_to_id[x] for x in p]] = 1
        yt, yp = y_true.numpy(), y_pred.numpy()
        return {
            "accuracy": sum(g == p for g, p in zip(gold_sets, pred_sets)) / max(len(golds), 1),
            "micro_f1": float(f1_score(yt, yp, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(yt, yp, average="macro", zero_division=0)),
            "report": classification_report(yt, yp, target_names=self.labels, output_dict=True, zero_division=0),
        }
