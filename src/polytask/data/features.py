"""From a task's rows to tokenised features, and from features to padded batches (dynamic padding)."""

from __future__ import annotations

import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polytask.catalog.datasets import DATASETS
from polytask.config import TaskConfig
from polytask.data.readers import Rows, read_rows
from polytask.errors import UserError
from polytask.tasks import Example, TaskType

SPLITS = ("train", "validation", "test")


def task_rows(name: str, cfg: TaskConfig, split: str) -> Rows | None:
    """Raw rows of one split of a task, or None when the task has no such split."""
    if cfg.dataset is not None:
        ds = DATASETS.get(cfg.dataset, where=f"config key 'tasks.{name}.dataset'")
        return ds.rows(split) if split in ds.splits() else None
    path = getattr(cfg, split)
    return read_rows(path, key=f"tasks.{name}.{split}") if path else None


def data_source(cfg: TaskConfig, split: str) -> str:
    """What a split is read from, for messages: the built-in dataset's name or the file's path."""
    return f"built-in dataset '{cfg.dataset}'" if cfg.dataset is not None else str(getattr(cfg, split))


def source_key(cfg: TaskConfig) -> tuple[str, str] | None:
    """What a task's training rows come from: a built-in dataset or a training file."""
    if cfg.dataset is not None:
        return ("dataset", cfg.dataset)
    return ("file", str(cfg.train)) if cfg.train else None


def unlabelled(value: Any) -> bool:
    """A label cell that holds nothing: absent, null, an empty string or NaN (an empty CSV/parquet cell)."""
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float)
                                                                               and value != value)


def read_examples(task: TaskType, split: str, labelled: bool = True, partial: bool = False) -> list[Example] | None:
    """A split's examples, ``max_*_samples`` of them when set (a seeded sample, see ``subset_indices``).

    With ``partial`` (the task shares its rows with other tasks), the sample is drawn over all of the source's
    rows and without stratification, so every task reading the source with the same limit gets the same rows
    (they share joint batches); then rows with no label for this task are left out of it — they still train
    the others — instead of being an error. A task reading its rows alone is sampled stratified by label
    (single-label classification)."""
    rows = sampled_rows(task, split, labelled, partial)
    if rows is None:
        return None
    limit = task.cfg.max_train_samples if split == "train" else task.cfg.max_eval_samples
    sampled = bool(limit and len(rows) == limit)  # (a sample, or a split of exactly that size)
    if partial and labelled:
        kept = [(w, rec) for w, rec in rows if not unlabelled(rec.get(task.label_column))]
        if kept and len(kept) < len(rows):
            print(f"polytask: task '{task.name}': {len(rows) - len(kept)} of {len(rows)} {split} rows of "
                  f"{data_source(task.cfg, split)} have no '{task.label_column}' label; they are left out of this "
                  "task only", file=sys.stderr, flush=True)
            rows = kept
    examples = [task.read(rec, where, labelled=labelled) for where, rec in rows]
    if split == "train" and labelled and task.type_name == "classification":
        found = {ex.label for ex in examples}
        if len(found) == 1:
            subset = f" (a sample of max_train_samples={limit} rows)" if sampled else ""
            print(f"polytask: warning: task '{task.name}': the training data from {data_source(task.cfg, split)}"
                  f"{subset} holds a single label, {found.pop()!r}; the model can only learn to predict it",
                  file=sys.stderr, flush=True)
    return examples


def sampled_rows(task: TaskType, split: str, labelled: bool = True, partial: bool = False) -> Rows | None:
    """The raw rows ``read_examples`` reads: the split's rows, or its ``max_*_samples`` sample of them."""
    rows = task_rows(task.name, task.cfg, split)
    if rows is None:
        return None
    if not rows:
        raise UserError(f"the {split} split of task '{task.name}' has no rows")
    limit = task.cfg.max_train_samples if split == "train" else task.cfg.max_eval_samples
    if limit and limit < len(rows):
        # Stratified for single-label classification: a file sorted by class must not give a one-class subset.
        labels = ([task.row_label(rec, where) for where, rec in rows]
                  if labelled and task.type_name == "classification" and not partial else None)
        rows = [rows[i] for i in subset_indices(len(rows), limit, subset_seed(task.cfg, split), labels)]
    return rows


def subset_seed(cfg: TaskConfig, split: str) -> str | None:
    """Seed of a file split's ``max_*_samples`` subset: the file and the split, never the task's name, so tasks
    that read the same file with the same limit pick the same rows. A file counts by its name, not its folder:
    the same config picks the same rows wherever the project sits (config paths are made absolute). None for a
    built-in dataset: its splits already come in a seeded shuffled order, whose first rows are the sample
    (so runs and figures made before this sampling existed stay as they were)."""
    if cfg.dataset is not None:
        return None
    return f"polytask-subset|file:{Path(getattr(cfg, split)).name}|{split}"


