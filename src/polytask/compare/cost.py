"""Inference cost of one multi-task model against one single-task model per task, on the same inputs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from polytask.data.features import task_rows


def sample_inputs(predictor, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` inputs, taken in turn from each task's test (else validation) split, as records every task
    can read: the text under ``text`` (words joined by spaces) plus any sentence-pair column."""
    per_task = []
    for name, task in predictor.tasks.items():
        rows = task_rows(name, task.cfg, "test") or task_rows(name, task.cfg, "validation") or []
        records = []
        for where, rec in rows[: max(1, n // len(predictor.tasks))]:
            ex = task.read(rec, where, labelled=False)
            text = " ".join(ex.text) if isinstance(ex.text, list) else ex.text
            records.append({"text": text})
        per_task.append(records)
    pair_cols = {t.cfg.text_pair for t in predictor.tasks.values() if t.cfg.text_pair}
    mixed = [r for group in zip(*per_task) for r in group] if per_task else []
    return [{**r, **{c: r["text"] for c in pair_cols}} for r in mixed[:n]]


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def inference_cost(multi_dir: Path, single_dirs: dict[str, Path], n: int = 256, batch_size: int = 32,
                   repeats: int = 2) -> dict[str, Any]:
    """Seconds for the multi-task model to answer every task for ``n`` inputs vs the single-task models
    answering their own task for the same inputs (best of ``repeats``, sides interleaved)."""
    from polytask.predict import Predictor

    multi = Predictor(multi_dir)
    singles = {t: Predictor(d) for t, d in single_dirs.items()}
    inputs = sample_inputs(multi, n)
    multi.predict(inputs[:batch_size], batch_size=batch_size)  # warm-up
    for p in singles.values():
        p.predict(inputs[:batch_size], batch_size=batch_size)
    t_multi = t_single = float("inf")
    for _ in range(repeats):
        t_multi = min(t_multi, timed(lambda: multi.predict(inputs, batch_size=batch_size)))
        t_single = min(t_single, timed(lambda: [p.predict(inputs, batch_size=batch_size)
                                               for p in singles.values()]))
    return {
        "inputs": len(inputs), "batch_size": batch_size, "tasks": len(singles),
        "multi_seconds": round(t_multi, 4), "single_seconds": round(t_single, 4),
        "multi_inputs_per_second": round(len(inputs) / t_multi, 1),
        "single_inputs_per_second": round(len(inputs) / t_single, 1),
        "speedup": round(t_single / t_multi, 3),
        "multi_parameters": sum(p.numel() for p in multi.model.parameters()),
        "single_parameters": sum(sum(p.numel() for p in s.model.parameters()) for s in singles.values()),
        "multi_megabytes": round(param_bytes(multi.model) / 2**20, 1),
        "single_megabytes": round(sum(param_bytes(s.model) for s in singles.values()) / 2**20, 1),
        "threads": torch.get_num_threads(),
    }
