"""``polytask adapt``: learn a new task from K labelled examples per class, from a trained run or a plain encoder.

Per seed: K rows per class are drawn (seeded) from the task's training rows — for a classification task K of
each label; for a multi-label task at least K rows carrying each label; for a token task at least K sentences
holding each tag other than ``O`` (greedy K-shot sampling, rarest class first, as in few-shot NER practice) —
or every row of the file when ``shots`` is None. A quarter of them (at least one per class for classification)
is held out for validation and early stopping, so the test split is never looked at before the end; the rest
trains with the one training loop, from the start run's encoder (its task heads are not used: the new task
gets a new head) or from the plain encoder. The best checkpoint is then scored on the task's test split.
Several seeds repeat this over different draws of K and report mean ± std: few-shot results without their
spread mislead.

Each seed's run is written like ``train`` writes one (``<output>/seed<s>/``, its sampled rows under
``data/``); ``adapt.json`` and ``adapt.md`` hold the summary.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polytask.config import apply_override, load_config, read_yaml
from polytask.errors import NotSupportedError, UserError
from polytask.model.io import read_meta, write_json

# few-shot fine-tuning: many short epochs, early stopping on the held-out slice (overridable in the task file).
# A fresh head needs a large step to converge in the few dozen steps there are (head lr 1e-2, not the 1e-3 of a
# full run), and the validation *loss* of a handful of held-out rows is a far steadier stopping signal than their
# accuracy (which moves in steps of 10-25 points): K = 8 from MiniLM, 3 draws, BBC topic 86.1 -> 92.3, RT
# sentiment 47.6 -> 60.3 (BENCHMARKS.md, "Few-shot adaptation").
ADAPT_TRAIN = {"epochs": 20, "batch_size": 8, "lr": 5.0e-5, "head_lr": 1.0e-2, "warmup_ratio": 0.1,
               "early_stopping": {"metric": "loss", "patience": 5}}
HOLDOUT = 0.25


@dataclass
class AdaptResult:
    output_dir: Path
    summary: dict[str, Any]


def is_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return (p / "polytask.json").is_file() or any((p / n / "polytask.json").is_file() for n in ("best", "last"))


def class_rows(task, rows: list[tuple[str, dict]]) -> dict[str, list[int]]:
    """Class -> the rows carrying it: a classification label, a multi-label label, a token tag other than O."""
    out: dict[str, list[int]] = {}
    for i, (where, rec) in enumerate(rows):
        label = task.row_label(rec, where)
        if task.type_name == "classification":
            classes = [label]
        elif task.type_name == "token_classification":
            classes = sorted({t for t in (label if isinstance(label, list) else list(label)) if t != "O"})
        else:
            classes = sorted(set(label))
        for c in classes:
            out.setdefault(str(c), []).append(i)
    return out


def sample_shots(task, rows: list[tuple[str, dict]], shots: int, seed: int, where: str) -> list[int]:
    """Indices of a seeded K-shot sample of ``rows`` (see the module docstring), in file order."""
    by_class = class_rows(task, rows)
    if task.type_name == "classification" and len(by_class) < 2:
        only = next(iter(by_class), "none")
        raise UserError(f"{where}: task '{task.name}' has a single label ({only!r}); a classifier needs at least two")
    if not by_class:
        raise UserError(f"{where}: task '{task.name}' has no labelled class to sample (every tag is O)")
    short = sorted((len(r), c) for c, r in by_class.items() if len(r) < shots)
    if short:
        n, c = short[0]
        raise UserError(f"--shots {shots}: class {c!r} of task '{task.name}' has only {n} row(s) in {where}"
                        + (f" ({len(short)} classes have fewer than {shots})" if len(short) > 1 else "")
                        + "; lower --shots or add rows")
    rng = random.Random(f"adapt-{seed}-{task.name}")
    order = list(range(len(rows)))
    rng.shuffle(order)
    rank = {r: k for k, r in enumerate(order)}
    chosen: set[int] = set()
    for c in sorted(by_class, key=lambda c: (len(by_class[c]), c)):  # rarest class first
        have = sum(1 for r in by_class[c] if r in chosen)
        if task.type_name == "classification":
            have = 0  # exactly K of each label (a row carries one)
        for r in sorted(by_class[c], key=rank.__getitem__):
            if have >= shots:
                break
            if r not in chosen:
                chosen.add(r)
                have += 1
    return sorted(chosen)


def holdout_split(task, rows: list[tuple[str, dict]], picked: list[int], seed: int) -> tuple[list[int], list[int]]:
    """(training rows, held-out rows) of a sample: about a quarter held out, and every class keeps at least one
    training row (a label the training rows lack could not be learnt, nor read in the held-out rows) — per label
    for classification (at least one of each label with two or more rows); none of a sample too small to split."""
    rng = random.Random(f"adapt-holdout-{seed}-{task.name}")
    if task.type_name == "classification":
        groups: dict[str, list[int]] = {}
        for i in picked:
            groups.setdefault(str(task.row_label(rows[i][1], rows[i][0])), []).append(i)
        held = []
        for g in groups.values():
            if len(g) >= 2:
                held += rng.sample(g, max(1, round(HOLDOUT * len(g))))
    else:
        sub = [rows[i] for i in picked]
        carried = {c: {picked[j] for j in r} for c, r in class_rows(task, sub).items()}
        classes_of: dict[int, list[str]] = {}
        for c, members in carried.items():
            for i in members:
                classes_of.setdefault(i, []).append(c)
        left = {c: len(m) for c, m in carried.items()}
        target = round(HOLDOUT * len(picked)) if len(picked) >= 4 else 0
        held = []
        for i in rng.sample(picked, len(picked)):
            if len(held) >= target:
                break
            if all(left[c] > 1 for c in classes_of.get(i, [])):  # every class it carries keeps a training row
                held.append(i)
                for c in classes_of.get(i, []):
                    left[c] -= 1
    held_set = set(held)
    return [i for i in picked if i not in held_set], sorted(held)


def write_rows(path: Path, rows: list[tuple[str, dict]], indices: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in indices:
            f.write(json.dumps(rows[i][1], ensure_ascii=False, default=str) + "\n")
    return path


def adapt(start: str | Path, task_file: str | Path, shots: int | None = None, seeds: int = 1,
          overrides: list[str] = (), output: str | None = None, overwrite: bool = False) -> AdaptResult:
    """Fine-tune a new task from ``shots`` examples per class on ``seeds`` draws; returns the summary (also
    written to ``adapt.json`` / ``adapt.md`` in the output folder)."""
    from polytask.data.features import sampled_rows, task_rows
    from polytask.evaluate.report import evaluate_checkpoint
    from polytask.predict import Predictor, checkpoint_dir
    from polytask.tasks import build_task
    from polytask.train.loop import train

    if shots is not None and shots < 1:
        raise UserError(f"--shots {shots}: give at least 1 example per class")
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: give at least 1")
    extra = read_yaml(task_file)
    unknown = sorted(set(extra) - {"tasks", "train", "model"})
    if unknown:
        raise UserError(f"{task_file}: unknown top-level key '{unknown[0]}'; a task file has tasks: and optionally "
                        "train: and model:")
    new = extra.get("tasks")
    if not isinstance(new, dict) or len(new) != 1:
        raise UserError(f"{task_file}: 'tasks' must hold exactly one task (the task to adapt to)")
    name, spec = next(iter(new.items()))
    if not isinstance(spec, dict):
        raise UserError(f"{task_file}: task '{name}' must be a mapping of its settings")
    folder = Path(task_file).resolve().parent
    spec = dict(spec)
    for k in ("train", "validation", "test", "corpus"):  # the task file's relative paths are relative to it
        if isinstance(spec.get(k), str) and not Path(spec[k]).is_absolute():
            here = Path(spec[k])
            spec[k] = str(here.resolve() if here.exists() else (folder / here).resolve())
    if is_checkpoint(start):
        ckpt = checkpoint_dir(start).resolve()
        base = copy.deepcopy(read_meta(ckpt)["config"])
        if name in base["tasks"]:
            raise UserError(f"{task_file}: task '{name}' already exists in {ckpt} (its tasks: "
                            f"{', '.join(base['tasks'])}); adapt gives a new task a new head — name it differently")
        model = base["model"]
        if isinstance(extra.get("model"), dict):
            unknown = sorted(set(extra["model"]) - {"max_length"})
            if unknown:
                raise UserError(f"{task_file}: model.{unknown[0]} cannot change when adapting from a run (only "
                                "model.max_length can); the model is the run's")
            model = {**model, **extra["model"]}
        start_from = {"base": str(ckpt), "old_tasks": [], "method": "none"}
    else:
        model = {**(extra.get("model") or {}), "encoder": str(start)}
        start_from = None
    train_cfg = copy.deepcopy(ADAPT_TRAIN)
    for k, v in (extra.get("train") or {}).items():
        train_cfg[k] = v
    train_cfg.setdefault("output_dir", f"runs/adapt-{name}")
    # the user's --set first; then each seed's own seed and folder (below) — validated once, before anything is
    # written, with the task's own data
    data = {"model": model, "tasks": {name: spec}, "train": train_cfg}
    for o in overrides:
        apply_override(data, o)
    if output:
        data["train"]["output_dir"] = output
    probe = load_config(data=copy.deepcopy(data))
    out = Path(probe.train.output_dir)
    task = build_task(name, probe.tasks[name])
    if task.type_name not in ("classification", "multilabel_classification", "token_classification"):
        raise NotSupportedError(f"{task_file}: polytask adapt learns classification, multilabel_classification and "
                                f"token_classification tasks from K examples per class; task '{name}' is "
                                f"{task.type_name}")
    source = f"the training data of task '{name}' ({spec.get('dataset') or spec.get('train')})"
    rows = task_rows(name, probe.tasks[name], "train")
    test = sampled_rows(task, "test")  # the rows the task's own config would score (max_eval_samples of them)
    if test is None:
        raise UserError(f"{task_file}: task '{name}' has no test split to score the adapted model on; give "
                        f"tasks.{name}.test")
    if not rows:
        raise UserError(f"{source} has no rows")
    first_seed = probe.train.seed
    samples = {}
    for s in range(first_seed, first_seed + seeds):  # every draw checked before the first training starts
        picked = sample_shots(task, rows, shots, s, source) if shots is not None else list(range(len(rows)))
        samples[s] = holdout_split(task, rows, picked, s)
    out.mkdir(parents=True, exist_ok=True)
    test_file = write_rows(out / "data" / "test.jsonl", test, list(range(len(test))))
    results = []
    for s, (fit, held) in samples.items():
        run = out / f"seed{s}"
        data_dir = run.parent / "data" / f"seed{s}"
        task_spec = {k: v for k, v in data["tasks"][name].items()
                     if k not in ("dataset", "max_train_samples", "max_eval_samples", "train", "validation", "test")}
        task_spec.update(train=str(write_rows(data_dir / "train.jsonl", rows, fit)), test=str(test_file))
        if held:
            task_spec["validation"] = str(write_rows(data_dir / "validation.jsonl", rows, held))
        tc = {**copy.deepcopy(data["train"]), "output_dir": str(run), "seed": s}
        if start_from:
            tc["continual"] = start_from
        config = load_config(data={"model": data["model"], "tasks": {name: task_spec}, "train": tc})
        begin = time.perf_counter()
        result = train(config, overwrite=overwrite)
        seconds = time.perf_counter() - begin
        if not result.is_main_process:
            continue
        adapted = Predictor(run / "best")
        scores = evaluate_checkpoint(adapted, "test")
        metric = adapted.tasks[name].main_metric  # chosen once the labels were fitted (span F1 or accuracy)
        results.append({"seed": s, "train_rows": len(fit), "heldout_rows": len(held), "steps": result.global_step,
                        "seconds": seconds, "metric": metric, "score": 100 * scores[name][metric],
                        "run": str(run)})
    summary = summarise(name, str(start), shots, results)
    write_json(out / "adapt.json", summary)
    (out / "adapt.md").write_text(markdown(summary), encoding="utf-8")
    return AdaptResult(out, summary)


def summarise(task: str, start: str, shots: int | None, results: list[dict[str, Any]]) -> dict[str, Any]:
    from polytask.compare.runner import mean_std

    mean, std = mean_std([r["score"] for r in results]) if results else (float("nan"), float("nan"))
    secs = mean_std([r["seconds"] for r in results])[0] if results else float("nan")
    return {"task": task, "start": start, "shots": shots, "seeds": [r["seed"] for r in results],
            "metric": results[0]["metric"] if results else None, "mean": mean, "std": std, "seconds": secs,
            "runs": results}


def markdown(s: dict[str, Any]) -> str:
    k = "all rows" if s["shots"] is None else f"{s['shots']} per class"
    lines = [f"# Few-shot adaptation: {s['task']}", "", f"Start: `{s['start']}`. Examples: {k}. Test split, "
             f"{s['metric']}.", "", "| seed | training rows | held-out rows | steps | seconds | test score |",
             "|---|---|---|---|---|---|"]
    for r in s["runs"]:
        lines.append(f"| {r['seed']} | {r['train_rows']} | {r['heldout_rows']} | {r['steps']} | {r['seconds']:.1f} | "
                     f"{r['score']:.2f} |")
    lines += ["", f"**{s['metric']}: {s['mean']:.2f} ± {s['std']:.2f}** over {len(s['runs'])} seed(s); "
              f"{s['seconds']:.1f} s per adaptation"]
    return "\n".join(lines) + "\n"
