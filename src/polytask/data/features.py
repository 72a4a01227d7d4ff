"""From a task's rows to tokenised features, and from features to padded batches (dynamic padding)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from polytask.catalog.datasets import DATASETS
from polytask.config import TaskConfig
from polytask.data.readers import Rows, read_rows
from polytask.errors import UserError
from polytask.tasks import Example, TaskType
from polytask.tasks.base import IGNORE_INDEX

SPLITS = ("train", "validation", "test")


def task_rows(name: str, cfg: TaskConfig, split: str) -> Rows | None:
    """Raw rows of one split of a task, or None when the task has no such split."""
    if cfg.dataset is not None:
        ds = DATASETS.get(cfg.dataset, where=f"config key 'tasks.{name}.dataset'")
        return ds.rows(split) if split in ds.splits() else None
    path = getattr(cfg, split)
    return read_rows(path, key=f"tasks.{name}.{split}") if path else None


def read_examples(task: TaskType, split: str, labelled: bool = True) -> list[Example] | None:
    rows = task_rows(task.name, task.cfg, split)
    if rows is None:
        return None
    limit = task.cfg.max_train_samples if split == "train" else task.cfg.max_eval_samples
    rows = rows[:limit] if limit else rows
    if not rows:
        raise UserError(f"the {split} split of task '{task.name}' has no rows")
    return [task.read(rec, where, labelled=labelled) for where, rec in rows]


def known_labels(task: TaskType) -> list[str] | None:
    if task.cfg.dataset is None:
        return None
    return DATASETS.get(task.cfg.dataset).label_vocab(task.cfg.label)


@dataclass
class TaskData:
    """A task with its examples and tokenised features per split (tokenised once per run)."""

    task: TaskType
    examples: dict[str, list[Example]] = field(default_factory=dict)
    features: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def prepare_task_data(tasks: dict[str, TaskType], tokenizer, max_length: int, splits=SPLITS,
                      fit_labels: bool = True) -> dict[str, TaskData]:
    """Read and tokenise every split of every task; fit label vocabularies on the training split."""
    out = {}
    for name, task in tasks.items():
        data = TaskData(task)
        for split in splits:
            examples = read_examples(task, split)
            if examples is None:
                if split == "train":
                    raise UserError(f"task '{name}' has no training data")
                continue
            if split == "train" and fit_labels:
                task.fit_labels(examples, known_labels(task))
            data.examples[split] = examples
            data.features[split] = task.encode(examples, tokenizer, max_length)
        out[name] = data
    return out


def collate(features: list[dict[str, Any]], task: TaskType, pad_id: int) -> dict[str, Any]:
    """Pad one task's features to the longest in the batch (not to max_length)."""
    seq_len = max(len(f["input_ids"]) for f in features)
    n = len(features)
    input_ids = torch.full((n, seq_len), pad_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((n, seq_len), dtype=torch.long)  # [B, T]
    token_type_ids = torch.zeros((n, seq_len), dtype=torch.long)  # [B, T]
    for i, f in enumerate(features):
        k = len(f["input_ids"])
        input_ids[i, :k] = torch.tensor(f["input_ids"])
        attention_mask[i, :k] = 1
        if "token_type_ids" in f:
            token_type_ids[i, :k] = torch.tensor(f["token_type_ids"])
    batch: dict[str, Any] = {"task": task.name, "input_ids": input_ids, "attention_mask": attention_mask,
                             "token_type_ids": token_type_ids}
    if all("labels" in f for f in features):
        batch["labels"] = task.collate_labels([f["labels"] for f in features], seq_len)
    if task.level == "token":
        batch["first_token"] = [f["first_token"] for f in features]
        batch["num_words"] = [f["num_words"] for f in features]
        if "char_spans" in features[0]:  # character-level tagging: the characters each position covers
            batch["char_spans"] = [f["char_spans"] for f in features]
    return batch


TENSOR_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if k in TENSOR_KEYS and isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def stack_batches(batches: list[dict[str, Any]], pad_id: int) -> tuple[dict[str, Any], list[slice]]:
    """Several tasks' collated batches as ONE encoder input: rows stacked, padded to the longest.

    Returns the stacked ``input_ids`` / ``attention_mask`` / ``token_type_ids`` and, per batch, the slice
    of rows it occupies. Each batch's ``labels`` of token tasks are padded (in place) to the new length.
    One batch is returned as it is."""
    if len(batches) == 1:
        return batches[0], [slice(None)]
    seq_len = max(b["input_ids"].shape[1] for b in batches)
    parts: dict[str, list[torch.Tensor]] = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
    rows, start = [], 0
    for b in batches:
        n, t = b["input_ids"].shape
        pad = seq_len - t
        for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            parts[key].append(torch.nn.functional.pad(b[key], (0, pad), value=value))
        labels = b.get("labels")
        if labels is not None and "first_token" in b and labels.shape[1] < seq_len:  # token task: per position
            b["labels"] = torch.nn.functional.pad(labels, (0, seq_len - labels.shape[1]), value=IGNORE_INDEX)
        rows.append(slice(start, start + n))
        start += n
    return {k: torch.cat(v) for k, v in parts.items()}, rows
