"""Everything the loop needs, built from the config: data, model, optimizer, scheduler, plan, weighting.

All reading and validation of user data happens here, before anything is written to the output folder.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any

import torch

from polytask.adversarial import ADVERSARIAL, Adversarial
from polytask.catalog.encoders import resolve_encoder
from polytask.config import Config
from polytask.continual import Continual, replay_rows, start_from_base
from polytask.data.features import TaskData, prepare_task_data, source_key
from polytask.data.joint import Source, build_sources, collate_source, describe
from polytask.data.readers import require_file
from polytask.data.sampling import MultiTaskBatchPlan
from polytask.distill.base import Distiller, add_distill_data, distill_sources
from polytask.distill.student import build_student
from polytask.distill.teacher import Teachers
from polytask.errors import UserError
from polytask.model.adapters import describe as describe_parameters
from polytask.model.encoder import apply_freeze, load_encoder, load_tokenizer
from polytask.model.multitask import MultiTaskModel, build_model
from polytask.mutual import Mutual, PeerModel
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
    plan: MultiTaskBatchPlan  # over sources: a task, or the tasks that share inputs (joint batches)
    sources: dict[str, Source]
    weighting: Weighting
    adversarial: Adversarial | None  # None: train.adversarial.method is none
    distiller: Any  # polytask.distill.Distiller, or None without train.distill
    mutual: Any  # polytask.mutual.Mutual, or None without train.mutual (then model is a PeerModel)
    epochs: int  # epochs to run (derived from max_steps when set)
    total_steps: int  # optimizer steps in the whole run
    steps_per_epoch: int
    continual: Any = None  # polytask.continual.Continual, or None without train.continual
    meta: Any = None  # polytask.meta.MetaLearner, or None without train.meta (then plan is an EpisodePlan)
    augment: Any = None  # polytask.augment.NoiseAugmentation, or None without train.augment

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    def export(self, model) -> MultiTaskModel:
        """The model a checkpoint holds: ``model`` itself, or under mutual learning its best peer."""
        return self.mutual.export(model) if self.mutual is not None else model

    def collate(self, source: str, rows: list[int]) -> dict[str, Any]:
        """The training batch of ``rows`` of a source: encoder inputs and each task's ``(positions, labels)``."""
        return collate_source(self.sources[source], rows, self.data, self.tasks, self.pad_id)


