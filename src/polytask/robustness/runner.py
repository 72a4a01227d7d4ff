"""``polytask robustness``: a trained model's test metrics, clean and under each noise of the suite.

For every task with the split, the examples are read as ``evaluate`` reads them, scored clean, then scored
again under each applicable noise (``noise.py``) at ``rate``. Per task the report gives the main metric
clean and under each noise, ``noisy`` (the mean over the applicable noises) and ``drop`` (clean − noisy,
also relative to clean). Writes ``robustness.json``, ``robustness.md`` and ``robustness.png``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from polytask.errors import UserError
from polytask.evaluate.runner import predict_task, score_task
from polytask.model.io import write_json
from polytask.plotting import plot_style, pyplot
from polytask.predict import Predictor
from polytask.robustness.noise import (
    NOISES,
    Units,
    applies,
    apply_noise,
    example_rng,
    is_cjk_text,
    noisy_text,
    realign_tags,
)
from polytask.tasks import Example, TaskType


def perturb(ex: Example, task: TaskType, noise: str, rate: float, seed: int, index: int) -> Example:
    """One example under one noise; tagging labels follow the units (module doc of ``noise``)."""
    return perturb_units(ex, task, noise, rate, seed, index)[0]


def perturb_units(ex: Example, task: TaskType, noise: str, rate: float, seed: int,
                  index: int) -> tuple[Example, list[int | None] | None]:
    """``perturb``, and for a tagging task the origin of each new unit (None for the other task types)."""
    rng = example_rng(seed, noise, index)
    if task.level != "token":
        pair = noisy_text(ex.text_pair, noise, rate, rng) if ex.text_pair else ex.text_pair
        return dataclasses.replace(ex, text=noisy_text(ex.text, noise, rate, rng), text_pair=pair), None
    words = isinstance(ex.text, list)
    units = Units.of(ex.text, " ") if words else Units.of(list(ex.text), "")
    noisy = apply_noise(units, noise, rate, rng, word_units=words)
    label = None
    if ex.label is not None:
        label = [fit_tag(t, task.labels) for t in realign_tags(list(ex.label), noisy)]
    text = noisy.items if words else "".join(noisy.items)
    return dataclasses.replace(ex, text=text, label=label), noisy.origin


def fit_tag(tag: str, known: list[str]) -> str:
    """A rewritten tag the model's vocabulary lacks (e.g. S-X where training only had B-X) becomes the
    closest one it has: S -> B, E -> I / M, else O."""
    if tag in known or not known:
        return tag
    for a, b in (("S", "B"), ("E", "I"), ("E", "M"), ("M", "I"), ("I", "M")):
        if tag.startswith(a) and (b + tag[1:]) in known:
            return b + tag[1:]
    return "O" if "O" in known else tag


def task_language(examples: list[Example]) -> bool:
    """True when most of the task's texts are Chinese."""
    texts = ["".join(e.text) if isinstance(e.text, list) else e.text for e in examples[:200]]
    return sum(is_cjk_text(t) for t in texts) * 2 > len(texts)


def text_kind(task: TaskType, examples: list[Example]) -> tuple[bool, str | None]:
    """What decides which noises apply to a task (``applies``): whether its text is Chinese, and for a tagging task
    whether it tags words or characters (None for the other types)."""
    tagged = None if task.level != "token" else ("words" if isinstance(examples[0].text, list) else "chars")
    return task_language(examples), tagged


