"""Shared machinery of the gradient methods: per-task gradients on the shared encoder, combined, written back.

A gradient method gets every task's loss of the step (it needs ``sampling: all_tasks``). It computes each
task's gradient on the shared encoder parameters with ``torch.autograd.grad`` (which does not trigger DDP's
all-reduce), averages those over processes — so every process combines the same global per-task gradients
and takes the same step —, combines them (``combine``), then runs one ordinary ``backward`` of the summed
losses: that gives each head its own task's gradient (a head only touches its task's loss) and keeps DDP's
bookkeeping intact. Finally the shared parameters' gradient from that backward is replaced by the combined
one. Gradient accumulation adds the combined gradients of the step's groups, each scaled like the losses.
"""

from __future__ import annotations

import torch

from polytask.weighting.base import StepContext, Weighting


def flat_grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The gradient of ``loss`` w.r.t. ``params``, flattened into one vector (zeros where unused)."""
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params)])


class GradientMethod(Weighting):
    needs_all_tasks = True
    per_task_gradients = True

    def combine(self, grads: torch.Tensor, losses: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        """``grads`` [K, P]: the global per-task gradients (already weighted by ``tasks.<name>.weight``);
        return the shared update direction [P]."""
        raise NotImplementedError

    def backward(self, losses: dict[str, torch.Tensor], ctx: StepContext) -> torch.Tensor:
        shared = ctx.shared_parameters()
        weighted = {t: self.task_weights[t] * loss for t, loss in losses.items()}
        grads = torch.stack([flat_grads(loss, shared) for loss in weighted.values()])  # [K, P]
        grads = ctx.all_reduce_mean(grads)
        combined = self.combine(grads, losses, ctx)  # [P]
        before = [p.grad.detach().clone() if p.grad is not None else None for p in shared]
        total = sum(weighted.values())
        ctx.backward(total)  # heads: their own task's gradient; DDP: its usual synchronised backward
        offset = 0
        for p, prev in zip(shared, before):
            part = combined[offset:offset + p.numel()].view_as(p).to(p.dtype) * ctx.scale
            offset += p.numel()
            p.grad = part if prev is None else prev + part
        return total.detach()
