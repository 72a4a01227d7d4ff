"""Everything the loop needs, built from the config: data, model, optimizer, scheduler, plan, weighting.

All reading and validation of user data happens here, before anything is written to the output folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from polytask.adversarial import ADVERSARIAL, Adversarial
from polytask.catalog.encoders import resolve_encoder
from polytask.config import Config
from polytask.data.features import TaskData, prepare_task_data
from polytask.data.readers import require_file
from polytask.data.sampling import MultiTaskBatchPlan
from polytask.model.encoder import apply_freeze, load_encoder, load_tokenizer
from polytask.model.multitask import MultiTaskModel
from polytask.tasks import TaskType, build_task
from polytask.train.optim import build_optimizer, build_scheduler
from polytask.weighting import WEIGHTINGS, Weighting


@dataclass
class Run:
    """The built pieces of a training run (before ``accelerator.prepare``)."""

    config: Config
    tokenizer: Any
    tasks: dict[str, TaskType]
    data: dict[str, TaskData]
    model: MultiTaskModel
    optimizer: torch.optim.Optimizer
    scheduler: Any
    plan: MultiTaskBatchPlan
    weighting: Weighting
    adversarial: Adversarial | None  # None: train.adversarial.method is none
    epochs: int  # epochs to run (derived from max_steps when set)
    total_steps: int  # optimizer steps in the whole run
    steps_per_epoch: int

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0


def build_run(config: Config, world_size: int = 1, rank: int = 0) -> Run:
    tc = config.train
    encoder_dir = resolve_encoder(config.model.encoder)
    tokenizer = load_tokenizer(encoder_dir)
    tasks = {name: build_task(name, t) for name, t in config.tasks.items()}
    data = prepare_task_data(tasks, tokenizer, config.model.max_length, splits=("train", "validation"))
    for name, t in config.tasks.items():  # test data is read by `evaluate`; a wrong path should fail now
        if t.test:
            require_file(t.test, key=f"tasks.{name}.test")
    encoder = load_encoder(encoder_dir)
    apply_freeze(encoder, config.model.freeze)
    model = MultiTaskModel(encoder, tasks, pooling=config.model.pooling, dropout=config.model.dropout)
    lengths = {name: [len(f["input_ids"]) for f in d.features["train"]] for name, d in data.items()}
    plan = MultiTaskBatchPlan(lengths, tc, world_size=world_size, rank=rank)
    steps_per_epoch = math.ceil(len(plan) / (tc.grad_accum * plan.tasks_per_step))
    if tc.max_steps is not None:
        total_steps, epochs = tc.max_steps, math.ceil(tc.max_steps / steps_per_epoch)
    else:
        total_steps, epochs = tc.epochs * steps_per_epoch, tc.epochs
    plan.total_epochs = epochs  # annealed sampling needs it
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc, total_steps)
    weighting = WEIGHTINGS.get(tc.weighting.method)({n: t.weight for n, t in config.tasks.items()},
                                                    tc.weighting.options)
    adv = tc.adversarial
    adversarial = None if adv.method == "none" else ADVERSARIAL.get(adv.method)(adv.options, adv.tasks or list(tasks))
    return Run(config, tokenizer, tasks, data, model, optimizer, scheduler, plan, weighting, adversarial, epochs,
               total_steps, steps_per_epoch)
