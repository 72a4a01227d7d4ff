"""Joint batches: tasks that read the same inputs share one encoder pass per example.

ATIS intent and slots label the same utterances; a user's "intent + sentiment of the same message" does too.
Trained one task per batch, every such input would go through the encoder once per task and epoch. Instead,
tasks whose training rows come from the same source (the same built-in dataset, or the same training file)
and tokenise to the same encoder input are trained from one **source**: the union of their rows, each row
once, every task's head reading the one forward pass. A task that has no label in a row (a partially
labelled file, or a different ``max_train_samples`` subset) skips that row in its loss.

Rows are matched on where they came from (``file:line``), and grouping requires that a matched row gives the
same ``input_ids`` (and token types) for every task: ``text: text`` for a sentence task and ``text: words``
for a tagging task of the same utterances tokenise identically and are grouped; a sentence-pair task and a
single-sentence task on the same file are not.

``train.joint_batches: auto`` (the default) groups; ``off`` trains one task per batch as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from polytask.config import Config
from polytask.data.features import TaskData, collate_training, pad_inputs, source_key
from polytask.tasks import TaskType
from polytask.tasks.base import IGNORE_INDEX


@dataclass
class Source:
    """One stream of training inputs and the tasks trained from it.

    ``tasks``: the tasks (config order); ``index[t][r]``: the position of source row ``r`` among task ``t``'s
    training features, or -1 where ``t`` has no label for that row; ``lengths[r]``: the row's token count.
    A single-task source is the task itself (``name`` = the task's name, ``index`` the identity).
    """

    name: str
    tasks: list[str]
    index: dict[str, list[int]]
    lengths: list[int]
    note: str = ""  # why tasks that read the same data were not grouped (shown to the user)
    split: str = "train"  # the TaskData split its rows index ("distill": a task's unlabelled distill_data)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def joint(self) -> bool:
        return len(self.tasks) > 1


def _input_of(feature: dict[str, Any]) -> tuple:
    return (tuple(feature["input_ids"]), tuple(feature.get("token_type_ids", ())))


def build_sources(config: Config, data: dict[str, TaskData]) -> list[Source]:
    """Group the tasks into sources (see the module docstring); config order is kept."""
    names = list(data)
    if config.train.joint_batches == "off":
        return [_single(t, data[t]) for t in names]
    # a task that lays out its own encoder rows (retrieval: queries and documents) shares them with no other task
    key = {t: (source_key(config.tasks[t]) if data[t].task.shares_inputs else None) or ("task", t) for t in names}
    by_key: dict[tuple, list[str]] = {}
    for t in names:
        by_key.setdefault(key[t], []).append(t)
    sources: list[Source] = []
    placed: set[str] = set()
    for t in names:
        if t in placed:
            continue
        candidates = [c for c in by_key[key[t]] if c not in placed]
        group, rows, notes = [t], _rows_of(data[t]), []
        for other in candidates[1:]:
            clash = _merge(rows, other, data[other])
            if clash is None:
                group.append(other)
            else:
                notes.append(f"tasks '{t}' and '{other}' read the same data but {clash}; they train in separate "
                             "batches")
        placed.update(group)
        if len(group) == 1:
            src = _single(t, data[t])
            src.note = "; ".join(notes)
            sources.append(src)
            continue
        order = list(rows)  # first appearance: the first task's row order, then rows only later tasks have
        index = {g: [rows[w]["tasks"].get(g, -1) for w in order] for g in group}
        lengths = [len(rows[w]["input"][0]) for w in order]
        sources.append(Source("+".join(group), group, index, lengths, note="; ".join(notes)))
    return sources


def _single(name: str, data: TaskData) -> Source:
    feats = data.features["train"]
    return Source(name, [name], {name: list(range(len(feats)))}, [len(f["input_ids"]) for f in feats])


def _rows_of(data: TaskData) -> dict[str, dict[str, Any]]:
    """``where`` -> the row's encoder input and, per task, its feature index."""
    rows: dict[str, dict[str, Any]] = {}
    for i, (ex, f) in enumerate(zip(data.examples["train"], data.features["train"])):
        rows.setdefault(ex.where, {"input": _input_of(f), "tasks": {}})["tasks"][data.task.name] = i
    return rows


def _merge(rows: dict[str, dict[str, Any]], name: str, data: TaskData) -> str | None:
    """Add task ``name``'s rows to ``rows`` when every shared row has the same encoder input; else say why not
    (and leave ``rows`` unchanged)."""
    mine = _rows_of(data)
    for w, r in mine.items():
        if w in rows and rows[w]["input"] != r["input"]:
            return f"tokenise {w} differently (columns '{data.task.cfg.text}'" + \
                   (f" + '{data.task.cfg.text_pair}'" if data.task.cfg.text_pair else "") + ")"
    if not set(mine) & set(rows):
        return "share no training row"
    for w, r in mine.items():
        rows.setdefault(w, {"input": r["input"], "tasks": {}})["tasks"][name] = r["tasks"][name]
    return None


def collate_source(source: Source, rows: list[int], data: dict[str, TaskData], tasks: dict[str, TaskType],
                   pad_id: int) -> dict[str, Any]:
    """One batch of a source: the encoder input of ``rows`` (each once, padded to the longest) and, per task,
    ``parts[task] = (row positions in the batch that task has labels for [n_t], its labels)``."""
    split = source.split
    feats = []  # the encoder input of each row, from the first task that has it
    for r in rows:
        t = next(t for t in source.tasks if source.index[t][r] >= 0)
        feats.append(data[t].features[split][source.index[t][r]])
    first = tasks[source.tasks[0]]
    if first.expands_rows:  # one task alone, whose loss reads every row it lays out (retrieval)
        batch = collate_training(feats, first, pad_id)
        del batch["task"]
        batch["parts"] = {first.name: (torch.arange(batch["input_ids"].shape[0]), batch.pop("labels"))}
        batch["index"] = {first.name: [source.index[first.name][r] for r in rows]}
        batch["split"] = split
        return batch
    batch: dict[str, Any] = pad_inputs(feats, pad_id)
    seq_len = batch["input_ids"].shape[1]
    parts, index = {}, {}
    for t in source.tasks:
        pos = [k for k, r in enumerate(rows) if source.index[t][r] >= 0]
        if not pos:
            continue  # no row of this batch is labelled for t: t contributes no loss here
        index[t] = [source.index[t][rows[k]] for k in pos]
        labels = tasks[t].collate_labels([data[t].features[split][i]["labels"] for i in index[t]], seq_len)
        parts[t] = (torch.tensor(pos, dtype=torch.long), labels)
    batch["parts"] = parts
    batch["index"] = index  # task -> its rows' feature indices in data[task].features[split] (distillation)
    batch["split"] = split
    return batch


def describe(sources: list[Source]) -> list[str]:
    """Lines telling the user how tasks were grouped (only when something was grouped or refused)."""
    lines = []
    for s in sources:
        if s.joint:
            counts = ", ".join(f"{t} {sum(i >= 0 for i in s.index[t])}" for t in s.tasks)
            lines.append(f"joint batches: {' + '.join(s.tasks)} share one encoder pass per input "
                         f"({len(s)} inputs; labelled: {counts})")
        if s.note:
            lines.append(f"joint batches: {s.note}")
    return lines


Parts = dict[str, tuple[torch.Tensor, torch.Tensor]]  # task -> (row positions in the batch [n_t], labels)


def stack_sources(batches: list[dict[str, Any]], pad_id: int,
                  tasks: dict[str, TaskType]) -> tuple[dict[str, torch.Tensor], Parts]:
    """Several sources' batches (``sampling: all_tasks``) as ONE encoder input: rows stacked, padded to the
    longest; each task's row positions shifted to its batch's rows, token labels padded to the new length."""
    if len(batches) == 1:
        b = batches[0]
        return {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, b["parts"]
    seq_len = max(b["input_ids"].shape[1] for b in batches)
    stacked: dict[str, list[torch.Tensor]] = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
    parts, start = {}, 0
    for b in batches:
        pad = seq_len - b["input_ids"].shape[1]
        for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            stacked[key].append(torch.nn.functional.pad(b[key], (0, pad), value=value))
        for t, (pos, labels) in b["parts"].items():
            if tasks[t].level == "token" and pad:  # token labels [n, T]: one per position
                labels = torch.nn.functional.pad(labels, (0, pad), value=IGNORE_INDEX)
            parts[t] = (pos + start, labels)
        start += b["input_ids"].shape[0]
    return {k: torch.cat(v) for k, v in stacked.items()}, parts


def segment_sources(batches: list[dict[str, Any]], pad_id: int, tasks: dict[str, TaskType],
                    slack: float = 1.15) -> list[tuple[dict[str, torch.Tensor], Parts]]:
    """Several sources' batches (``sampling: all_tasks``) as encoder segments: batches of similar length are
    stacked into one segment, but a batch is never padded far beyond its own length — BBC articles at 128
    tokens and ATIS utterances at 15 run as two segments, so the step costs what its batches cost separately.

    Greedy over the batches sorted by length: a batch joins the current segment while the segment's padded
    size (rows x longest) stays within ``slack`` x its tokens before padding."""
    order = sorted(range(len(batches)), key=lambda i: batches[i]["input_ids"].shape[1])
    buckets: list[list[int]] = []
    for i in order:
        n, t = batches[i]["input_ids"].shape
        if buckets:
            cur = buckets[-1]
            rows = sum(batches[j]["input_ids"].shape[0] for j in cur) + n
            real = sum(batches[j]["input_ids"].numel() for j in cur) + n * t
            if rows * t <= slack * real:  # sorted: t is the longest so far
                cur.append(i)
                continue
        buckets.append([i])
    return [stack_sources([batches[j] for j in sorted(b)], pad_id, tasks) for b in buckets]