def robustness(predictor: Predictor, split: str = "test", noises: list[str] | None = None, rate: float = 0.1,
               seed: int = 0, batch_size: int = 64, max_samples: int | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Clean and noisy metrics per task (see module doc)."""
    from polytask.data.features import prepare_task_data

    if not 0.0 < rate <= 1.0:
        raise UserError(f"--rate must be in (0, 1], got {rate}")
    unknown = [n for n in noises or [] if n not in NOISES]
    if unknown:
        raise UserError(f"unknown noise(s) {', '.join(unknown)}; choose from {', '.join(NOISES)}")
    noises = list(noises or NOISES)
    data = prepare_task_data(predictor.tasks, predictor.tokenizer, predictor.config.model.max_length,
                             splits=(split,), fit_labels=False)
    data = {n: d for n, d in data.items() if split in d.examples}
    if not data:
        raise UserError(f"no task of {predictor.path} has a {split} split")
    max_length, pad = predictor.config.model.max_length, predictor.tokenizer.pad_token_id or 0
    precision = predictor.config.train.precision
    out: dict[str, Any] = {}
    jobs = [(name, noise) for name in data for noise in [None, *noises]]
    bar = tqdm(total=len(jobs), desc="robustness", disable=not progress, dynamic_ncols=True)
    for name, d in data.items():
        task = d.task
        examples = d.examples[split][:max_samples] if max_samples else d.examples[split]
        chinese, tagged = text_kind(task, examples)
        entry: dict[str, Any] = {"metric": task.main_metric, "higher_is_better": task.higher_is_better,
                                 "examples": len(examples), "language": "zh" if chinese else "en",
                                 "noises": {}}
        for noise in [None, *noises]:
            bar.set_description(f"robustness: {name} {noise or 'clean'}")
            if noise is not None and not applies(noise, chinese, tagged):
                bar.update(1)
                continue
            batch = examples if noise is None else [perturb(e, task, noise, rate, seed, i)
                                                    for i, e in enumerate(examples)]
            feats = task.encode(batch, predictor.tokenizer, max_length)
            preds, loss_sum, loss_n = predict_task(predictor.model, task, feats, batch_size, pad,
                                                   predictor.device, precision)
            scores = score_task(task, batch, [preds[i] for i in range(len(batch))],
                                loss_sum / loss_n if loss_n else None)
            value = float(scores[task.main_metric])
            if noise is None:
                entry["clean"] = value
            else:
                entry["noises"][noise] = value
            bar.update(1)
        vals = list(entry["noises"].values())
        entry["noisy"] = sum(vals) / len(vals) if vals else float("nan")
        sign = 1 if task.higher_is_better else -1
        entry["drop"] = sign * (entry["clean"] - entry["noisy"])
        entry["relative_drop"] = entry["drop"] / abs(entry["clean"]) if entry["clean"] else float("nan")
        out[name] = entry
    bar.close()
    return {"checkpoint": str(predictor.path), "split": split, "rate": rate, "seed": seed, "noises": noises,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"), "tasks": out}


def markdown(result: dict[str, Any]) -> str:
    tasks = result["tasks"]
    used = [n for n in result["noises"] if any(n in e["noises"] for e in tasks.values())]
    lines = [f"# Robustness of {result['checkpoint']}", "",
             f"{result['split']} split; each noise hits a unit (a word, or a character of Chinese text) with "
             f"probability {result['rate']} (at least one per example), seed {result['seed']}. "
             "`noisy` is the mean over the noises that apply to the task; `drop` = clean − noisy "
             "(in points; positive = worse under noise).", "",
             "| task | metric | clean | noisy | drop | relative drop |", "|---|---|---|---|---|---|"]
    for name, e in tasks.items():
        lines.append(f"| {name} | {e['metric']} | {100 * e['clean']:.2f} | {100 * e['noisy']:.2f} | "
                     f"{100 * e['drop']:.2f} | {100 * e['relative_drop']:.1f}% |")
    lines += ["", "Per noise (" + ", ".join(f"`{n}`" for n in used) + "):", "",
              "| task | clean | " + " | ".join(used) + " |", "|---|---|" + "---|" * len(used)]
    for name, e in tasks.items():
        cells = [f"{100 * e['noises'][n]:.2f}" if n in e["noises"] else "n/a" for n in used]
        lines.append(f"| {name} | {100 * e['clean']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "![clean vs noisy](robustness.png)", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    tasks = result["tasks"]
    with plot_style(list(tasks)):
        plt = pyplot()
        used = [n for n in result["noises"] if any(n in e["noises"] for e in tasks.values())]
        series = ["clean", *used]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(series) * len(tasks) + 2), 4.2))
        width = 0.85 / len(series)
        cmap = plt.get_cmap("tab20")
        for j, s in enumerate(series):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(tasks))]
            ys = [100 * (e["clean"] if s == "clean" else e["noises"].get(s, float("nan"))) for e in tasks.values()]
            ax.bar(xs, ys, width, label=s, color="black" if s == "clean" else cmap(j % 20))
        ax.set_xticks(range(len(tasks)))
        ax.set_xticklabels([f"{t}\n({e['metric']})" for t, e in tasks.items()])
        ax.set_ylabel(f"{result['split']} metric × 100")
        ax.set_title(f"clean vs noisy (rate {result['rate']})")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(len(series), 5),
                  frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def write_outputs(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "robustness.json", "md": out_dir / "robustness.md", "png": out_dir / "robustness.png"}
    write_json(paths["json"], result)
    paths["md"].write_text(markdown(result), encoding="utf-8")
    plot(result, paths["png"])
    return paths
