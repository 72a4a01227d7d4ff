"""AdamW with the usual no-decay groups, optional head learning rate, linear warmup and decay."""

from __future__ import annotations

import torch
from transformers import get_linear_schedule_with_warmup

from polytask.config import TrainConfig
from polytask.model.multitask import MultiTaskModel


def build_optimizer(model: MultiTaskModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """Four groups: {encoder, heads} x {decay, no decay}. Biases and LayerNorm weights (every parameter
    with fewer than 2 dimensions) get no weight decay, as in BERT's original recipe."""
    groups = []
    for part, lr in (("encoder", cfg.lr), ("heads", cfg.head_lr or cfg.lr)):
        params = [p for p in getattr(model, part).parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "weight_decay": cfg.weight_decay, "lr": lr},
                   {"params": no_decay, "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    warmup = round(cfg.warmup_ratio * total_steps)
    return get_linear_schedule_with_warmup(optimizer, warmup, max(total_steps, 1))
