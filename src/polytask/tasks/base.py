"""What every task type shares: the example record, column reading with clear errors, feature padding.

A task type is one class (one file under ``polytask/tasks``) registered in ``TASK_TYPES``. One instance
exists per configured task; it knows the task's name, its ``TaskConfig`` and its label vocabulary, and it
answers five questions: how to read a row (``read``), how to tokenise examples into features
(``encode``), how wide its head is (``num_outputs``), its loss (``loss``), and how to turn logits into
user-facing predictions and metrics (``decode`` / ``metrics``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from polytask.config import TaskConfig
from polytask.errors import UserError
from polytask.registry import Registry

IGNORE_INDEX = -100  # label of sub-tokens and padding that the loss skips (PyTorch's default ignore_index)
LOWER_IS_BETTER = ("mse", "rmse", "loss")  # metrics where smaller is better; every other metric is higher-is-better


@dataclass
class Example:
    """One row of one task: its text(s), its raw label (None when unlabelled) and where it came from."""

    text: Any  # str, or list[str] of words for token tasks
    text_pair: str | None
    label: Any
    where: str  # "file:line", used in every error about this row
    extra: dict[str, Any] | None = None  # what a task type reads beyond text and label (retrieval: excluded ids)


class TaskType:
    """Base of the task types: text-column reading and sentence tokenisation, shared by all four.

    Subclasses set ``level`` ("sequence": one prediction per text, head on the pooled vector;
    "token": one prediction per word), ``metric_names`` and ``main_metric`` (the type's default main
    metric), and implement the label-specific methods. Each instance has its own ``main_metric`` (the one
    averaged into the ``mean`` validation score) and ``metric_reason`` (why it was chosen):
    ``tasks.<name>.metric`` when set, else ``default_metric()``, which a type may base on its labels.
    """

    type_name = ""
    level = "sequence"
    # A training batch of this type lays out its own encoder rows (``encoder_rows``) and its loss reads all of
    # them (retrieval: queries, then documents); such a task never shares an encoder pass with another task's
    # rows (joint batches) and its training features say nothing about how it predicts.
    expands_rows = False
    shares_inputs = True
    has_eval_loss = True  # validation reports this task's loss (retrieval ranks a corpus instead)
    metric_names: tuple[str, ...] = ()
    main_metric = ""  # the type's default; instances overwrite it in choose_metric()

    def __init__(self, name: str, cfg: TaskConfig, labels: list[str] | None = None):
        self.name = name
        self.cfg = cfg
        self.labels: list[str] = list(labels) if labels is not None else []
        self.label_to_id = {lab: i for i, lab in enumerate(self.labels)}
        self.metric_reason = ""
        self.choose_metric()

    # -- main metric --------------------------------------------------------------------------------------
    @property
    def higher_is_better(self) -> bool:
        """Of ``main_metric`` (compare's delta-m and the ``mean`` score flip the sign where it is False)."""
        return self.main_metric not in LOWER_IS_BETTER

    def choose_metric(self) -> None:
        """Set this task's ``main_metric`` and ``metric_reason``: ``tasks.<name>.metric`` when given, else
        ``default_metric()`` (types whose choice depends on the labels call this again once they are fitted)."""
        if self.cfg.metric:
            self.main_metric, self.metric_reason = self.cfg.metric, f"set by tasks.{self.name}.metric"
        else:
            self.main_metric, self.metric_reason = self.default_metric()

    def default_metric(self) -> tuple[str, str]:
        """``(metric, reason)`` when the config does not choose one."""
        return type(self).main_metric, f"the {self.type_name} default"

    # -- labels -------------------------------------------------------------------------------------------
    def set_labels(self, labels: list[str]) -> None:
        self.labels = list(labels)
        self.label_to_id = {lab: i for i, lab in enumerate(self.labels)}

    def fit_labels(self, examples: list[Example], known: list[str] | None = None) -> None:
        """Build the label vocabulary from training examples (plus labels a built-in dataset declares)."""
        seen = set(known or [])
        for ex in examples:
            seen.update(self.raw_labels(ex.label))
        self.set_labels(sorted(seen))

    def order_labels(self, first: list[str]) -> None:
        """Put the labels ``first`` (in that order) before the others: a model trained on from a checkpoint keeps
        its old label ids and appends labels it has not seen (its head grows)."""
        self.set_labels(list(first) + [label for label in self.labels if label not in set(first)])

    def inherit_fit(self, base: TaskType) -> None:
        """Take over what ``fit_labels`` fitted beyond the labels from ``base``, the same task of a checkpoint this
        run trains on from (regression: the unit of its head); most types fit nothing else."""

    def raw_labels(self, label: Any) -> list[str]:
        """The label strings one example carries (for vocabulary building)."""
        return [label]

    def label_id(self, label: str, where: str) -> int:
        try:
            return self.label_to_id[label]
        except KeyError:
            shown = ", ".join(self.labels[:20]) + (", ..." if len(self.labels) > 20 else "")
            raise UserError(f"{where}: unknown label {label!r} for task '{self.name}' "
                            f"(not in the training data; known: {shown})") from None

    # -- reading ------------------------------------------------------------------------------------------
    @property
    def input_column(self) -> str:
        """The column a prediction record gives this task's text in (a plain string input fills it)."""
        return self.cfg.text

    @property
    def label_column(self) -> str:
        """The column whose empty cell means "no label for this task" in partially labelled data."""
        return self.cfg.label

    def read(self, record: dict[str, Any], where: str, labelled: bool = True) -> Example:
        text = self._text(record, self.cfg.text, where)
        pair = self._text(record, self.cfg.text_pair, where) if self.cfg.text_pair else None
        label = self.row_label(record, where) if labelled else None
        return Example(text=text, text_pair=pair, label=label, where=where)

    def row_label(self, record: dict[str, Any], where: str) -> Any:
        """The parsed label of one row (a missing column or a bad value is an error naming the row)."""
        return self.parse_label(self._column(record, self.cfg.label, where), where)

    def _column(self, record: dict[str, Any], column: str, where: str) -> Any:
        if column not in record:
            cols = ", ".join(map(str, record)) or "none"
            raise UserError(f"{where}: missing column '{column}' for task '{self.name}' (columns: {cols})")
        return record[column]

    def _text(self, record: dict[str, Any], column: str, where: str) -> Any:
        value = self._column(record, column, where)
        if not isinstance(value, str):
            raise UserError(f"{where}: column '{column}' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise UserError(f"{where}: empty text in column '{column}'")
        return value

    def parse_label(self, value: Any, where: str) -> Any:
        raise NotImplementedError

    # -- features -----------------------------------------------------------------------------------------
    def encode(self, examples: list[Example], tokenizer, max_length: int) -> list[dict[str, Any]]:
        """Tokenise sentence(-pair) examples; each feature holds input ids, token types and its label."""
        texts = [ex.text for ex in examples]
        pairs = [ex.text_pair for ex in examples] if self.cfg.text_pair else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        feats = []
        for i, ex in enumerate(examples):
            f = {"input_ids": enc["input_ids"][i]}
            if "token_type_ids" in enc:
                f["token_type_ids"] = enc["token_type_ids"][i]
            if ex.label is not None:
                f["labels"] = self.encode_label(ex.label, ex.where)
            feats.append(f)
        return feats

    def encode_label(self, label: Any, where: str) -> Any:
        raise NotImplementedError

    def train_examples(self, examples: list[Example]) -> list[Example]:
        """The training rows this type learns from (all of them, except where a type says otherwise)."""
        return examples

    def encoder_rows(self, features: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The encoder rows of a training batch of ``features`` (the features themselves, one row each)."""
        return features

    def prepare_predict(self, embed, refresh: bool = False) -> None:
        """Called before predicting with a model (``embed``: features -> this task's head outputs): a type that
        needs more than the inputs' own pass (retrieval: its corpus embedded) gets it ready here."""

    def collate_labels(self, labels: list[Any], seq_len: int) -> torch.Tensor:
        raise NotImplementedError

    def placeholder_labels(self, feature: dict[str, Any]) -> Any:
        """Encoded labels for an unlabelled feature (distillation data), shaped like real ones so batches collate;
        for token tasks they also mark the positions that count."""
        raise NotImplementedError

    # -- head, loss, outputs ------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.labels)

    def build_head(self, hidden: int, dropout: float) -> torch.nn.Module:
        """This task's head over the encoder's hidden size: dropout and a linear layer (pooled vector [B, H] ->
        [B, C], or every position [B, T, H] -> [B, T, C] for token tasks)."""
        return torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(hidden, self.num_outputs))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def divergence(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """How far apart two outputs of this head are (smoothness regularisers such as SMART); ``labels``
        only tell which positions count. Each side gets the gradient of its own term only."""
        raise NotImplementedError

    # -- knowledge distillation (polytask distill) -------------------------------------------------------
    def soft_targets(self, logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
        """What a student learns from teachers' logits of the same rows (several: an ensemble, averaged):
        class probabilities softened at ``temperature`` for the softmax types, per-label probabilities for
        multi-label, the mean output for regression. Shapes as the logits."""
        raise NotImplementedError

    def soft_loss(self, logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
                  temperature: float) -> torch.Tensor:
        """The student's loss against ``soft_targets`` on the same scale as ``loss`` (0 when it matches them);
        ``labels`` only tell which positions count."""
        raise NotImplementedError

    def ensemble_logits(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """Logits that ``decode`` reads as the ensemble's prediction (its averaged probabilities)."""
        if len(logits) == 1:
            return logits[0]
        raise NotImplementedError

    def decode(self, logits: torch.Tensor, batch: dict[str, Any]) -> list[Any]:
        """Predictions for a batch, in the user-facing format (one entry per example)."""
        raise NotImplementedError

    def metrics(self, predictions: list[Any], golds: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def save_files(self, folder) -> None:
        """Write what this task needs beside ``spec()`` into a checkpoint or export ``folder`` (retrieval: its
        corpus); most types need nothing."""

    def load_files(self, folder) -> None:
        """Take back what ``save_files`` wrote into ``folder`` (a checkpoint being loaded)."""

    def spec(self) -> dict[str, Any]:
        """What a checkpoint stores about this task to rebuild it without data."""
        return {"type": self.type_name, "labels": self.labels, "main_metric": self.main_metric,
                "metric_reason": self.metric_reason}

    def load_spec(self, spec: dict[str, Any]) -> None:
        """Restore what ``spec`` stored beyond the labels (a checkpoint is being loaded); checkpoints written
        before the main metric was stored keep the one chosen from the config and labels."""
        if spec.get("main_metric"):
            self.main_metric, self.metric_reason = spec["main_metric"], spec.get("metric_reason", "")


def symmetric_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``KL(q || p) + KL(p || q)`` between the softmax distributions of logits ``a`` and ``b`` ([N, C]), mean
    over rows; each term's target side is detached, as in SMART's reference implementation."""
    la, lb = torch.log_softmax(a.float(), -1), torch.log_softmax(b.float(), -1)
    kl = torch.nn.functional.kl_div
    return kl(la, lb.detach(), reduction="batchmean", log_target=True) + kl(lb, la.detach(), reduction="batchmean",
                                                                           log_target=True)


def softmax_targets(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Mean over teachers of ``softmax(logits / T)`` over the last dimension."""
    return torch.stack([(x.float() / temperature).softmax(-1) for x in logits]).mean(0)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): ``KL(targets || softmax(logits / T)) * T^2``, mean over rows ([N, C] each). The
    ``T^2`` keeps the gradient's size independent of ``T``; KL rather than cross-entropy so a student that
    matches its teacher reads 0."""
    log_q = torch.log_softmax(logits.float() / temperature, -1)
    kl = torch.nn.functional.kl_div(log_q, targets.float(), reduction="sum") / max(logits.shape[0], 1)
    return kl * temperature ** 2


TASK_TYPES: Registry[type[TaskType]] = Registry("task type")
