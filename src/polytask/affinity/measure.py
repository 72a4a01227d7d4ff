"""Measure, between every pair of tasks, gradient cosine similarity and lookahead inter-task affinity.

The run is an ordinary ``polytask.train`` of the config — ``sampling: all_tasks`` (one batch of every task per
step), static weights, ``steps`` optimizer steps, one process — so every feature of the one training loop
(joint batches, precision, segments of different lengths) applies. ``AffinityProbe`` is a measurement hook the
loop calls before each step; it changes no gradient and no parameter. On a sampled fraction of the steps it:

1. runs the step's batches once and takes each task's gradient ``g_i`` on the shared encoder parameters with
   ``torch.autograd.grad`` (``.grad`` is untouched: the step's own training pass follows as usual);
2. records ``cos(g_i, g_j)`` for every pair;
3. for every task i, moves the shared parameters to ``theta - eta * g_i`` (heads untouched) and measures every
   task's loss on the step's batches, in fp32 without dropout: the lookahead affinity of Fifty et al. 2021
   ("Efficiently Identifying Task Groupings", NeurIPS) is ``Z_{i->j} = 1 - L_j(theta - eta g_i) / L_j(theta)``,
   positive when a step on task i also lowers task j's loss. ``eta`` is ``lookahead_lr`` (default: the
   encoder learning rate). The parameters are put back exactly before the real update.

Extra cost of a sampled step: one forward with K backward passes (K tasks) plus K + 1 forwards for the
lookahead — measured and reported. The values are averaged over the sampled steps, with their standard errors.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from polytask.config import Config
from polytask.data.features import to_device
from polytask.data.joint import segment_sources
from polytask.errors import NotSupportedError, UserError


def affinity_config(config: Config, output: Path, steps: int | None, progress: bool) -> Config:
    d = config.to_dict()
    tr = d["train"]
    tr.update(sampling="all_tasks", weighting={"method": "static"}, output_dir=str(output), grad_accum=1,
              tensorboard=False, progress=progress, eval_steps=None, save_steps=None)
    tr["early_stopping"] = {**tr["early_stopping"], "patience": None}
    if steps is not None:
        tr["max_steps"] = steps
    else:  # one epoch of all_tasks
        tr["max_steps"], tr["epochs"] = None, 1
    return Config.from_dict(d).validate()


class AffinityProbe:
    """A measurement hook for ``polytask.train``: every ``every``-th step, the tasks' gradient cosines and
    lookahead affinities on that step's batches (see the module docstring). Changes no gradient."""

    def __init__(self, tasks: list[str], weights: dict[str, float], every: int, eta: float):
        self.tasks, self.weights, self.every, self.eta = tasks, weights, every, eta
        self.cos: dict[tuple[str, str], list[float]] = {(a, b): [] for a in tasks for b in tasks}
        self.look: dict[tuple[str, str], list[float]] = {(a, b): [] for a in tasks for b in tasks}
        self.time = {True: 0.0, False: 0.0}  # sampled? -> seconds
        self.count = {True: 0, False: 0}
        self._start, self._sampled = 0.0, False

    def before_step(self, accelerator, model, run, window: list[tuple[str, list[int]]], step: int) -> None:
        self._start, self._sampled = time.perf_counter(), step % self.every == 0
        if not self._sampled:
            return
        segments = [(to_device(inputs, accelerator.device),
                     {t: (pos.to(accelerator.device), lab.to(accelerator.device)) for t, (pos, lab) in parts.items()})
                    for inputs, parts in segment_sources([run.collate(s, r) for s, r in window], run.pad_id,
                                                         run.tasks)]
        shared = model.shared_parameters()
        # the probe's dropout must not draw from the training run's random stream: with or without the hook
        # the run takes the same path
        with torch.random.fork_rng(devices=[]), accelerator.autocast():
            logits = model(segments=[{**inputs, "tasks": list(parts)} for inputs, parts in segments])
        losses = {t: run.tasks[t].loss(logits[t][pos], lab) * self.weights[t]
                  for _, parts in segments for t, (pos, lab) in parts.items()}
        tasks = [t for t in self.tasks if t in losses]  # a task with no labelled row in this step is skipped
        grads = {}
        for t in tasks:
            g = torch.autograd.grad(losses[t], shared, retain_graph=True, allow_unused=True)
            grads[t] = torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1).float()
                                  for x, p in zip(g, shared)])
        del logits, losses
        for a in tasks:
            for b in tasks:
                # float64: an fp32 reduction over millions of values puts cos(g, g) at 1.002
                self.cos[(a, b)].append(float(torch.nn.functional.cosine_similarity(
                    grads[a].double(), grads[b].double(), dim=0)))
        before = _losses(model, run, segments)
        saved = [p.detach().clone() for p in shared]
        for a in tasks:
            with torch.no_grad():
                offset = 0
                for p in shared:
                    p.sub_(self.eta * grads[a][offset:offset + p.numel()].view_as(p).to(p.dtype))
                    offset += p.numel()
            after = _losses(model, run, segments)
            with torch.no_grad():
                for p, s in zip(shared, saved):
                    p.copy_(s)
            for b in tasks:
                self.look[(a, b)].append(1.0 - after[b] / before[b] if before[b] > 0 else 0.0)
        model.train()

    def after_step(self, step: int) -> None:
        self.time[self._sampled] += time.perf_counter() - self._start
        self.count[self._sampled] += 1

    def result(self, fraction: float) -> dict[str, Any]:
        n_plain, n_sampled = self.count[False], self.count[True]
        return {
            "tasks": self.tasks, "steps": n_plain + n_sampled, "sampled_steps": n_sampled, "fraction": fraction,
            "lookahead_lr": self.eta, "cosine": _summary(self.cos, self.tasks),
            "lookahead": _summary(self.look, self.tasks),
            "seconds_per_plain_step": self.time[False] / n_plain if n_plain else None,
            "seconds_per_sampled_step": self.time[True] / n_sampled if n_sampled else None,
        }


