"""Token classification (tagging): one tag per word, e.g. BIO slot filling or named entities."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from polytask.errors import UserError
from polytask.tasks.base import IGNORE_INDEX, TASK_TYPES, Example, TaskType
from polytask.tasks.spans import extract_spans, span_scores


@TASK_TYPES.register("token_classification")
class TokenClassification(TaskType):
    """One tag per word; the head reads the first sub-token of each word, other sub-tokens are ignored.

    Columns: ``text`` holds a list of words (or a string, split on whitespace), ``label`` a list of tags
    (or a whitespace-separated string) of the same length. Tag schemes BIO, BIOES and BMES are read.
    Prediction: ``{"tags": [...], "spans": [{"label", "start", "end", "text"}]}`` with word positions,
    ``end`` exclusive. Words past ``model.max_length`` are predicted as ``O``.
    Metrics: span precision/recall/F1 (exact type and boundaries), tag accuracy, per-type report.
    """

    type_name = "token_classification"
    level = "token"
    metric_names = ("f1", "precision", "recall", "accuracy")
    main_metric = "f1"

    def read(self, record: dict[str, Any], where: str, labelled: bool = True) -> Example:
        if self.cfg.text_pair:
            raise UserError(f"config key 'tasks.{self.name}.text_pair': token_classification does not take a "
                            "sentence pair")
        words = self._words(self._column(record, self.cfg.text, where), self.cfg.text, where)
        label = None
        if labelled:
            label = self.parse_label(self._column(record, self.cfg.label, where), where)
            if len(label) != len(words):
                raise UserError(f"{where}: {len(label)} tags in column '{self.cfg.label}' for {len(words)} "
                                f"words in column '{self.cfg.text}' (task '{self.name}')")
        return Example(text=words, text_pair=None, label=label, where=where)

    def _words(self, value: Any, column: str, where: str) -> list[str]:
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
            raise UserError(f"{where}: column '{column}' must be a list of words or a string, got {value!r}")
        if not value or not all(w.strip() for w in value):
            raise UserError(f"{where}: empty text (or an empty word) in column '{column}'")
        return value

    def parse_label(self, value: Any, where: str) -> list[str]:
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
            raise UserError(f"{where}: column '{self.cfg.label}' must be a list of tags, got {value!r}")
        return value

    def raw_labels(self, label: list[str]) -> list[str]:
        return label

    def fit_labels(self, examples, known=None) -> None:
        super().fit_labels(examples, known)
        if "O" in self.label_to_id:  # 'O' first: index 0 is also the tag given to words past max_length
            self.set_labels(["O"] + [t for t in self.labels if t != "O"])

    def encode(self, examples: list[Example], tokenizer, max_length: int) -> list[dict[str, Any]]:
        enc = tokenizer([ex.text for ex in examples], is_split_into_words=True, truncation=True,
                        max_length=max_length)
        feats = []
        for i, ex in enumerate(examples):
            word_ids = enc.word_ids(i)
            # first_token[w] = position of word w's first sub-token; words cut by truncation are absent.
            first_token: list[int] = []
            for pos, w in enumerate(word_ids):
                if w is not None and w == len(first_token):
                    first_token.append(pos)
            f: dict[str, Any] = {"input_ids": enc["input_ids"][i], "first_token": first_token,
                                 "num_words": len(ex.text)}
            if "token_type_ids" in enc:
                f["token_type_ids"] = enc["token_type_ids"][i]
            if ex.label is not None:
                tag_ids = [self.label_id(t, ex.where) for t in ex.label]
                labels = [IGNORE_INDEX] * len(word_ids)
                for w, pos in enumerate(first_token):
                    labels[pos] = tag_ids[w]
                f["labels"] = labels
            feats.append(f)
        return feats

    def collate_labels(self, labels: list[list[int]], seq_len: int) -> torch.Tensor:
        out = torch.full((len(labels), seq_len), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        for row, lab in enumerate(labels):
            out[row, : len(lab)] = torch.tensor(lab)
        return out

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # logits [B, T, C] -> [B*T, C]; labels [B, T] -> [B*T]; IGNORE_INDEX rows are skipped
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)

    def decode(self, logits: torch.Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        pred_ids = logits.argmax(-1).tolist()  # [B, T]
        out = []
        for row, (first, n_words) in enumerate(zip(batch["first_token"], batch["num_words"])):
            tags = [self.labels[pred_ids[row][pos]] for pos in first]
            tags += [self.labels[0]] * (n_words - len(tags))  # words cut off by max_length
            words = batch["words"][row] if "words" in batch else None
            spans = [{"label": typ, "start": s, "end": e, **({"text": " ".join(words[s:e])} if words else {})}
                     for typ, s, e in extract_spans(tags)]
            out.append({"tags": tags, "spans": spans})
        return out

    def metrics(self, predictions: list[dict[str, Any]], golds: list[list[str]]) -> dict[str, Any]:
        pred = [p["tags"] for p in predictions]
        scores = span_scores(golds, pred)
        n = sum(len(g) for g in golds)
        correct = sum(pt == gt for p, g in zip(pred, golds) for pt, gt in zip(p, g))
        return {"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"],
                "accuracy": correct / max(n, 1), "report": scores["per_type"]}
