"""Replay: a seeded sample of the old tasks' training rows trains beside the new data."""

from __future__ import annotations

import math
import random

from polytask.data.features import TaskData


def replay_rows(data: dict[str, TaskData], old: list[str], new: list[str], ratio: float, seed: int,
                keys: dict[str, str]) -> dict[str, int]:
    """Cut each old task's training rows down to its share of the replay buffer, in place: ``ratio`` of all
    training rows are old ones (``ratio / (1 - ratio)`` × the new rows), split across the old tasks by their
    size; each keeps a seeded random sample in its original order (a reservoir drawn once), seeded by ``keys[t]``
    (its data source) so that tasks reading one file keep the same rows. Returns the rows kept per old task."""
    new_rows = sum(len(data[t].features["train"]) for t in new)
    total_old = sum(len(data[t].features["train"]) for t in old)
    budget = math.ceil(ratio / (1.0 - ratio) * new_rows) if ratio > 0 else 0
    kept = {}
    for t in old:
        feats = data[t].features["train"]
        n = min(len(feats), math.ceil(budget * len(feats) / max(total_old, 1))) if budget else 0
        rows = sorted(random.Random(f"replay-{seed}-{keys[t]}").sample(range(len(feats)), n))
        data[t].features["train"] = [feats[i] for i in rows]
        if "train" in data[t].examples:
            data[t].examples["train"] = [data[t].examples["train"][i] for i in rows]
        kept[t] = n
    return kept
