"""Evaluate a checkpoint on a split and write ``report.json`` and ``report.md``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from polytask.data.features import prepare_task_data
from polytask.evaluate.runner import evaluate_split
from polytask.model.adapters import model_summary, summary_line
from polytask.model.io import WEIGHTS_FILE, write_json
from polytask.predict import Predictor


def evaluate_checkpoint(predictor: Predictor, split: str = "test", batch_size: int = 64,
                        data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-task metrics of a loaded model on ``split`` of the data named in its config (``data``: that split
    already read and tokenised by ``prepare_task_data``, e.g. to score several models of one checkpoint)."""
    if data is None:
        data = prepare_task_data(predictor.tasks, predictor.tokenizer, predictor.config.model.max_length,
                                 splits=(split,), fit_labels=False)
    data = {n: d for n, d in data.items() if split in d.features}
    results = evaluate_split(predictor.model, data, split, batch_size, predictor.tokenizer.pad_token_id or 0,
                             predictor.device, predictor.config.train.precision)
    return results


def write_report(results: dict[str, Any], predictor: Predictor, split: str, out_dir: Path,
                 license: str | None = None) -> tuple[Path, Path]:
    """``report.json``, ``report.md`` and the model card ``MODEL_CARD.md`` (this split's results) in ``out_dir``."""
    import torch

    from polytask.evaluate.card import model_card

    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"checkpoint": str(predictor.path), "split": split, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    backend = getattr(predictor, "backend", "torch")
    if isinstance(predictor.model, torch.nn.Module):
        meta["model"] = model_summary(predictor.model, predictor.config, predictor.path / WEIGHTS_FILE)
    else:
        meta["backend"] = backend
    main = {name: {"metric": task.main_metric, "reason": task.metric_reason}
            for name, task in predictor.tasks.items() if name in results}
    write_json(out_dir / "report.json", {**meta, "main_metrics": main, "results": results})
    md = out_dir / "report.md"
    md.write_text(markdown_report(results, predictor, split, meta), encoding="utf-8")
    (out_dir / "MODEL_CARD.md").write_text(model_card(predictor.config, predictor.tasks, {split: results},
                                                      artefact=backend, license=license), encoding="utf-8")
    return out_dir / "report.json", md


def summary_rows(results: dict[str, Any], tasks) -> list[tuple[str, str, str]]:
    """(task, type, 'metric=value ...') per task, for console and markdown tables."""
    rows = []
    for name, task in tasks.items():
        if name not in results:
            continue
        r = results[name]
        shown = "  ".join(f"{m}={r[m]:.4f}" for m in (*task.metric_names, "loss") if m in r)
        rows.append((name, task.type_name, shown))
    return rows


def metric_choice(name: str, task) -> str:
    """``"pos: main metric accuracy (token accuracy: tags have no span scheme)"``: what ``mean`` and early
    stopping score this task by, and why."""
    return f"{name}: main metric {task.main_metric} ({task.metric_reason})"


def markdown_report(results: dict[str, Any], predictor: Predictor, split: str, meta: dict[str, Any]) -> str:
    lines = [f"# Evaluation report — {split} split", "",
             f"Checkpoint: `{meta['checkpoint']}`  ", f"Date: {meta['time']}  ",
             *([f"Model: {summary_line(meta['model'])}"] if "model" in meta else []), "",
             "| task | type | " + " | ".join(["main metric", "value"]) + " |", "|---|---|---|---|"]
    for name, task in predictor.tasks.items():
        if name in results:
            lines.append(f"| {name} | {task.type_name} | {task.main_metric} | "
                         f"{results[name][task.main_metric]:.4f} |")
    if "mean" in results:
        lines.append(f"| **mean** | | | {results['mean']:.4f} |")
    lines += ["", "Main metrics (averaged into `mean`):", ""]
    lines += [f"- {metric_choice(name, task)}" for name, task in predictor.tasks.items() if name in results]
    for name, task in predictor.tasks.items():
        if name not in results:
            continue
        r = results[name]
        lines += ["", f"## {name} ({task.type_name})", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {m} | {r[m]:.4f} |" for m in (*task.metric_names, "loss") if m in r]
        report = r.get("report")
        if isinstance(report, dict) and report:
            lines += ["", "| label | precision | recall | f1 | support |", "|---|---|---|---|---|"]
            for label, vals in report.items():
                if isinstance(vals, dict) and "precision" in vals:
                    lines.append(f"| {label} | {vals['precision']:.4f} | {vals['recall']:.4f} | "
                                 f"{vals.get('f1-score', vals.get('f1', 0.0)):.4f} | {int(vals['support'])} |")
    return "\n".join(lines) + "\n"


def results_json(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=2, ensure_ascii=False)
