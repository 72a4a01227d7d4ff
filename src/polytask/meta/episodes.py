"""Few-shot episodes drawn from a task's labelled rows, and the plan of which task each episode comes from.

One labelled dataset yields many few-shot problems: an episode of a classification or multi-label task picks
``ways`` of its labels (at random, in a random order: episode label ``j`` is the ``j``-th picked) and
``shots`` support rows of each (``query_shots`` more for a query set); a token task's episode is
``ways x shots`` support sentences (and ``ways x query_shots`` query sentences) with all their tags. Rows are
indices into the task's tokenised training features; no validation or test row is ever drawn for training
episodes. Every draw depends only on ``(seed, epoch, position)``: resuming rebuilds the same episodes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from polytask.config import MetaConfig
from polytask.errors import UserError

EPISODE_TYPES = ("classification", "multilabel_classification", "token_classification")


@dataclass
class Episode:
    """One few-shot problem: ``task``, ``support`` and ``query`` rows (indices into one split's features) and
    ``classes`` — the task's label ids behind episode labels 0..ways-1 (None for token tasks: every tag)."""

    task: str
    support: list[int]
    query: list[int]
    classes: list[int] | None


def label_rows(task, features: list[dict[str, Any]]) -> dict[int, list[int]] | None:
    """Label id -> the rows carrying it (classification: its label; multi-label: any of its labels); None for
    token tasks."""
    if task.type_name == "token_classification":
        return None
    rows: dict[int, list[int]] = {}
    for i, f in enumerate(features):
        labels = f["labels"] if isinstance(f["labels"], list) else [f["labels"]]
        for lab in labels:
            rows.setdefault(lab, []).append(i)
    return rows


def check_episodes(name: str, task, features: list[dict[str, Any]], cfg: MetaConfig, where: str,
                   query: bool = True) -> None:
    """Refuse a task that cannot make episodes: a type meta-learning does not cover, a single label, or fewer
    than two labels with ``shots`` (``+ query_shots`` with a query set) rows each."""
    if task.type_name not in EPISODE_TYPES:
        from polytask.errors import NotSupportedError

        raise NotSupportedError(f"train.meta: task '{name}' is a {task.type_name} task; meta-learning episodes are "
                                f"built for {', '.join(EPISODE_TYPES)} tasks")
    need = cfg.shots + (cfg.query_shots if query else 0)
    what = "shots + query_shots" if query else "shots"
    rows = label_rows(task, features)
    if rows is None:
        if len(features) < cfg.ways * need:
            raise UserError(f"train.meta: task '{name}' has {len(features)} {where} sentences, fewer than one "
                            f"episode needs (ways x ({what}) = {cfg.ways * need})")
        return
    if len(rows) < 2:
        only = task.labels[next(iter(rows))] if rows else "none"
        raise UserError(f"train.meta: task '{name}' has a single label ({only!r}) in its {where} rows; an episode "
                        "needs at least two")
    if len(eligible(rows, need)) < 2:
        ranked = sorted(rows.items(), key=lambda x: -len(x[1]))
        counts = ", ".join(f"{task.labels[lab]!r} {len(r)}" for lab, r in ranked)
        raise UserError(f"train.meta: task '{name}' has fewer than two labels with {what} = {need} "
                        f"{where} rows each (rows per label: {counts}); lower train.meta.{what.replace(' + ', ' or ')}")


def eligible(rows: dict[int, list[int]], need: int) -> list[int]:
    return sorted(lab for lab, r in rows.items() if len(r) >= need)


def draw_episode(rng: random.Random, name: str, task, rows: dict[int, list[int]] | None, n_features: int,
                 cfg: MetaConfig, query: bool) -> Episode:
    """One episode of task ``name``: ``rows`` from ``label_rows`` (None: a token task over ``n_features``
    sentences). No row is drawn twice, so support and query rows are disjoint; a multi-label label whose rows
    were all taken by earlier labels is passed over for the next one (an episode may then have fewer than
    ``ways`` labels). Support and query rows come in a random order (not label by label), so the inner loop's
    batches mix the labels."""
    q = cfg.query_shots if query else 0
    if rows is None:
        picked = rng.sample(range(n_features), cfg.ways * (cfg.shots + q))
        k = cfg.ways * cfg.shots
        return Episode(name, picked[:k], picked[k:], None)
    labels = eligible(rows, cfg.shots + q)
    classes, support, queries, used = [], [], [], set()
    for lab in rng.sample(labels, len(labels)):
        if len(classes) == cfg.ways:
            break
        free = [r for r in rows[lab] if r not in used]
        if len(free) < cfg.shots + q:  # multi-label: earlier labels took its rows
            continue
        chosen = rng.sample(free, cfg.shots + q)
        used.update(chosen)
        classes.append(lab)
        support += chosen[:cfg.shots]
        queries += chosen[cfg.shots:]
    rng.shuffle(support)
    rng.shuffle(queries)
    return Episode(name, support, queries, classes)


class EpisodePlan:
    """Which task each episode of an epoch comes from, for one process — the meta-learning stand-in for the
    batch plan (``data/sampling.py``), with the same interface the loop reads: ``epoch(e)`` gives
    ``[(task, [position])]``, one item per episode; ``tasks_per_step`` episodes (``train.meta.tasks_per_episode``)
    per micro-step, ``train.grad_accum`` micro-steps per outer update.

    Tasks are drawn uniformly — an episode has the same size whatever its task's size, so every task's few-shot
    problem counts the same (the meta-learning convention; ``train.sampling: proportional``, the default, exists
    to see every row once and has no meaning here) — or by ``n_t^(1/T)`` under ``train.sampling: temperature``.
    An epoch is ``train.meta.episodes_per_epoch`` episodes (default: as many as it takes to draw every training row once
    into a support set, ``sum_t n_t / (ways x shots)``). Under several processes each takes its own episodes
    (every process the same count), and the outer update averages them."""

    def __init__(self, sizes: dict[str, int], cfg: MetaConfig, train_cfg, world_size: int = 1, rank: int = 0):
        self.sizes, self.cfg, self.train_cfg = sizes, cfg, train_cfg
        self.world_size, self.rank = world_size, rank
        self.tasks_per_step = cfg.tasks_per_episode
        per_epoch = cfg.episodes_per_epoch or math.ceil(sum(sizes.values()) / (cfg.ways * cfg.shots))
        step = self.tasks_per_step * train_cfg.grad_accum * world_size  # whole outer updates on every process
        self.global_len = math.ceil(per_epoch / step) * step
        self.total_epochs = train_cfg.epochs

    def __len__(self) -> int:
        return self.global_len // self.world_size

    def probabilities(self, epoch: int = 0) -> dict[str, float]:
        if self.train_cfg.sampling == "temperature":
            weights = {t: n ** (1.0 / self.train_cfg.temperature) for t, n in self.sizes.items()}
        else:
            weights = {t: 1.0 for t in self.sizes}
        total = sum(weights.values())
        return {t: w / total for t, w in weights.items()}

    def epoch(self, epoch: int) -> list[tuple[str, list[int]]]:
        rng = random.Random(f"episodes-{self.train_cfg.seed}-{epoch}")
        tasks = list(self.sizes)
        probs = self.probabilities(epoch)
        order = rng.choices(tasks, weights=[probs[t] for t in tasks], k=self.global_len)
        # the item's position in the global list seeds its episode's rows
        items = [(t, [epoch * self.global_len + i]) for i, t in enumerate(order)]
        return items[self.rank::self.world_size]

    def signature(self) -> dict[str, Any]:
        return {"meta_sizes": self.sizes, "episodes": self.global_len, "tasks_per_episode": self.tasks_per_step}


def episode_rng(seed: int, position: int, salt: str = "train") -> random.Random:
    return random.Random(f"episode-{salt}-{seed}-{position}")