def subset_indices(n: int, limit: int, seed: str | None, labels: list[Any] | None = None) -> list[int]:
    """Ascending indices (rows keep their file order) of ``limit`` of ``n`` rows: the first ``limit`` of a
    shuffle seeded by ``seed`` (``None``: the rows are in a random order already).

    With ``labels`` (one per row) the sample is stratified: each label gets ``limit * share`` rows, rounded by
    largest remainder, and at least one row while ``limit`` is at least the number of labels (taken from the
    label furthest above its exact share); each label's rows are its first ones in the shuffled order, so a
    larger ``limit`` adds rows to a smaller one's."""
    order = list(range(n))
    if seed is not None:
        random.Random(seed).shuffle(order)  # a str seed is hashed with SHA-512: the same on every run and machine
    if labels is None:
        return sorted(order[:limit])
    counts = Counter(str(lab) for lab in labels)
    names = sorted(counts)
    # exact share of label l: limit * c_l / n; integer arithmetic keeps the rounding exact
    alloc = {lab: limit * counts[lab] // n for lab in names}
    by_remainder = sorted(names, key=lambda lab: (-(limit * counts[lab] % n), lab))
    for lab in by_remainder[:limit - sum(alloc.values())]:
        alloc[lab] += 1
    if limit >= len(names):
        for lab in names:
            if alloc[lab] == 0:  # one row from the label furthest above its exact share (it has two or more)
                donor = max((d for d in names if alloc[d] > 1), key=lambda d: (alloc[d] * n - limit * counts[d], d))
                alloc[donor] -= 1
                alloc[lab] = 1
    chosen = []
    for i in order:
        lab = str(labels[i])
        if alloc[lab] > 0:
            chosen.append(i)
            alloc[lab] -= 1
    return sorted(chosen)


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
                      fit_labels: bool = True, extra_labels: dict[str, list[str]] | None = None,
                      label_order: dict[str, list[str]] | None = None) -> dict[str, TaskData]:
    """Read and tokenise every split of every task; fit label vocabularies on the training split (plus
    ``extra_labels[task]``: a distillation teacher's labels, which a sample of the data may lack); ``label_order
    [task]``: labels that keep the first ids, in that order (a checkpoint trained on), new ones after them."""
    out = {}
    keys = [source_key(t.cfg) for t in tasks.values()]
    for name, task in tasks.items():
        data = TaskData(task)
        # rows that several tasks read may be labelled for only some of them (partially labelled data)
        partial = source_key(task.cfg) is not None and keys.count(source_key(task.cfg)) > 1
        for split in splits:
            examples = read_examples(task, split, partial=partial)
            if examples is None:
                if split == "train":
                    raise UserError(f"task '{name}' has no training data")
                continue
            if split == "train":
                examples = task.train_examples(examples)
            if split == "train" and fit_labels:
                task.fit_labels(examples, (known_labels(task) or []) + (extra_labels or {}).get(name, []))
                if label_order and name in label_order:
                    task.order_labels(label_order[name])
            data.examples[split] = examples
            data.features[split] = task.encode(examples, tokenizer, max_length)
        out[name] = data
    return out


def pad_inputs(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """The encoder input of ``features`` padded to the longest of them (not to max_length): ``input_ids``,
    ``attention_mask`` and ``token_type_ids``, each [B, T]."""
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
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def collate(features: list[dict[str, Any]], task: TaskType, pad_id: int) -> dict[str, Any]:
    """Pad one task's features to the longest in the batch (not to max_length)."""
    batch: dict[str, Any] = {"task": task.name, **pad_inputs(features, pad_id)}
    seq_len = batch["input_ids"].shape[1]
    if all("labels" in f for f in features):
        batch["labels"] = task.collate_labels([f["labels"] for f in features], seq_len)
    if task.level == "token":
        batch["first_token"] = [f["first_token"] for f in features]
        batch["num_words"] = [f["num_words"] for f in features]
        if "char_spans" in features[0]:  # character-level tagging: the characters each position covers
            batch["char_spans"] = [f["char_spans"] for f in features]
    if "exclude" in features[0]:  # retrieval: per query, the document ids never to rank
        batch["exclude"] = [f["exclude"] for f in features]
    return batch


def collate_training(features: list[dict[str, Any]], task: TaskType, pad_id: int) -> dict[str, Any]:
    """A batch of one task's labelled features as training lays it out: ``collate``, except for a type that lays
    out its own encoder rows (retrieval: queries, then their documents and hard negatives)."""
    if not task.expands_rows:
        return collate(features, task, pad_id)
    batch: dict[str, Any] = {"task": task.name, **pad_inputs(task.encoder_rows(features), pad_id)}
    batch["labels"] = task.collate_labels([f["labels"] for f in features], batch["input_ids"].shape[1])
    return batch


TENSOR_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if k in TENSOR_KEYS and isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
