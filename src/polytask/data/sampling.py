"""Which task each batch comes from, and which examples it holds: the multi-task batch plan.

Every batch holds examples of ONE task — or, under joint batches (``data/joint.py``), of one *source*: the
tasks that read the same inputs, each input once; below, "task" means such a unit. An **epoch** is as many
batches as it takes to see every training example of every task once, i.e. ``sum_i ceil(n_i / B)``
batches (``B`` = global batch size: per-process batch size x number of processes). How those batches are
spread over tasks depends on ``train.sampling``:

- ``proportional``: exactly the batches of one pass over each task, shuffled together — each example is
  seen once per epoch, so tasks appear in proportion to their size.
- ``temperature``: each batch draws its task with probability ``p_i ~ n_i^(1/T)`` (``train.temperature``;
  T=1 is proportional in expectation, large T approaches uniform). Small tasks are revisited, large ones
  are not fully covered within one epoch.
- ``annealed``: temperature sampling whose exponent falls over training (Stickland & Murray 2019, "BERT and
  PALs"): in epoch ``e`` of ``E``, ``p_i ~ n_i^a`` with ``a = 1 - 0.8 * e / (E - 1)`` — proportional in the
  first epoch, close to uniform (``a = 0.2``) in the last.
- ``probabilities``: the user's own ``train.task_probabilities`` (normalised).
- ``uniform``: every task equally likely for each batch.
- ``round_robin``: tasks in turn, one batch each.
- ``all_tasks``: every optimizer step holds one batch of EVERY task (in config order), run through the
  encoder together. For weighting methods that need each task's loss at every step (GradNorm, PCGrad,
  CAGrad, FAMO). An epoch is ``max_i ceil(n_i / B)`` steps: the largest task is seen once, smaller ones are
  revisited from their streams. ``tasks_per_step`` is the number of tasks (1 in every other mode).

For the drawn modes each task reads its examples from an endless stream of fresh shuffles, so no example
repeats before all of that task's examples have been seen. The plan of an epoch depends only on
``(seed, epoch)``: resuming at step k of an epoch rebuilds the same plan and skips its first k batches.
Under several processes all of them follow the same plan (so they always run the same task), and each
takes its own slice of every global batch.
"""

from __future__ import annotations

import math
import random

from polytask.config import TrainConfig

Plan = list[tuple[str, list[int]]]


class MultiTaskBatchPlan:
    """Deterministic per-epoch list of ``(task, example indices)`` for one process.

    ``lengths`` maps task -> token length of each training example (used by ``group_by_length``).
    """

    def __init__(self, lengths: dict[str, list[int]], cfg: TrainConfig, world_size: int = 1, rank: int = 0,
                 task_probabilities: dict[str, float] | None = None):
        self.lengths = lengths
        # for sampling: probabilities — per unit of the plan (a joint source sums its tasks' probabilities)
        self.task_probabilities = task_probabilities or cfg.task_probabilities
        self.cfg = cfg
        self.world_size, self.rank = world_size, rank
        self.global_batch = cfg.batch_size * world_size
        self.sizes = {t: len(v) for t, v in lengths.items()}
        self.batches_per_task = {t: math.ceil(n / self.global_batch) for t, n in self.sizes.items()}
        self.tasks_per_step = len(self.sizes) if cfg.sampling == "all_tasks" else 1
        self.total_epochs = cfg.epochs  # the loop sets the real count (max_steps may change it)

    def __len__(self) -> int:
        """Micro-batches in one epoch."""
        if self.cfg.sampling == "all_tasks":
            return max(self.batches_per_task.values()) * self.tasks_per_step
        return sum(self.batches_per_task.values())

    def probabilities(self, epoch: int = 0) -> dict[str, float]:
        """Probability of each task for a batch of ``epoch`` (the share of batches for the fixed modes)."""
        mode = self.cfg.sampling
        if mode in ("proportional", "round_robin", "all_tasks"):
            weights = {t: float(n) for t, n in self.sizes.items()}
        elif mode == "uniform":
            weights = {t: 1.0 for t in self.sizes}
        elif mode == "probabilities":
            weights = {t: float(self.task_probabilities[t]) for t in self.sizes}
        elif mode == "annealed":
            span = max(self.total_epochs - 1, 1)
            alpha = 1.0 - 0.8 * min(epoch, span) / span
            weights = {t: n ** alpha for t, n in self.sizes.items()}
        else:  # temperature
            weights = {t: n ** (1.0 / self.cfg.temperature) for t, n in self.sizes.items()}
        total = sum(weights.values())
        return {t: w / total for t, w in weights.items()}

    def epoch(self, epoch: int) -> Plan:
        rng = random.Random(f"plan-{self.cfg.seed}-{epoch}")
        mode = self.cfg.sampling
        if mode == "proportional":
            plan = [(t, b) for t in self.sizes for b in self._task_batches(t, epoch, 0)]
            rng.shuffle(plan)
        elif mode == "all_tasks":
            streams = {t: self._stream(t, epoch) for t in self.sizes}
            steps = max(self.batches_per_task.values())
            plan = [(t, next(streams[t])) for _ in range(steps) for t in self.sizes]
        else:
            tasks = list(self.sizes)
            if mode == "round_robin":
                order = [tasks[i % len(tasks)] for i in range(len(self))]
            else:
                probs = self.probabilities(epoch)
                order = rng.choices(tasks, weights=[probs[t] for t in tasks], k=len(self))
            streams = {t: self._stream(t, epoch) for t in tasks}
            plan = [(t, next(streams[t])) for t in order]
        return [(t, self._shard(b)) for t, b in plan]

    def _stream(self, task: str, epoch: int):
        rnd = 0
        while True:  # endless: a fresh shuffle of the task each time it runs out
            yield from self._task_batches(task, epoch, rnd)
            rnd += 1

    def _task_batches(self, task: str, epoch: int, rnd: int) -> list[list[int]]:
        """One shuffled pass over a task, cut into global batches."""
        idx = list(range(self.sizes[task]))
        random.Random(f"task-{self.cfg.seed}-{epoch}-{rnd}-{task}").shuffle(idx)
        bs = self.global_batch
        if self.cfg.group_by_length:
            # Sort within mega-chunks of 50 batches: similar lengths share a batch (less padding) while the
            # order across chunks stays random.
            lens = self.lengths[task]
            mega = 50 * bs
            idx = [i for s in range(0, len(idx), mega)
                   for i in sorted(idx[s:s + mega], key=lambda i: -lens[i])]
            batches = [idx[s:s + bs] for s in range(0, len(idx), bs)]
            random.Random(f"group-{self.cfg.seed}-{epoch}-{rnd}-{task}").shuffle(batches)
            return batches
        return [idx[s:s + bs] for s in range(0, len(idx), bs)]

    def _shard(self, batch: list[int]) -> list[int]:
        """This process's slice of a global batch; a short final batch is padded by repeating examples."""
        w = self.world_size
        if w == 1:
            return batch
        need = math.ceil(len(batch) / w) * w
        padded = (batch * need)[:need]
        return padded[self.rank::w]
