"""CAGrad: the update that best improves the worst task, near the average gradient."""

from __future__ import annotations

import torch

from polytask.weighting.base import WEIGHTINGS, StepContext
from polytask.weighting.gradient import GradientMethod


@WEIGHTINGS.register("cagrad")
class CAGrad(GradientMethod):
    """Liu, Liu, Jin, Stone & Liu 2021, "Conflict-Averse Gradient Descent for Multi-task Learning" (NeurIPS).

    With ``g0`` the average gradient, find simplex weights ``w`` minimising ``g_w · g0 + c |g0| |g_w|``
    (``g_w = sum_i w_i g_i``; 20 steps of SGD on softmax logits, as the authors' code does), then update with
    ``(g0 + c |g0| / |g_w| * g_w) / (1 + c^2)``; the result is multiplied by K so that its scale matches the
    summed loss of the other methods. Option ``c`` (default 0.4, the paper's setting for its MTL benchmarks)
    trades average progress (c = 0: plain averaging) against the worst task. Needs ``sampling: all_tasks``.

    Example::

        train:
          sampling: all_tasks
          weighting: {method: cagrad, c: 0.4}
    """

    options = {"c": 0.4}

    def combine(self, grads: torch.Tensor, losses, ctx: StepContext) -> torch.Tensor:
        k = grads.shape[0]
        c = float(self.opts["c"])
        gg = (grads @ grads.t()).double()  # [K, K]
        g0_norm = (gg.mean() + 1e-8).sqrt()
        gg_mean = gg.mean(1, keepdim=True)  # [K, 1]: g_i · g0
        logits = torch.zeros(k, 1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([logits], lr=25.0, momentum=0.5)
        with torch.enable_grad():
            for _ in range(20):
                opt.zero_grad()
                w = torch.softmax(logits, 0)
                obj = (w.t() @ gg_mean + c * g0_norm * (w.t() @ gg @ w + 1e-8).sqrt()).sum()
                obj.backward()
                opt.step()
        w = torch.softmax(logits.detach(), 0)
        gw_norm = (w.t() @ gg @ w + 1e-8).sqrt().squeeze()
        lam = (c * g0_norm / (gw_norm + 1e-8)).float()
        direction = grads.mean(0) + lam * (w.float().t() @ grads).squeeze(0)
        return direction / (1 + c ** 2) * k