def measure_affinity(config: Config, output: str | Path, steps: int | None = None, fraction: float = 0.25,
                     lookahead_lr: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the measurement (a short training run in ``output``); returns the matrices (task -> task -> mean,
    stderr) and timing."""
    from polytask.train.loop import train

    if len(config.tasks) < 2:
        raise UserError("polytask affinity needs a config with at least two tasks")
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {fraction}")
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    for key, on in (("train.mutual", config.train.mutual.enabled), ("train.distill", config.train.distill.enabled),
                    ("train.meta", config.train.meta.enabled)):
        if on:  # the probe measures one model's tasks; peers or a teacher would change what it measures
            raise NotSupportedError(f"polytask affinity with {key} is not supported; measure the config without it")
    cfg = affinity_config(config, Path(output), steps, progress)
    probe = AffinityProbe(list(cfg.tasks), {n: t.weight for n, t in cfg.tasks.items()}, max(1, round(1 / fraction)),
                          lookahead_lr if lookahead_lr is not None else cfg.train.lr)
    train(cfg, overwrite=True, hooks=[probe])
    for name in ("best", "last"):  # the measurement is the product; the briefly trained model is not
        shutil.rmtree(Path(output) / name, ignore_errors=True)
    return probe.result(fraction)


@torch.no_grad()
def _losses(model, run, segments) -> dict[str, float]:
    """Every task's loss on its batch, fp32, dropout off: one forward over the step's segments. The class's own
    forward is called: under mixed precision the prepared model's instance forward autocasts to bf16, where a
    lookahead step of lr ~ 1e-4 would mostly round away."""
    model.eval()
    device = next(model.parameters()).device.type
    with torch.autocast(device, enabled=False):
        logits = type(model).forward(model, segments=[{**inputs, "tasks": list(parts)} for inputs, parts in segments])
    return {t: float(run.tasks[t].loss(logits[t][pos], lab))
            for _, parts in segments for t, (pos, lab) in parts.items()}


def _summary(values: dict[tuple[str, str], list[float]], tasks: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for a in tasks:
        out[a] = {}
        for b in tasks:
            v = values[(a, b)]
            mean = sum(v) / len(v) if v else float("nan")
            var = sum((x - mean) ** 2 for x in v) / (len(v) - 1) if len(v) > 1 else 0.0
            out[a][b] = {"mean": mean, "stderr": math.sqrt(var / len(v)) if v else float("nan"), "n": len(v)}
    return out
