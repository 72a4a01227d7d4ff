"""Measure, between every pair of tasks, gradient cosine similarity and lookahead inter-task affinity.

The run trains the config's model with ``sampling: all_tasks`` (one batch of every task per step) and static
weights for ``steps`` optimizer steps, in one process. On a sampled fraction of the steps it:

1. runs each task's batch on its own and takes that task's gradient ``g_i`` on the shared encoder
   parameters — these per-task passes ARE the step's training pass (their gradients are summed, as a
   stacked step would), so they cost nothing extra;
2. records ``cos(g_i, g_j)`` for every pair;
3. for every task i, moves the shared parameters to ``theta - eta * g_i`` (heads untouched) and measures every
   task's loss on the step's batches, in fp32 without dropout: the lookahead affinity of Fifty et al. 2021
   ("Efficiently Identifying Task Groupings", NeurIPS) is ``Z_{i->j} = 1 - L_j(theta - eta g_i) / L_j(theta)``,
   positive when a step on task i also lowers task j's loss. ``eta`` is ``lookahead_lr`` (default: the
   encoder learning rate). The parameters are put back exactly before the real update.

Extra cost of a sampled step: K + 1 forward passes (K tasks), no extra backward — under 2x a training step
for K <= 4 (a step is about one forward and a twice as costly backward). The values are averaged over the
sampled steps, with their standard errors.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from polytask.config import Config
from polytask.data.features import collate, stack_batches
from polytask.errors import UserError
from polytask.precision import runtime_precision


def affinity_config(config: Config, output: Path) -> Config:
    d = config.to_dict()
    d["train"]["sampling"] = "all_tasks"
    d["train"]["weighting"] = {"method": "static"}
    d["train"]["output_dir"] = str(output)
    return Config.from_dict(d).validate()


def measure_affinity(config: Config, output: str | Path, steps: int | None = None, fraction: float = 0.25,
                     lookahead_lr: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the measurement; returns the matrices (task -> task -> mean, stderr) and timing."""
    from polytask.train.setup import build_run

    if len(config.tasks) < 2:
        raise UserError("polytask affinity needs a config with at least two tasks")
    if not 0 < fraction <= 1:
        raise UserError(f"--fraction must be in (0, 1], got {fraction}")
    cfg = affinity_config(config, Path(output))
    torch.manual_seed(cfg.train.seed)
    run = build_run(cfg)
    tasks = list(run.tasks)
    k = len(tasks)
    total = steps or min(run.total_steps, run.steps_per_epoch)
    if total < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    every = max(1, round(1 / fraction))
    eta = lookahead_lr if lookahead_lr is not None else cfg.train.lr
    model, optimizer, scheduler = run.model, run.optimizer, run.scheduler
    model.train()
    shared = model.shared_parameters()
    cos = {(a, b): [] for a in tasks for b in tasks}
    look = {(a, b): [] for a in tasks for b in tasks}
    time_plain = time_sampled = 0.0
    n_plain = n_sampled = 0
    plan, epoch, pos = run.plan.epoch(0), 0, 0
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if runtime_precision(cfg.train.precision, "cpu") == "bf16"
                else torch.autocast("cpu", enabled=False))
    for step in tqdm(range(total), desc="affinity", disable=not progress, dynamic_ncols=True):
        if pos >= len(plan):
            epoch, pos = epoch + 1, 0
            plan = run.plan.epoch(epoch)
        group = plan[pos:pos + k]
        pos += k
        batches = {t: collate([run.data[t].features["train"][j] for j in idx], run.tasks[t], run.pad_id)
                   for t, idx in group}
        start = time.perf_counter()
        sampled = step % every == 0
        if sampled:
            grads = {}
            for t in tasks:
                b = batches[t]
                with autocast:
                    logits = model(b["input_ids"], b["attention_mask"], b["token_type_ids"], tasks=[t])[t]
                    loss = run.tasks[t].loss(logits, b["labels"]) * cfg.tasks[t].weight
                loss.backward()
                running = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                                     for p in shared])  # .grad holds the sum so far: subtract earlier tasks
                grads[t] = running - sum(grads.values()) if grads else running
            for a in tasks:
                for b_ in tasks:
                    # float64: an fp32 reduction over millions of values puts cos(g, g) at 1.002
                    cos[(a, b_)].append(float(torch.nn.functional.cosine_similarity(
                        grads[a].double(), grads[b_].double(), dim=0)))
            before = _losses(model, run, batches, tasks)
            saved = [p.detach().clone() for p in shared]
            for a in tasks:
                with torch.no_grad():
                    offset = 0
                    for p in shared:
                        p.sub_(eta * grads[a][offset:offset + p.numel()].view_as(p))
                        offset += p.numel()
                after = _losses(model, run, batches, tasks)
                with torch.no_grad():
                    for p, s in zip(shared, saved):
                        p.copy_(s)
                for b_ in tasks:
                    look[(a, b_)].append(1.0 - after[b_] / before[b_] if before[b_] > 0 else 0.0)
            model.train()
        else:
            inputs, rows = stack_batches([batches[t] for t in tasks], run.pad_id)
            with autocast:
                logits = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"],
                               tasks=tasks)
                loss = sum(run.tasks[t].loss(logits[t][sl], batches[t]["labels"]) * cfg.tasks[t].weight
                           for t, sl in zip(tasks, rows))
            loss.backward()
        if cfg.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        if sampled:
            time_sampled, n_sampled = time_sampled + elapsed, n_sampled + 1
        else:
            time_plain, n_plain = time_plain + elapsed, n_plain + 1
    return {
        "tasks": tasks, "steps": total, "sampled_steps": n_sampled, "fraction": fraction, "lookahead_lr": eta,
        "cosine": _summary(cos, tasks), "lookahead": _summary(look, tasks),
        "seconds_per_plain_step": time_plain / n_plain if n_plain else None,
        "seconds_per_sampled_step": time_sampled / n_sampled if n_sampled else None,
    }


@torch.no_grad()
def _losses(model, run, batches: dict[str, dict[str, Any]], tasks: list[str]) -> dict[str, float]:
    """Every task's loss on its batch, fp32, dropout off: one stacked forward."""
    model.eval()
    inputs, rows = stack_batches([batches[t] for t in tasks], run.pad_id)
    logits = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], tasks=tasks)
    return {t: float(run.tasks[t].loss(logits[t][sl], batches[t]["labels"])) for t, sl in zip(tasks, rows)}


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
