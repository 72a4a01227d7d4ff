"""Dynamic Weight Average: weights follow how fast each task's loss is falling."""

from __future__ import annotations

import math
from typing import Any

import torch

from polytask.weighting.base import WEIGHTINGS, StepContext, Weighting


@WEIGHTINGS.register("dwa")
class DynamicWeightAverage(Weighting):
    """Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with Attention" (CVPR), section 3.3.

    ``w_i(e) = K * exp(r_i / T) / sum_j exp(r_j / T)`` with ``r_i = L_i(e-1) / L_i(e-2)``, the ratio of task i's
    mean training loss over the two previous epochs: a task whose loss has stopped falling gets more weight.
    The first two epochs use weight 1. ``T`` is option ``temperature`` (default 2, as in the paper). The
    final weight is multiplied by ``tasks.<name>.weight``. Mean losses are averaged over processes at each
    epoch end, so every process uses the same weights. Works with any sampling mode.

    Example::

        train:
          weighting: {method: dwa, temperature: 2.0}
    """

    options = {"temperature": 2.0}

    def __init__(self, task_weights, options=None):
        super().__init__(task_weights, options)
        self.epoch = 0
        self.sums = {t: 0.0 for t in self.tasks}  # this epoch's loss sum and count per task
        self.counts = {t: 0 for t in self.tasks}
        self.history: list[dict[str, float]] = []  # mean loss per finished epoch
        self.current = {t: 1.0 for t in self.tasks}
        self._pending: dict[str, float] = {}

    def _roll(self, epoch: int) -> None:
        """Close finished epochs: their mean losses enter the history and the weights are recomputed."""
        while self.epoch < epoch:
            self.history.append({t: self.sums[t] / self.counts[t] if self.counts[t] else float("nan")
                                 for t in self.tasks})
            self.sums = {t: 0.0 for t in self.tasks}
            self.counts = {t: 0 for t in self.tasks}
            self.epoch += 1
        if len(self.history) >= 2:
            prev, prev2 = self.history[-1], self.history[-2]
            ratios = {t: prev[t] / prev2[t] if prev2[t] > 0 and not math.isnan(prev[t] + prev2[t]) else 1.0
                      for t in self.tasks}
            temp = float(self.opts["temperature"])
            exps = {t: math.exp(r / temp) for t, r in ratios.items()}
            total = sum(exps.values())
            self.current = {t: len(self.tasks) * e / total for t, e in exps.items()}

    def backward(self, losses: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        self._roll(ctx.epoch)
        total = sum(self.task_weights[t] * self.current[t] * loss for t, loss in losses.items())
        ctx.backward(total)
        for t, loss in losses.items():
            s, n = self._pending.get(t, (0.0, 0))
            self._pending[t] = (s + float(loss.detach()), n + 1)
        return total.detach()

    def end_step(self, all_reduce_mean) -> None:
        # Every process runs the same tasks at each step, so the per-task means line up across processes.
        names = sorted(self._pending)
        if names:
            means = torch.tensor([self._pending[t][0] / self._pending[t][1] for t in names], dtype=torch.float64)
            for t, v in zip(names, all_reduce_mean(means).tolist()):
                self.sums[t] += v
                self.counts[t] += 1
        self._pending = {}

    def weights(self) -> dict[str, float]:
        return {t: self.task_weights[t] * self.current[t] for t in self.tasks}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "sums": self.sums, "counts": self.counts, "history": self.history,
                "current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.epoch, self.sums, self.counts = state["epoch"], state["sums"], state["counts"]
            self.history, self.current = state["history"], state["current"]
