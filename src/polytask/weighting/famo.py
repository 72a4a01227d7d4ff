"""FAMO: fast adaptive multitask optimisation — balance the rate at which every task's loss falls."""

from __future__ import annotations

from typing import Any

import torch

from polytask.weighting.base import WEIGHTINGS, StepContext, Weighting
from polytask.weighting.learned import LearnedVector

EPS = 1e-8


@WEIGHTINGS.register("famo")
class FAMO(Weighting):
    """Liu, Feng, Stone & Liu 2023, "FAMO: Fast Adaptive Multitask Optimization" (NeurIPS).

    Task logits ``xi`` (start at 0) give weights ``z = softmax(xi)``. The step minimises
    ``sum_i z_i log L_i / c`` with ``c = sum_i z_i / L_i``: a convex combination of the task gradients, each
    divided by its loss, so every loss is pushed down at a similar *relative* rate, at the cost of one
    backward (no per-task gradients). After the step, ``xi`` moves by Adam (option ``lr``, default 0.025,
    weight decay ``gamma`` 0.001, the paper's settings) along ``grad_xi softmax(xi)^T delta``, with ``delta``
    the drop of each task's log loss. The paper measures that drop with a second forward pass over the same
    batches after the update; polytask uses the next step's losses instead (new batches, no extra pass), a
    noisier but free estimate. The objective is scaled by K so its size matches a summed loss. Losses are
    averaged over processes, so every process keeps the same weights. Needs ``sampling: all_tasks``.

    Example::

        train:
          sampling: all_tasks
          weighting: {method: famo}
    """

    options = {"lr": 0.025, "gamma": 0.001}
    needs_all_tasks = True

    def __init__(self, task_weights, options=None):
        super().__init__(task_weights, options)
        self.xi = LearnedVector(self.tasks, init=0.0, lr=float(self.opts["lr"]),
                                weight_decay=float(self.opts["gamma"]))
        self.previous: list[float] | None = None  # last step's (global) loss per task
        self._losses: dict[str, list[float]] = {}

    def backward(self, losses: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        z = torch.softmax(self.xi.param.detach(), 0)
        names = list(losses)
        d = {t: losses[t].float() + EPS for t in names}
        c = sum(float(z[self.tasks.index(t)]) / float(d[t].detach()) for t in names)
        total = len(names) * sum(self.task_weights[t] * float(z[self.tasks.index(t)]) * torch.log(d[t]) / c
                                 for t in names)
        ctx.backward(total)
        glob = ctx.all_reduce_mean(torch.stack([losses[t].detach().float() for t in names]))
        for t, v in zip(names, glob.tolist()):
            self._losses.setdefault(t, []).append(v)
        return total.detach()

    def end_step(self, all_reduce_mean) -> None:
        if len(self._losses) != len(self.tasks):
            self._losses = {}
            return
        current = [sum(self._losses[t]) / len(self._losses[t]) for t in self.tasks]
        self._losses = {}
        if self.previous is not None:
            delta = (torch.log(torch.tensor(self.previous) + EPS) - torch.log(torch.tensor(current) + EPS))
            with torch.enable_grad():
                z = torch.softmax(self.xi.param, 0)
                (grad,) = torch.autograd.grad(z, self.xi.param, grad_outputs=delta)
            self.xi.step(lambda t: t, grad=grad)  # computed from global losses: the same on every process
        self.previous = current

    def weights(self) -> dict[str, float]:
        z = torch.softmax(self.xi.param.detach(), 0).tolist()
        return {t: self.task_weights[t] * len(self.tasks) * v for t, v in zip(self.tasks, z)}

    def state_dict(self) -> dict[str, Any]:
        return {"xi": self.xi.state_dict(), "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.xi.load_state_dict(state["xi"])
            self.previous = state["previous"]
