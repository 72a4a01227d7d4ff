"""Starting from a trained checkpoint, and the pull that keeps the encoder near it (EWC, L2-SP).

``start_from_base`` copies a trained model's encoder and heads into the model of the new run (a head whose task
gained labels grows: the old rows keep their ids, new rows start fresh). ``Continual`` is the objective term of
``ewc`` and ``l2sp``: λ/2 Σ_i F_i (θ_i − θ*_i)² over the encoder's trainable parameters, θ* the starting weights,
F the diagonal Fisher information of the old tasks (EWC, Kirkpatrick et al. 2017) or 1 (L2-SP, Li et al. 2018).
Its gradient λ F (θ − θ*) is added to the parameters' gradients once per optimizer step, after the step's
backward: it depends only on the parameters, which every process holds identically, so it needs no all-reduce.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from polytask.config import ContinualConfig
from polytask.data.features import TaskData, collate_training
from polytask.errors import UserError


def start_from_base(model: nn.Module, base: nn.Module, base_tasks: dict[str, Any], tasks: dict[str, Any]) -> list[str]:
    """Load ``base``'s encoder and the heads of the tasks it has into ``model``; returns notes for the log."""
    state = base.encoder.state_dict()
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if unexpected:
        raise UserError(f"the base checkpoint's encoder does not fit this run's model (e.g. {unexpected[0]}): "
                        "change neither model.encoder nor model.peft when training on from a run")
    notes = []
    for name, head in model.heads.items():
        if name not in base.heads:
            notes.append(f"task '{name}': a new head")
            continue
        if not isinstance(head, nn.Sequential):  # a head whose shape has nothing to do with labels (retrieval)
            head.load_state_dict(base.heads[name].state_dict())
            continue
        # Sequential(Dropout, Linear[, a regression head's Rescale]): the linear layer's rows are the labels
        old_linear, new_linear = (next(m for m in reversed(h) if isinstance(m, nn.Linear))
                                  for h in (base.heads[name], head))
        c = old_linear.out_features
        if base_tasks[name].labels != tasks[name].labels[:c]:
            raise UserError(f"task '{name}': the labels do not extend the base checkpoint's (internal error)")
        with torch.no_grad():  # old label ids keep their rows; labels the base never saw start fresh
            new_linear.weight[:c].copy_(old_linear.weight)
            new_linear.bias[:c].copy_(old_linear.bias)
        grown = tasks[name].labels[c:]
        if grown:
            notes.append(f"task '{name}': {len(grown)} new label(s) the base model never saw, added to its head: "
                         + ", ".join(grown[:10]) + (", ..." if len(grown) > 10 else ""))
    if missing:
        notes.append(f"{len(missing)} encoder tensor(s) start fresh (a new task's own adapter)")
    return notes


class Continual:
    """The ``ewc`` / ``l2sp`` pull toward the starting encoder (see the module docstring).

    Inputs: the continual config and the names of the old tasks; ``prepare`` takes the model at its starting
    weights (and, for EWC, the old tasks' training data) before the first step; ``add_gradient`` adds the pull's
    gradient to the model's trainable encoder parameters. The model is passed in each call, never stored.

    Example::

        c = Continual(cfg.train.continual, ["intent", "slots"])
        c.prepare(model, data, tasks, pad_id, batch_size, device)
        ...backward...; c.add_gradient(model); optimizer.step()
    """

    def __init__(self, cfg: ContinualConfig, old_tasks: list[str]):
        self.cfg = cfg
        self.old_tasks = old_tasks
        self.anchor: dict[str, torch.Tensor] = {}
        self.fisher: dict[str, torch.Tensor] = {}
        self.last_penalty = 0.0

    @property
    def active(self) -> bool:
        return self.cfg.method in ("ewc", "l2sp") and self.cfg.pull > 0

    @staticmethod
    def _params(model: nn.Module) -> dict[str, nn.Parameter]:
        return {n: p for n, p in model.encoder.named_parameters() if p.requires_grad}

    def prepare(self, model: nn.Module, data: dict[str, TaskData], tasks: dict[str, Any], pad_id: int,
                batch_size: int, device: torch.device) -> None:
        if not self.active:
            return
        params = self._params(model)
        self.anchor = {n: p.detach().clone() for n, p in params.items()}
        if self.cfg.method == "l2sp":
            self.fisher = {}
            return
        self.fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        batches = 0
        was_training = model.training
        model.eval()  # no dropout: the estimate is the same at every (re)start, and draws no random numbers
        for name in self.old_tasks:
            feats = data[name].features.get("train", [])
            for s in range(0, min(len(feats), self.cfg.fisher_batches * batch_size), batch_size):
                batch = collate_training(feats[s:s + batch_size], tasks[name], pad_id)
                model.zero_grad(set_to_none=True)
                logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                               batch["token_type_ids"].to(device), tasks=[name])[name]
                tasks[name].loss(logits, batch["labels"].to(device)).backward()
                for n, p in params.items():
                    if p.grad is not None:
                        self.fisher[n] += p.grad.detach() ** 2
                batches += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        if batches == 0:
            raise UserError("train.continual.method: ewc needs the old tasks' training data to estimate the "
                            "Fisher information, and none was found")
        for f in self.fisher.values():
            f /= batches

    def add_gradient(self, model: nn.Module) -> None:
        """Add λ F (θ − θ*) to the gradient of each trainable encoder parameter that has one this step (F = 1 for
        l2sp)."""
        if not self.active:
            return
        lam, terms = self.cfg.pull, []
        with torch.no_grad():
            for n, p in self._params(model).items():
                if p.grad is None:  # no task reached it this step (another task's adapter): it does not move
                    continue
                if self.anchor[n].device != p.device:  # taken on the CPU before the model went to its device
                    self.anchor[n] = self.anchor[n].to(p.device)
                    if self.fisher:
                        self.fisher[n] = self.fisher[n].to(p.device)
                diff = p - self.anchor[n]  # [same shape as p]
                weighted = diff * self.fisher[n] if self.fisher else diff
                terms.append((weighted * diff).sum())
                p.grad.add_(weighted, alpha=lam)
        # one read of the value per step, not one per parameter (each would wait for a GPU)
        self.last_penalty = 0.5 * lam * float(torch.stack(terms).sum()) if terms else 0.0

    def describe(self) -> list[str]:
        c = self.cfg
        what = {"none": "the new data alone (nothing protects the old tasks)",
                "replay": f"replay: {c.replay_ratio:.0%} of the training rows come from the old tasks",
                "ewc": f"ewc: pull λ {c.pull:g} toward the starting encoder, weighted by the old tasks' Fisher",
                "l2sp": f"l2sp: pull λ {c.pull:g} toward the starting encoder",
                "freeze": "freeze: encoder and old heads frozen; only what is new trains"}[c.method]
        return [f"continual learning from {c.base}: old tasks {', '.join(self.old_tasks)}; {what}"]