def build_run(config: Config, world_size: int = 1, rank: int = 0) -> Run:
    tc = config.train
    teachers = None
    if tc.distill.enabled:  # the student: built from (a copy of) the teacher's encoder, or its own
        teachers = Teachers.load(tc.distill, list(config.tasks))
        encoder, tokenizer = build_student(tc.distill.student, teachers)
    else:
        encoder_dir = resolve_encoder(config.model.encoder)
        tokenizer = load_tokenizer(encoder_dir)
    tasks = {name: build_task(name, t) for name, t in config.tasks.items()}
    base = load_base(tc.continual) if tc.continual.enabled else None  # (tasks, model, config) of the base run
    data = prepare_task_data(tasks, tokenizer, config.model.max_length, splits=("train", "validation"),
                             extra_labels=teachers.labels() if teachers is not None else None,
                             label_order={t: b.labels for t, b in base[0].items() if t in tasks} if base else None)
    for name, b in (base[0] if base else {}).items():  # an old task keeps what its head was trained in
        if name in tasks:
            tasks[name].inherit_fit(b)
    for name, t in config.tasks.items():  # test data is read by `evaluate`; a wrong path should fail now
        if t.test:
            require_file(t.test, key=f"tasks.{name}.test")
    distiller = None
    if teachers is not None:
        add_distill_data(config, data, tokenizer, config.model.max_length)
        distiller = Distiller(config, teachers, tasks, tokenizer, student_config=encoder.config)
    else:
        encoder = load_encoder(encoder_dir)
    apply_freeze(encoder, config.model.freeze)
    model = build_model(encoder, tasks, config.model)
    continual, notes, trained = None, [], data
    if base is not None:  # start from the base run; protect its old tasks as train.continual.method says
        continual, notes, trained = continue_from(config, base, model, tasks, data, tokenizer.pad_token_id or 0)
    mutual = None
    if tc.mutual.enabled:  # more peers: the same pretrained encoder, their own heads (drawn one after another)
        peers = [model] + [MultiTaskModel(_fresh_encoder(encoder_dir, config), tasks, pooling=config.model.pooling,
                                          dropout=config.model.dropout) for _ in range(tc.mutual.peers - 1)]
        model = PeerModel(peers)
        mutual = Mutual(tc.mutual, tasks)
    sources = {s.name: s for s in build_sources(config, trained) + distill_sources(data)}
    augment = None
    if tc.augment.enabled:  # noisy copies of the training rows, appended to their batches
        from polytask.augment import NoiseAugmentation

        augment = NoiseAugmentation(tc.augment, tasks, data, sources, tokenizer, config.model.max_length, tc.seed)
    if rank == 0:
        lines = [describe_parameters(model if mutual is None else model.peers[0], config.model.peft)] + describe(
            list(sources.values())) + (distiller.describe(model, data) if distiller else []) + (
            mutual.describe() if mutual else []) + (continual.describe() + notes if continual else []) + (
            augment.describe() if augment else [])
        for line in lines:
            print(f"polytask: {line}", file=sys.stderr, flush=True)
    method = WEIGHTINGS.get(tc.weighting.method)
    if method.needs_all_tasks and tc.sampling != "all_tasks" and len(sources) > 1:
        raise UserError(f"config key 'train.weighting.method': {tc.weighting.method} needs every task's loss at each "
                        "step, and the tasks could not share joint batches (" + "; ".join(
                            s.note for s in sources.values() if s.note) + "); set train.sampling: all_tasks")
    partial = [f"'{t}' in {s.name}" for s in sources.values() if s.joint for t in s.tasks if min(s.index[t]) < 0]
    if partial and not method.partial_labels_ok:
        raise UserError(f"config key 'train.weighting.method': {tc.weighting.method} needs every task's loss in "
                        f"every joint batch, but some rows have no label for {', '.join(partial)}; use static, uw "
                        "or rlw, label every row, or set train.joint_batches: off")
    probs = None
    if tc.task_probabilities:  # a task's probability, shared by its sources in proportion to their rows
        rows = {t: sum(len(s) for s in sources.values() if t in s.tasks) for t in tasks}
        probs = {n: sum(tc.task_probabilities[t] * len(s) / rows[t] for t in s.tasks) for n, s in sources.items()}
    meta = None
    if tc.meta.enabled:  # episodes instead of batches: the plan says which task each episode comes from
        from polytask.meta import EpisodePlan, MetaLearner

        meta = MetaLearner(tc.meta, tasks, data, tc.seed, tokenizer.pad_token_id or 0, tc.batch_size)
        plan = EpisodePlan({t: len(d.features["train"]) for t, d in data.items()}, tc.meta, tc, world_size, rank)
        if rank == 0:
            for line in meta.describe():
                print(f"polytask: {line}", file=sys.stderr, flush=True)
    else:
        plan = MultiTaskBatchPlan({n: s.lengths for n, s in sources.items()}, tc, world_size=world_size, rank=rank,
                                  task_probabilities=probs)
    steps_per_epoch = math.ceil(len(plan) / (tc.grad_accum * plan.tasks_per_step))
    if tc.max_steps is not None:
        total_steps, epochs = tc.max_steps, math.ceil(tc.max_steps / steps_per_epoch)
    else:
        total_steps, epochs = tc.epochs * steps_per_epoch, tc.epochs
    plan.total_epochs = epochs  # annealed sampling needs it
    # meta-learning: the outer update is the optimizer's step on the meta-gradient, at meta_lr
    optimizer = build_optimizer(model, dataclasses.replace(tc, lr=tc.meta.meta_lr) if meta and tc.meta.meta_lr else tc)
    if distiller is not None and distiller.parameters():  # hidden-state matching's projections learn too
        optimizer.add_param_group({"params": distiller.parameters(), "lr": tc.head_lr or tc.lr, "weight_decay": 0.0})
    scheduler = build_scheduler(optimizer, tc, total_steps)
    # over the tasks that train (all of them, except a continual run's protected old tasks)
    weighting = method({n: t.weight for n, t in config.tasks.items() if n in trained}, tc.weighting.options)
    adv = tc.adversarial
    adversarial = None if adv.method == "none" else ADVERSARIAL.get(adv.method)(adv.options, adv.tasks or list(tasks))
    return Run(config, tokenizer, tasks, data, model, optimizer, scheduler, plan, sources, weighting, adversarial,
               distiller, mutual, epochs, total_steps, steps_per_epoch, continual, meta, augment)


