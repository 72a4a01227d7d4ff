"""``polytask add-task`` and ``polytask update``: train on from a trained run into a new run, then report forgetting.

Both build the new run's config from the base run's own (its model, tasks and training settings), add what is
new — a task from a task file, or a fresh training file for one task — set ``train.continual`` (the base
checkpoint, the old tasks to protect, the method) and train with the one training loop. The base run is only
read. Afterwards every task is scored on the same split (test, else validation) by the base checkpoint and by
the new ``best/``: per old task the change in its main metric, the new task's score, and backward transfer (the
mean change over the old tasks). ``max_forgetting``: when an old task drops by more than that many points, the
new checkpoint is moved from ``best/`` to ``rejected/`` (kept for inspection) and the command fails.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polytask.config import _absolute, apply_override, load_config, read_yaml
from polytask.errors import UserError
from polytask.model.io import read_meta, write_json
from polytask.predict import Predictor, checkpoint_dir
from polytask.train.loop import train

FILE_KEYS = ("train", "validation", "test", "distill_data", "corpus")


@dataclass
class ContinualResult:
    output_dir: Path
    report: dict[str, Any]


def base_config(run: str | Path) -> tuple[Path, dict[str, Any]]:
    """The base checkpoint folder and its config as a plain dict, without the sections a new run does not inherit
    (distillation, mutual learning, an earlier continual step's settings, meta-learning)."""
    ckpt = checkpoint_dir(run).resolve()
    data = copy.deepcopy(read_meta(ckpt)["config"])
    for key in ("distill", "mutual", "continual", "meta"):
        data["train"].pop(key, None)
    for t in data["tasks"].values():
        t.pop("distill_data", None)
    return ckpt, data


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


def _output(data: dict[str, Any], ckpt: Path, output: str | None, command: str) -> None:
    if output:
        data["train"]["output_dir"] = output
    out = Path(data["train"]["output_dir"]).resolve()
    run = ckpt.parent if ckpt.name in ("best", "last") else ckpt
    if out == run or run in out.parents or out in ckpt.parents:
        raise UserError(f"polytask {command}: the new run's output folder {out} is the base run's; the base run is "
                        "never modified — give another with --output or train.output_dir")


def add_task(run: str | Path, task_file: str | Path, overrides: list[str] = (), output: str | None = None,
             method: str | None = None, max_forgetting: float | None = None, resume: bool = False,
             overwrite: bool = False) -> ContinualResult:
    """Add the task(s) of ``task_file`` (a YAML with ``tasks:`` and optionally ``train:``, e.g. its
    ``output_dir`` and ``continual: {method: replay}``) to the model of ``run`` and train them."""
    ckpt, data = base_config(run)
    extra = read_yaml(task_file)
    unknown = sorted(set(extra) - {"tasks", "train"})
    if unknown:
        raise UserError(f"{task_file}: unknown top-level key '{unknown[0]}'; a task file has tasks: and optionally "
                        "train: (the model is the base run's)")
    new = extra.get("tasks")
    if not isinstance(new, dict) or not new:
        raise UserError(f"{task_file}: 'tasks' must map at least one new task name to its settings")
    taken = [t for t in new if t in data["tasks"]]
    if taken:
        raise UserError(f"{task_file}: task '{taken[0]}' already exists in {ckpt} (its tasks: "
                        f"{', '.join(data['tasks'])}); choose another name, or use polytask update to train it on "
                        "new data")
    folder = Path(task_file).resolve().parent
    for spec in new.values():  # the task file's relative paths are relative to it
        if isinstance(spec, dict):
            for k in FILE_KEYS:
                if isinstance(spec.get(k), str):
                    spec[k] = _absolute(spec[k], folder)
    if not isinstance(extra.get("train") or {}, dict):
        raise UserError(f"{task_file}: 'train' must be a mapping of training settings, got {extra['train']!r}")
    old = list(data["tasks"])
    data["tasks"].update(new)
    _merge(data["train"], extra.get("train") or {})
    return _train_on(data, ckpt, old, overrides, output, method, max_forgetting, resume, overwrite, "add-task")


def update(run: str | Path, task: str, data_file: str | Path, overrides: list[str] = (), output: str | None = None,
           method: str | None = None, max_forgetting: float | None = None, resume: bool = False,
           overwrite: bool = False) -> ContinualResult:
    """Train task ``task`` of ``run`` on ``data_file`` (its new training rows; labels it never saw grow its head),
    protecting the other tasks."""
    ckpt, data = base_config(run)
    if task not in data["tasks"]:
        raise UserError(f"polytask update: no task '{task}' in {ckpt}; its tasks: {', '.join(data['tasks'])}")
    spec = data["tasks"][task]
    if spec.get("dataset"):
        raise UserError(f"polytask update: task '{task}' reads the built-in dataset '{spec['dataset']}', whose "
                        "validation and test splits cannot be kept beside a new training file; give the task "
                        "files (train/validation/test) in the base run's config to update it")
    path = Path(data_file)
    if not path.is_file():
        raise UserError(f"polytask update: --data {data_file}: no such file")
    spec["train"] = str(path.resolve())
    spec.pop("max_train_samples", None)  # every row of the new data
    old = [t for t in data["tasks"] if t != task]
    return _train_on(data, ckpt, old, overrides, output, method, max_forgetting, resume, overwrite, "update",
                     updated=task)


def _train_on(data: dict[str, Any], ckpt: Path, old: list[str], overrides, output, method, max_forgetting,
              resume: bool, overwrite: bool, command: str, updated: str | None = None) -> ContinualResult:
    cont = data["train"].setdefault("continual", {})
    if method:
        cont["method"] = method
    cont.update(base=str(ckpt), old_tasks=old)
    for o in overrides:
        apply_override(data, o)
    _output(data, ckpt, output, command)
    if max_forgetting is not None and max_forgetting < 0:
        raise UserError(f"--max-forgetting {max_forgetting}: give the largest drop allowed, in points (>= 0)")
    config = load_config(data=data)
    out = Path(config.train.output_dir)
    if not train(config, resume=resume, overwrite=overwrite).is_main_process:
        return ContinualResult(out, {})  # under accelerate launch the main process scores and reports
    report = forgetting_report(ckpt, out, old, updated)
    write_json(out / "forgetting.json", report)
    (out / "forgetting.md").write_text(markdown(report), encoding="utf-8")
    worst = [r for r in report["old_tasks"] if r["change"] is not None and -r["change"] > (max_forgetting or 0)]
    if max_forgetting is not None and worst:
        w = min(worst, key=lambda r: r["change"])
        rejected = out / "rejected"
        shutil.rmtree(rejected, ignore_errors=True)
        os.replace(out / "best", rejected)
        raise UserError(f"old task '{w['task']}' dropped {-w['change']:.2f} points ({w['metric']} {w['before']:.2f} "
                        f"-> {w['after']:.2f}), more than --max-forgetting {max_forgetting:g}: the new checkpoint was "
                        f"not kept as best/; it is in {rejected} for inspection (report: {out / 'forgetting.md'})")
    return ContinualResult(out, report)


def forgetting_report(base: Path, out: Path, old: list[str], updated: str | None) -> dict[str, Any]:
    """Every task's main metric on one split, from the base checkpoint and from the new ``best/``."""
    from polytask.evaluate.report import evaluate_checkpoint

    after_model = Predictor(out / "best")
    split = "test" if all(t.cfg.test or t.cfg.dataset for t in after_model.tasks.values()) else "validation"
    before_model = Predictor(base)
    before, after = evaluate_checkpoint(before_model, split), evaluate_checkpoint(after_model, split)
    method = after_model.config.train.continual.method

    def row(name: str) -> dict[str, Any]:
        metric = after_model.tasks[name].main_metric
        b = 100 * before[name][metric] if name in before and name in before_model.tasks else None
        a = 100 * after[name][metric] if name in after else None
        return {"task": name, "metric": metric, "before": b, "after": a,
                "change": None if a is None or b is None else a - b}

    olds = [row(t) for t in old]
    news = [row(t) for t in after_model.tasks if t not in old]
    changes = [r["change"] for r in olds if r["change"] is not None]
    return {"split": split, "method": method, "base": str(base), "run": str(out), "updated": updated,
            "old_tasks": olds, "new_tasks": news,
            "backward_transfer": sum(changes) / len(changes) if changes else None}


def markdown(r: dict[str, Any]) -> str:
    def num(v):
        return "–" if v is None else f"{v:.2f}"

    def signed(v):
        return "–" if v is None else f"{v:+.2f}"

    lines = ["# Forgetting", "", f"Method: {r['method']}. Split: {r['split']}. Base: `{r['base']}`.", "",
             "| task | metric | base model | new model | change (points) |", "|---|---|---|---|---|"]
    for x in r["old_tasks"]:
        lines.append(f"| {x['task']} (old) | {x['metric']} | {num(x['before'])} | {num(x['after'])} | "
                     f"{signed(x['change'])} |")
    for x in r["new_tasks"]:
        kind = "updated" if x["task"] == r["updated"] else "new"
        lines.append(f"| {x['task']} ({kind}) | {x['metric']} | {num(x['before'])} | {num(x['after'])} | "
                     f"{signed(x['change'])} |")
    lines += ["", f"Backward transfer (mean change of the old tasks): {num(r['backward_transfer'])} points"]
    return "\n".join(lines) + "\n"
