"""Knowledge distillation in the training loop: the teachers' outputs for a batch, and the objective they give.

The loop calls :meth:`Distiller.objective` at one fixed point of ``train_step``, after the student's forward:
each task's hard loss goes in, each task's training objective comes out (and then to the weighting method,
exactly as plain losses would). The teachers are passed in at construction and never trained; the student is
the model the loop trains.

Teacher outputs come from one of two places (``train.distill.teacher_outputs``):

- ``cache`` (the default): computed once before training, for every training row (and every ``distill_data``
  row), in eval mode, and looked up per batch. The teachers are deterministic in eval mode, so one pass serves
  every epoch; it costs one teacher pass over the data instead of one per epoch (``bench/distill.py`` measures
  both). A teacher with another tokenizer than the student reads the text through its own tokenizer here.
  Memory: one vector per row (sentence tasks) or one per token (tagging tasks), on the CPU.
- ``fly``: every batch goes through the teachers next to the student (same tokenizer only).

Under several processes each process computes the whole cache (the same in every process).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from polytask.config import Config
from polytask.data.features import TaskData, collate, to_device
from polytask.data.joint import Source
from polytask.data.readers import read_rows
from polytask.distill.hidden import HiddenStates
from polytask.distill.soft_targets import SoftTargets
from polytask.distill.teacher import Teachers, check_tokenizers
from polytask.errors import NotSupportedError, UserError
from polytask.evaluate.runner import autocast_context
from polytask.tasks import TaskType

DISTILL_SPLIT = "distill"  # TaskData split of a task's unlabelled distill_data rows
SPLITS = ("train", DISTILL_SPLIT)


def add_distill_data(config: Config, data: dict[str, TaskData], tokenizer, max_length: int) -> None:
    """Read and tokenise each task's ``distill_data`` (text only) into ``data[task]`` split ``distill``; the
    features get placeholder labels (never trained on) so they collate like labelled ones."""
    for name, t in config.tasks.items():
        if not t.distill_data:
            continue
        task = data[name].task
        key = f"tasks.{name}.distill_data"
        rows = read_rows(t.distill_data, key=key)
        if not rows:
            raise UserError(f"config key '{key}': {t.distill_data} has no rows")
        examples = [task.read(rec, where, labelled=False) for where, rec in rows]
        feats = task.encode(examples, tokenizer, max_length)
        for f in feats:
            f["labels"] = task.placeholder_labels(f)
        data[name].examples[DISTILL_SPLIT] = examples
        data[name].features[DISTILL_SPLIT] = feats


def distill_sources(data: dict[str, TaskData]) -> list[Source]:
    """One source per task with distill_data: its unlabelled rows, sampled like any other source."""
    out = []
    for name, d in data.items():
        feats = d.features.get(DISTILL_SPLIT)
        if feats:
            out.append(Source(f"{name}@{DISTILL_SPLIT}", [name], {name: list(range(len(feats)))},
                              [len(f["input_ids"]) for f in feats], split=DISTILL_SPLIT))
    return out


class Distiller:
    """The teachers, where their outputs come from, and the soft-target objective. See the module docstring.

    ``alpha == 0`` with no distill_data (a student trained from labels only, ``polytask distill``'s baseline)
    never runs a teacher."""

    def __init__(self, config: Config, teachers: Teachers, tasks: dict[str, TaskType], tokenizer,
                 student_config: Any = None):
        d = config.train.distill
        self.teachers = teachers
        self.tasks = tasks
        self.mode = d.teacher_outputs
        self.objective_fn = SoftTargets(d.alpha, d.temperature)
        self.temperature = d.temperature
        teachers.check(tasks)
        per_task = [r.folder for r in teachers.runs if r.model.adapters is not None]
        if per_task and self.mode == "fly":  # the fly path reads the encoder once per teacher, one adapter
            raise NotSupportedError(f"train.distill.teacher_outputs: fly with a teacher trained with per-task "
                                    f"adapters ({per_task[0]}) is not supported; use teacher_outputs: cache")
        self.shared = check_tokenizers(teachers, tokenizer, tasks, fly=self.mode == "fly")
        self.has_data = any(t.distill_data for t in config.tasks.values())
        self.active = d.alpha > 0 or self.has_data or d.hidden.weight > 0
        # hidden-state matching (one teacher for every task; teacher_outputs: fly — checked with the config)
        self.hidden = (HiddenStates(d.hidden, student_config, teachers.runs[0].model.encoder.config)
                       if d.hidden.weight > 0 else None)
        self.cache: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.device = torch.device("cpu")
        self.precision = "fp32"

    def describe(self, student, data: dict[str, TaskData]) -> list[str]:
        """Lines telling the user what is distilled from what (printed once at the start of training)."""
        depth = student.encoder.config.num_hidden_layers
        runs = ", ".join(f"{run.folder} ({run.num_layers} layers)" for run in self.teachers.runs)
        lines = [f"distillation: teacher{'s' if len(self.teachers.runs) > 1 else ''} {runs} -> student of {depth} "
                 f"layers; " + (f"loss (1 - {self.objective_fn.alpha:g}) x labels + {self.objective_fn.alpha:g} x "
                                f"soft targets at temperature {self.temperature:g}, teacher outputs: {self.mode}"
                                if self.objective_fn.alpha > 0 else "labels only (alpha 0)")]
        for name, d in data.items():
            if d.features.get(DISTILL_SPLIT):
                lines.append(f"distillation: task '{name}' also learns from {len(d.features[DISTILL_SPLIT])} "
                             f"unlabelled rows of {d.task.cfg.distill_data} (the teacher's soft targets only)")
        return lines

    # -- teacher outputs ----------------------------------------------------------------------------------
    def prepare(self, device: torch.device, precision: str, data: dict[str, TaskData], pad_id: int,
                batch_size: int, progress: bool = True, student: Any = None) -> None:
        """Move the teachers to ``device``; under ``cache``, compute every row's soft targets now; with hidden-state
        matching, start recording ``student``'s hidden states."""
        self.device, self.precision = device, precision
        if not self.active:
            return
        self.teachers.to(device)
        if self.hidden is not None:
            self.hidden.to(device)
            self.hidden.attach(student)
        if self.mode != "cache":
            return
        jobs = [(t, s) for t in self.tasks for s in SPLITS if data[t].features.get(s)]
        total = sum(len(data[t].features[s]) * len(self.teachers.by_task[t]) for t, s in jobs)
        with tqdm(total=total, desc="teacher outputs", disable=not progress, dynamic_ncols=True) as bar:
            for t, split in jobs:
                per_teacher = [self._run_teacher(r, t, data[t], split, pad_id, batch_size, bar)
                               for r in self.teachers.by_task[t]]
                task = self.tasks[t]
                self.cache.setdefault(t, {})[split] = [task.soft_targets(list(rows), self.temperature)
                                                       for rows in zip(*per_teacher)]

    @torch.no_grad()
    def _run_teacher(self, r: int, name: str, data: TaskData, split: str, pad_id: int, batch_size: int,
                     bar) -> list[torch.Tensor]:
        """One teacher's logits (student label order) for every feature of a split, each cut to its length."""
        run = self.teachers.runs[r]
        if self.shared[r]:
            feats = data.features[split]
        else:  # its own tokenizer (sentence tasks only; see check_tokenizers)
            feats = run.tasks[name].encode(data.examples[split], run.tokenizer, run.config.model.max_length)
        pad = run.tokenizer.pad_token_id or 0
        order = sorted(range(len(feats)), key=lambda i: len(feats[i]["input_ids"]))
        out: list[torch.Tensor | None] = [None] * len(feats)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = to_device(collate([feats[i] for i in idx], self.tasks[name], pad), self.device)
            with autocast_context(self.precision, self.device):
                logits = run.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                   tasks=[name])[name]
            logits = self.teachers.logits(r, name, logits.float()).cpu()
            for k, i in enumerate(idx):
                out[i] = logits[k, :len(feats[i]["input_ids"])] if logits.dim() == 3 else logits[k]
            bar.update(len(idx))
        return out  # type: ignore[return-value]

    def _cached(self, task: str, split: str, index: list[int], shape: torch.Size) -> torch.Tensor:
        """The cached soft targets of rows ``index``, token tasks padded to the batch's length ``shape[1]``."""
        rows = [self.cache[task][split][i] for i in index]
        if len(shape) == 2:
            return torch.stack(rows).to(self.device)
        out = torch.zeros(len(rows), shape[1], shape[2])  # [n, T, C]; positions past a row's length: no loss
        for k, row in enumerate(rows):
            out[k, :row.shape[0]] = row
        return out.to(self.device)

    @torch.no_grad()
    def _fly(self, segments: list[tuple[dict[str, torch.Tensor], dict[str, Any]]],
             parts: dict[str, tuple[torch.Tensor, torch.Tensor]]
             ) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, ...]]]:
        """Soft targets of the group's rows from teacher forwards on the student's own inputs, and (hidden-state
        matching) the teacher's hidden states of each segment."""
        per_task: dict[str, list[torch.Tensor]] = {}
        states = []
        for inputs, seg_parts in segments:
            inputs = to_device(inputs, self.device)
            for r, run in enumerate(self.teachers.runs):
                names = [t for t in seg_parts if r in self.teachers.by_task[t]]
                if not names:
                    continue
                model = run.model
                kwargs = model.encoder_inputs(inputs["input_ids"], inputs["attention_mask"],
                                              inputs.get("token_type_ids"))
                with autocast_context(self.precision, self.device):
                    out = model.encoder(**kwargs, output_hidden_states=self.hidden is not None)
                    logits = model.heads_from_hidden(out.last_hidden_state, inputs["attention_mask"], names)
                if self.hidden is not None:
                    states.append(out.hidden_states)
                for t in names:
                    per_task.setdefault(t, []).append(self.teachers.logits(r, t, logits[t].float())[parts[t][0]])
        return {t: self.tasks[t].soft_targets(v, self.temperature) for t, v in per_task.items()}, states

    # -- the objective ------------------------------------------------------------------------------------
    def objective(self, losses: dict[str, torch.Tensor], logits: dict[str, torch.Tensor],
                  parts: dict[str, tuple[torch.Tensor, torch.Tensor]], batches: list[dict[str, Any]],
                  segments: list[tuple[dict[str, torch.Tensor], dict[str, Any]]]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each task's training objective and the loss to log for it (the hard loss; the soft one for rows
        without labels). ``losses``: hard losses; ``logits``: the student's, per segment; ``parts``: task ->
        (row positions, labels); ``batches``: the group's collated batches (split and feature index per task)."""
        if not self.active:
            return losses, losses
        where = {t: (b["split"], b["index"][t]) for b in batches for t in b["parts"]}
        fly, teacher_states = self._fly(segments, parts) if self.mode == "fly" else ({}, [])
        objective, logged = {}, {}
        for t, (pos, labels) in parts.items():
            split, index = where[t]
            student = logits[t][pos]
            targets = fly[t] if self.mode == "fly" else self._cached(t, split, index, student.shape)
            hard = None if split == DISTILL_SPLIT else losses[t]
            objective[t], soft = self.objective_fn(self.tasks[t], student, targets, labels, hard)
            logged[t] = soft if hard is None else hard
        if self.hidden is not None:  # each segment's hidden loss, shared equally by the tasks that read it
            student_states = self.hidden.take(len(segments))
            for (inputs, seg_parts), mine, theirs in zip(segments, student_states, teacher_states):
                loss = self.hidden.weight * self.hidden.loss(mine, theirs, inputs["attention_mask"].to(self.device))
                for t in seg_parts:
                    objective[t] = objective[t] + loss / len(seg_parts)
        return objective, logged

    def finish(self) -> None:
        """Training is over: stop recording the student's hidden states."""
        if self.hidden is not None:
            self.hidden.detach()

    # -- the projections of hidden-state matching: trained with the student, kept in last/ -------------------
    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.hidden.parameters()) if self.hidden is not None else []

    def end_step(self, all_reduce_mean) -> None:
        """Average the projections' gradients over processes (they live outside the DDP-wrapped student)."""
        for p in self.parameters():
            if p.grad is not None:
                p.grad.copy_(all_reduce_mean(p.grad))

    def save(self, folder: Path) -> None:
        if self.parameters():
            save_file({k: v.detach().cpu().contiguous() for k, v in self.hidden.state_dict().items()},
                      str(folder / "distill_hidden.safetensors"))

    def load(self, folder: Path) -> None:
        if self.parameters():
            self.hidden.load_state_dict(load_file(str(folder / "distill_hidden.safetensors")))
