"""``polytask distill``: train a student from its teachers, the same student from labels only, and compare.

Three models, scored on the same split (test, else validation) and timed on the same inputs in one run:

- the teacher (an ensemble or per-task teachers are scored as the student sees them: averaged per task);
- ``<output_dir>-labels-only``: the student trained from the labels alone — the same initialisation, steps
  and settings, ``alpha: 0`` and no ``distill_data`` (``--no-baseline`` skips it);
- ``<output_dir>``: the distilled student.

The table (``distill.md`` / ``distill.json`` in the output folder) gives per task each model's main metric and
the share of the teacher's score the distilled student keeps; then parameters and inference examples/s.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from polytask.compare.cost import sample_inputs, timed
from polytask.config import Config
from polytask.data.features import prepare_task_data
from polytask.distill.teacher import Ensemble, Teachers, same_tokenizer
from polytask.errors import NotSupportedError
from polytask.evaluate.report import evaluate_checkpoint
from polytask.evaluate.runner import evaluate_split, mean_score
from polytask.model.io import write_json
from polytask.predict import Predictor
from polytask.train.loop import train


@dataclass
class DistillResult:
    output_dir: Path
    summary: dict[str, Any]


def baseline_config(config: Config) -> Config:
    """The student from labels only: the same config with ``alpha: 0``, no hidden-state matching and no
    distill_data."""
    cfg = copy.deepcopy(config)
    cfg.train.distill.alpha = 0.0
    cfg.train.distill.hidden.weight = 0.0
    for t in cfg.tasks.values():
        t.distill_data = None
    cfg.train.output_dir = str(Path(config.train.output_dir)) + "-labels-only"
    return cfg


def distill(config: Config, resume: bool = False, overwrite: bool = False, baseline: bool = True,
            inference_samples: int = 256, batch_size: int = 64) -> DistillResult:
    """Train (and compare) as the module docstring says; returns the summary written to ``distill.json``."""
    out = Path(config.train.output_dir)
    runs = {"distilled": out}
    result = train(config, resume=resume, overwrite=overwrite)
    if baseline:
        base = baseline_config(config)
        train(base, resume=resume and (Path(base.train.output_dir) / "last").exists(), overwrite=overwrite)
        runs["labels_only"] = Path(base.train.output_dir)
    if not result.is_main_process:
        return DistillResult(out, {})
    student = Predictor(out / "best")
    split = "test" if all(t.cfg.test or t.cfg.dataset for t in student.tasks.values()) else "validation"
    teachers = Teachers.load(config.train.distill, list(student.tasks))  # loaded once, for scores and speed
    scores = {"teacher": teacher_scores(teachers, student, split, batch_size)}
    for name, folder in runs.items():
        scores[name] = evaluate_checkpoint(student if name == "distilled" else Predictor(folder / "best"), split,
                                           batch_size)
    speed = inference_speed(teachers, student, inference_samples)
    summary = summarise(scores, student, split, speed, runs)
    write_json(out / "distill.json", summary)
    (out / "distill.md").write_text(markdown(summary), encoding="utf-8")
    return DistillResult(out, summary)


def teacher_scores(teachers: Teachers, student: Predictor, split: str, batch_size: int) -> dict[str, Any]:
    """The teachers' metrics per task on ``split``: each task read through its first teacher's tokenizer,
    several teachers of a task averaged (``Ensemble``)."""
    teachers.check(student.tasks)
    device = student.device
    ensemble = Ensemble(teachers, student.tasks).to(device).eval()
    results: dict[str, Any] = {}
    for name, task in student.tasks.items():
        first = teachers.runs[teachers.by_task[name][0]]
        if not all(same_tokenizer(teachers.runs[r].tokenizer, first.tokenizer) for r in teachers.by_task[name]):
            raise NotSupportedError(f"scoring the teachers of task '{name}': an ensemble whose members use different "
                                    "tokenizers is not supported (they are scored on one input)")
        data = prepare_task_data({name: task}, first.tokenizer, first.config.model.max_length, splits=(split,),
                                 fit_labels=False)
        if split in data[name].features:
            results.update({k: v for k, v in evaluate_split(
                ensemble, data, split, batch_size, first.tokenizer.pad_token_id or 0, device,
                first.config.train.precision).items() if k == name})
    results["mean"] = mean_score({k: v for k, v in results.items() if k in student.tasks}, student.tasks)
    return results


def inference_speed(teachers: Teachers, student: Predictor, n: int, batch_size: int = 32, repeats: int = 2
                    ) -> dict[str, Any]:
    """Examples/s answering every task: the teachers (each run its own tasks) against the student, on the same
    inputs, sides interleaved, best of ``repeats``."""
    if n <= 0:
        return {}
    served = {}
    for name, runs in teachers.by_task.items():
        for r in runs:
            served.setdefault(r, []).append(name)
    teacher_preds = []  # the teachers already loaded, not read from disk again
    for r, names in served.items():
        run = teachers.runs[r]
        teacher_preds.append((Predictor.from_loaded(run.folder, run.config, run.tasks, run.tokenizer, run.model,
                                                    student.device), names))
    inputs = sample_inputs(student, n)

    def run_teachers():
        for p, names in teacher_preds:
            p.predict(inputs, tasks=names, batch_size=batch_size)

    def run_student():
        student.predict(inputs, batch_size=batch_size)

    for fn in (run_teachers, run_student):  # warm-up
        fn()
    best = {"teacher": float("inf"), "student": float("inf")}
    for _ in range(repeats):
        for side, fn in (("teacher", run_teachers), ("student", run_student)):
            best[side] = min(best[side], timed(fn))
    return {
        "inputs": len(inputs), "batch_size": batch_size, "threads": torch.get_num_threads(),
        "teacher_per_second": round(len(inputs) / best["teacher"], 1),
        "student_per_second": round(len(inputs) / best["student"], 1),
        "speedup": round(best["teacher"] / best["student"], 3),
        "teacher_parameters": sum(sum(p.numel() for p in t.model.parameters()) for t, _ in teacher_preds),
        "student_parameters": sum(p.numel() for p in student.model.parameters()),
        "teacher_layers": teachers.num_layers,
        "student_layers": student.model.encoder.config.num_hidden_layers,
    }


def summarise(scores: dict[str, dict[str, Any]], student: Predictor, split: str, speed: dict[str, Any],
              runs: dict[str, Path]) -> dict[str, Any]:
    tasks = {}
    for name, task in student.tasks.items():
        if name not in scores["distilled"]:
            continue
        metric = task.main_metric
        row = {"metric": metric}
        for side, res in scores.items():
            if name in res:
                row[side] = res[name][metric]
        if row.get("teacher"):
            row["kept"] = row["distilled"] / row["teacher"]
        tasks[name] = row
    means = {side: res.get("mean") for side, res in scores.items()}
    return {"split": split, "tasks": tasks, "mean": means,
            "kept": means["distilled"] / means["teacher"] if means.get("teacher") else None,
            "speed": speed, "runs": {k: str(v) for k, v in runs.items()}}


def markdown(s: dict[str, Any]) -> str:
    lo = "labels_only" in s["mean"]
    head = "| task | metric | teacher |" + (" student, labels only |" if lo else "") + " distilled student | kept |"
    lines = ["# Distillation", "", f"Split: {s['split']}. Kept: the distilled student's score as a share of the "
             "teacher's.", "", head, "|---|---|---|" + ("---|" if lo else "") + "---|---|"]

    def pct(v):
        return "–" if v is None else f"{100 * v:.2f}"

    for name, row in list(s["tasks"].items()) + [("mean", {"metric": "mean of main metrics", **s["mean"],
                                                           "kept": s["kept"]})]:
        cells = [name, row["metric"], pct(row.get("teacher"))] + ([pct(row.get("labels_only"))] if lo else []) + [
            pct(row.get("distilled")), "–" if row.get("kept") is None else f"{100 * row['kept']:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    sp = s["speed"]
    if sp:
        lines += ["", "| | teacher | student |", "|---|---|---|",
                  f"| encoder layers | {sp['teacher_layers']} | {sp['student_layers']} |",
                  f"| parameters | {sp['teacher_parameters'] / 1e6:.1f}M | {sp['student_parameters'] / 1e6:.1f}M |",
                  f"| inference, examples/s (every task; {sp['inputs']} inputs, batch {sp['batch_size']}, "
                  f"{sp['threads']} threads) | {sp['teacher_per_second']} | {sp['student_per_second']} "
                  f"({sp['speedup']:.2f}×) |"]
    return "\n".join(lines) + "\n"
