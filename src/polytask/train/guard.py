"""A non-finite loss stops training cleanly, before it reaches the weights or a checkpoint.

A NaN or inf loss (a learning rate too high, a corrupt row, an overflow) would otherwise flow into the
weights at the next optimizer step and into every later save. The loop calls ``check_finite`` after a step's
backward passes and before anything is updated: a non-finite task loss (or, with clipping, a non-finite
gradient norm) stops every process with one message naming the task, the step and the batch's first example.
Nothing of that step is applied or saved, so ``best/`` and the last ``last/`` are the last good state and
``--resume`` (perhaps with a lower ``train.lr``) continues from it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from accelerate.utils import gather_object

from polytask.errors import UserError


class NonFiniteLossError(UserError):
    """Training met a NaN or inf loss; the message says where and what was kept."""


def first_example(run, window: list[tuple[str, list[int]]], task: str) -> str:
    """``file:line`` of the first example of ``task`` in the step's micro-batches."""
    if run.meta is not None:
        return "a meta-learning episode"
    for src, rows in window:
        source = run.sources[src]
        if task in source.tasks:
            for r in rows:
                i = source.index[task][r]
                if i >= 0:
                    return run.data[task].examples["train"][i].where
    return "unknown"


def check_finite(accelerator, run, window: list[tuple[str, list[int]]], losses: dict[str, float], step: int,
                 grad_norm: torch.Tensor | float | None = None, on_stop=()) -> None:
    """Raise ``NonFiniteLossError`` on every process when any process saw a non-finite loss or gradient norm
    (after calling each of ``on_stop``: closing the log and the progress bar)."""
    bad = [f"the loss of task '{t}' is {v} (the batch's first example: {first_example(run, window, t)})"
           for t, v in losses.items() if not math.isfinite(v)]
    if not bad and grad_norm is not None and not math.isfinite(float(grad_norm)):
        bad = [f"the gradient norm is {float(grad_norm)} although every loss is finite (an overflow)"]
    if accelerator.num_processes > 1:  # every process must stop together, or the others wait forever
        flag = torch.tensor([1.0 if bad else 0.0], device=accelerator.device)
        torch.distributed.all_reduce(flag)
        if flag.item() == 0:
            return
        bad = sorted({b for reports in gather_object([bad]) for b in reports})
    if not bad:
        return
    for close in on_stop:
        close()
    out = Path(run.config.train.output_dir)
    if (out / "last").exists():
        kept = (f"{out}/last (and {out}/best) hold the last good state; continue with --resume (perhaps with a "
                "lower train.lr, or after fixing that row)")
    else:
        kept = ("no checkpoint had been saved yet; start again (perhaps with a lower train.lr, or after fixing "
                "that row), or set train.save_steps to keep resumable states more often")
    raise NonFiniteLossError(f"training stopped at optimizer step {step + 1}: " + "; ".join(bad)
                             + f". Nothing of this step was applied or saved: {kept}")