def load_base(cfg) -> tuple[dict[str, TaskType], MultiTaskModel, Config]:
    """The tasks, model and config of ``train.continual.base`` (read, never written)."""
    from polytask.distill.teacher import checkpoint_folder
    from polytask.model.io import load_checkpoint

    config, tasks, _, model = load_checkpoint(checkpoint_folder(cfg.base, "train.continual.base"))
    return tasks, model, config


def continue_from(config: Config, base, model: MultiTaskModel, tasks: dict[str, TaskType],
                  data: dict[str, TaskData], pad_id: int) -> tuple[Continual, list[str], dict[str, TaskData]]:
    """Start ``model`` from the base run and set up the protection of its old tasks: their replayed rows, or their
    absence from the training batches; frozen parameters under ``freeze``. Returns the continual objective, notes
    for the log, and the tasks whose rows train."""
    cc = config.train.continual
    old = list(cc.old_tasks or [])
    new = [t for t in tasks if t not in old]
    was, now = base[2].to_dict()["model"], config.to_dict()["model"]
    changed = [k for k in sorted(set(was) | set(now)) if k != "max_length" and was.get(k) != now.get(k)]
    if changed:
        raise UserError(f"config key 'model.{changed[0]}' differs from the base run's ({was.get(changed[0])!r} there, "
                        f"{now.get(changed[0])!r} here): training on from a run keeps its model (only "
                        "model.max_length may change)")
    notes = start_from_base(model, base[1], base[0], tasks)
    continual = Continual(cc, old)
    # the starting weights and (ewc) the old tasks' Fisher information from all their training rows, taken now —
    # before --resume loads later weights — on the CPU in eval mode (no dropout, no random draws): the same at
    # every (re)start
    continual.prepare(model, data, tasks, pad_id, config.train.batch_size, torch.device("cpu"))
    if cc.method == "replay":  # (a ratio of 0 keeps no old rows)
        kept = replay_rows(data, old, new, cc.replay_ratio, config.train.seed,
                           {t: str(source_key(config.tasks[t]) or t) for t in old})
        notes.append("replayed rows: " + ", ".join(f"{t} {n}" for t, n in kept.items()))
    trained = {t: d for t, d in data.items() if t in new or (cc.method == "replay" and d.features["train"])}
    if cc.method == "freeze":  # only what is new trains: its head (and, with per-task adapters, its adapter)
        own = set(new) if config.model.peft.enabled and config.model.peft.sharing == "per_task" else set()
        frozen = getattr(model.encoder, "polytask_base_names", frozenset())
        for n, p in model.encoder.named_parameters():  # a new task's adapter: a name with the task's as one part
            p.requires_grad_(n not in frozen and bool(own & set(n.split("."))))
        for t in old:
            model.heads[t].requires_grad_(False)
    return continual, notes, trained


def _fresh_encoder(encoder_dir, config: Config):
    encoder = load_encoder(encoder_dir)
    apply_freeze(encoder, config.model.freeze)
    return encoder
