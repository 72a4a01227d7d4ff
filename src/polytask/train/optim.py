"""AdamW with the usual no-decay groups, optional head learning rate, linear warmup and decay."""

from __future__ import annotations

import torch
from transformers import get_linear_schedule_with_warmup

from polytask.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Four groups: {encoder, heads} x {decay, no decay}. Biases and LayerNorm weights (every parameter
    with fewer than 2 dimensions) get no weight decay, as in BERT's original recipe."""
    groups = []
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for part, lr in (("encoder", cfg.lr), ("heads", cfg.head_lr or cfg.lr)):
        # a head parameter is one under a `heads` module (`heads.*`, or `peers.<i>.heads.*` under mutual learning)
        params = [p for n, p in named if ("heads" in n.split(".")) == (part == "heads")]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "weight_decay": cfg.weight_decay, "lr": lr},
                   {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    warmup = round(cfg.warmup_ratio * total_steps)
    return get_linear_schedule_with_warmup(optimizer, warmup, max(total_steps, 1))
