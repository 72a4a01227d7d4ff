"""Teachers for distillation: trained polytask runs, loaded read-only, matched to the student's tasks.

``train.distill.teacher`` names one multi-task run (it teaches every task), a list of runs (an ensemble: each
task is taught by every run, their softened outputs averaged), or ``{task: run(s)}`` (one teacher, or one
ensemble, per task: k single-task teachers -> one multi-task student, as in MT-DNN-KD). A run folder's
``best/`` checkpoint is used (a checkpoint folder is taken as it is).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from polytask.config import DistillConfig
from polytask.errors import NotSupportedError, UserError
from polytask.model.encoder import encoder_layers
from polytask.model.io import load_checkpoint
from polytask.model.multitask import MultiTaskModel
from polytask.tasks import TaskType


def checkpoint_folder(path: str | Path, key: str) -> Path:
    path = Path(path)
    if (path / "best" / "polytask.json").is_file():
        return path / "best"
    if (path / "polytask.json").is_file():
        return path
    if not path.exists():
        raise UserError(f"config key '{key}': teacher run {path} does not exist")
    raise UserError(f"config key '{key}': {path} is neither a polytask run folder (with best/) nor a checkpoint")


@dataclass
class TeacherRun:
    """One trained run: its checkpoint folder, tasks, tokenizer and model (eval mode, no gradients)."""

    folder: Path
    config: Any
    tasks: dict[str, TaskType]
    tokenizer: Any
    model: MultiTaskModel

    @classmethod
    def load(cls, folder: Path) -> TeacherRun:
        config, tasks, tokenizer, model = load_checkpoint(folder)
        model.requires_grad_(False)
        return cls(folder, config, tasks, tokenizer, model)

    @property
    def num_layers(self) -> int:
        return len(encoder_layers(self.model.encoder))


@dataclass
class Teachers:
    """Every teacher run (each loaded once) and, per student task, the runs that teach it and how their label
    order maps onto the student's (``perm[task][i]``: the teacher's label index of the student's label i)."""

    runs: list[TeacherRun]
    by_task: dict[str, list[int]] = field(default_factory=dict)  # task -> indices into runs
    perm: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # (run, task) -> [C]

    @classmethod
    def load(cls, cfg: DistillConfig, task_names: list[str]) -> Teachers:
        spec = cfg.teacher if isinstance(cfg.teacher, dict) else {t: cfg.teacher for t in task_names}
        runs: list[TeacherRun] = []
        where: dict[Path, int] = {}
        by_task: dict[str, list[int]] = {}
        for task in task_names:
            folders = spec[task] if isinstance(spec[task], list) else [spec[task]]
            key = "train.distill.teacher" + (f".{task}" if isinstance(cfg.teacher, dict) else "")
            for f in folders:
                folder = checkpoint_folder(f, key).resolve()
                if folder not in where:
                    where[folder] = len(runs)
                    runs.append(TeacherRun.load(folder))
                by_task.setdefault(task, []).append(where[folder])
        return cls(runs, by_task)

    def labels(self) -> dict[str, list[str]]:
        """Each task's labels in its first teacher (the student knows them even if its data lacks some)."""
        return {t: list(self.runs[r[0]].tasks[t].labels) for t, r in self.by_task.items()
                if t in self.runs[r[0]].tasks}

    def check(self, tasks: dict[str, TaskType]) -> None:
        """Every student task must exist in its teachers with the same type and label set (order may differ)."""
        for name, task in tasks.items():
            for r in self.by_task[name]:
                run = self.runs[r]
                if name not in run.tasks:
                    raise UserError(f"train.distill.teacher: teacher {run.folder} has no task '{name}' (its tasks: "
                                    f"{', '.join(run.tasks)}); the student's tasks must be the teacher's")
                theirs = run.tasks[name]
                if theirs.type_name != task.type_name:
                    raise UserError(f"train.distill.teacher: task '{name}' is {theirs.type_name} in teacher "
                                    f"{run.folder} but {task.type_name} in this config")
                if set(theirs.labels) != set(task.labels):
                    extra = sorted(set(task.labels) - set(theirs.labels))[:5]
                    lacking = sorted(set(theirs.labels) - set(task.labels))[:5]
                    raise UserError(f"train.distill.teacher: task '{name}' has other labels than in teacher "
                                    f"{run.folder} (only here: {extra or 'none'}; only in the teacher: "
                                    f"{lacking or 'none'}); distil on the data the teacher was trained on")
                if theirs.labels:
                    self.perm[(r, name)] = torch.tensor([theirs.labels.index(lab) for lab in task.labels])

    def logits(self, r: int, task: str, out: torch.Tensor) -> torch.Tensor:
        """A teacher's logits for ``task`` with the label dimension in the student's order."""
        perm = self.perm.get((r, task))
        return out if perm is None else out.index_select(-1, perm.to(out.device))

    def to(self, device: torch.device) -> Teachers:
        for run in self.runs:
            run.model.to(device).eval()
        return self

    @property
    def num_layers(self) -> int:
        return min(run.num_layers for run in self.runs)


def same_tokenizer(a, b) -> bool:
    """Whether two tokenizers cut text the same way: the same vocabulary and, for fast tokenizers, the same
    normalizer, pre-tokenizer and model."""
    if a.get_vocab() != b.get_vocab():
        return False
    if getattr(a, "is_fast", False) and getattr(b, "is_fast", False):
        ja, jb = (json.loads(t.backend_tokenizer.to_str()) for t in (a, b))
        return all(ja.get(k) == jb.get(k) for k in ("normalizer", "pre_tokenizer", "model"))
    return type(a).__name__ == type(b).__name__


def check_tokenizers(teachers: Teachers, tokenizer, tasks: dict[str, TaskType], fly: bool) -> dict[int, bool]:
    """Per teacher run, whether it shares the student's tokenizer. Token tasks need it (positions must align:
    aligning through word offsets is not supported), and so does ``teacher_outputs: fly`` (the teacher reads the
    student's batch)."""
    shared = {r: same_tokenizer(run.tokenizer, tokenizer) for r, run in enumerate(teachers.runs)}
    for name, task in tasks.items():
        for r in teachers.by_task[name]:
            if shared[r]:
                continue
            if task.level == "token":
                raise NotSupportedError(f"train.distill: the student's tokenizer differs from teacher "
                                        f"{teachers.runs[r].folder}'s, and token task '{name}' needs them to match "
                                        "(aligning tags across tokenizers is not supported); distil sentence-level "
                                        "tasks only, or use a student with the teacher's tokenizer")
            if fly:
                raise NotSupportedError(f"train.distill.teacher_outputs: fly needs the student's tokenizer to be "
                                        f"teacher {teachers.runs[r].folder}'s; use teacher_outputs: cache")
    return shared


class Ensemble(nn.Module):
    """The teachers of each task as one model: ``forward`` returns, per task, ``ensemble_logits`` of its teachers'
    logits (label order: the student's). Used to score the teacher side by side with the student."""

    def __init__(self, teachers: Teachers, tasks: dict[str, TaskType]):
        super().__init__()
        self.teachers = teachers
        self.tasks = tasks
        self.members = nn.ModuleList(run.model for run in teachers.runs)  # so .to()/.eval() reach them

    def forward(self, input_ids, attention_mask, token_type_ids=None, tasks=None):
        out = {}
        for name in tasks or list(self.tasks):
            logits = [self.teachers.logits(r, name, self.teachers.runs[r].model(
                input_ids, attention_mask, token_type_ids, tasks=[name])[name]) for r in self.teachers.by_task[name]]
            out[name] = self.tasks[name].ensemble_logits(logits)
        return out
