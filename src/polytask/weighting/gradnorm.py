"""GradNorm: learn task weights that balance the gradient norms the tasks put on the encoder."""

from __future__ import annotations

from typing import Any

import torch

from polytask.weighting.base import WEIGHTINGS, StepContext, Weighting
from polytask.weighting.gradient import flat_grads
from polytask.weighting.learned import LearnedVector


@WEIGHTINGS.register("gradnorm")
class GradNorm(Weighting):
    """Chen, Badrinarayanan, Lee & Rabinovich 2018, "GradNorm: Gradient Normalization for Adaptive Loss
    Balancing in Deep Multitask Networks" (ICML).

    Learned weights ``w_i`` (start at 1) scale the losses: ``L = sum_i w_i L_i``. Each step measures
    ``G_i = w_i |grad_W L_i|`` on ``W``, the encoder's top layer, and moves ``w`` to reduce
    ``sum_i |G_i - mean(G) * r_i^alpha|``, where ``r_i`` is task i's loss ratio ``L_i(t) / L_i(0)`` relative
    to the mean ratio: tasks that train slower get larger gradients. ``mean(G) * r_i^alpha`` is held
    constant, as in the paper; ``w`` is updated by its own Adam (option ``lr``, default 0.025) and then
    renormalised to sum to K. ``alpha`` (default 1.5) sets how strongly. Gradients and losses are averaged
    over processes, so every process keeps the same weights. Needs ``sampling: all_tasks``.

    Example::

        train:
          sampling: all_tasks
          weighting: {method: gradnorm, alpha: 1.5}
    """

    options = {"alpha": 1.5, "lr": 0.025}
    needs_all_tasks = True
    per_task_gradients = True

    def __init__(self, task_weights, options=None):
        super().__init__(task_weights, options)
        self.w = LearnedVector(self.tasks, init=1.0, lr=float(self.opts["lr"]))
        self.initial: list[float] | None = None
        self._grad: torch.Tensor | None = None

    def backward(self, losses: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        names = list(losses)
        idx = [self.tasks.index(t) for t in names]
        top = ctx.last_layer_parameters()
        norms = ctx.all_reduce_mean(torch.stack([flat_grads(losses[t], top) for t in names])).norm(dim=1)
        current = ctx.all_reduce_mean(torch.stack([losses[t].detach().float() for t in names]))
        if self.initial is None:
            self.initial = [1.0] * len(self.tasks)
            for i, v in zip(idx, current.tolist()):
                self.initial[i] = max(v, 1e-8)
        w = self.w.param.detach()[idx]
        ratio = current / torch.tensor([self.initial[i] for i in idx])
        r = ratio / ratio.mean()
        g = w * norms
        target = g.mean() * r.pow(float(self.opts["alpha"]))
        grad = torch.zeros(len(self.tasks))
        grad[idx] = torch.sign(g - target) * norms  # d/dw_i of |w_i |grad L_i| - target_i|
        self._grad = grad if self._grad is None else self._grad + grad
        total = sum(self.task_weights[t] * w[k] * losses[t] for k, t in enumerate(names))
        ctx.backward(total)
        return total.detach()

    def end_step(self, all_reduce_mean) -> None:
        if self._grad is None:
            return
        self.w.step(all_reduce_mean, grad=self._grad)
        self._grad = None
        with torch.no_grad():
            self.w.param.clamp_(min=1e-3)
            self.w.param.mul_(len(self.tasks) / self.w.param.sum())

    def weights(self) -> dict[str, float]:
        return {t: self.task_weights[t] * v for t, v in zip(self.tasks, self.w.values())}

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.state_dict(), "initial": self.initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.w.load_state_dict(state["w"])
            self.initial = state["initial"]
