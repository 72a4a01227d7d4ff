"""``MODEL_CARD.md`` in the Hugging Face model-card layout (YAML metadata with a ``model-index``, then prose
sections), written by ``polytask evaluate`` beside its report and by ``polytask export`` beside the model."""

from __future__ import annotations

from typing import Any

import yaml

from polytask.version import __version__

PIPELINE = {"classification": "text-classification", "multilabel_classification": "text-classification",
            "token_classification": "token-classification", "regression": "text-classification"}


def _source(cfg) -> str:
    """Where a task's data came from: its built-in dataset, else its training file's name."""
    if cfg.dataset:
        return cfg.dataset
    from pathlib import Path

    return Path(cfg.train).name if cfg.train else "—"


def _labels(task) -> str:
    if task.level != "token" and task.type_name == "regression":
        return "a real number"
    shown = ", ".join(f"`{lab}`" for lab in task.labels[:12])
    return f"{len(task.labels)}: {shown}" + (", …" if len(task.labels) > 12 else "")


def model_card(config, tasks: dict[str, Any], results: dict[str, dict[str, Any] | None], artefact: str = "pytorch",
               license: str | None = None, extra: list[str] | None = None, name: str | None = None) -> str:
    """The card's text. ``results``: split -> ``evaluate``'s results on it (per task, with ``mean``)."""
    results = {split: r for split, r in results.items() if r}
    name = name or config.train.output_dir.rstrip("/").split("/")[-1] or "polytask-model"
    index = []
    for split, r in results.items():
        for t, task in tasks.items():
            if t not in r:
                continue
            cfg = config.tasks[t]
            index.append({"task": {"type": PIPELINE.get(task.type_name, "text-classification"), "name": t},
                          "dataset": {"name": _source(cfg), "type": _source(cfg), "split": split},
                          "metrics": [{"type": m, "value": round(float(r[t][m]), 4), "name": f"{t} {m}"}
                                      for m in task.metric_names if isinstance(r[t].get(m), (int, float))]})
    meta: dict[str, Any] = {
        "library_name": "polytask",
        "license": license or "unknown",
        "base_model": config.model.encoder,
        "tags": ["polytask", "multi-task", *sorted({PIPELINE.get(t.type_name, "text-classification")
                                                   for t in tasks.values()})],
        "datasets": sorted({_source(config.tasks[t]) for t in tasks}),
        "pipeline_tag": PIPELINE.get(next(iter(tasks.values())).type_name, "text-classification"),
    }
    if index:
        meta["model-index"] = [{"name": name, "results": index}]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    tr, m = config.train, config.model
    lines = ["---", front, "---", "", f"# {name}", "",
             f"A multi-task model trained with polytask {__version__}: one shared `{m.encoder}` encoder with a head "
             f"per task ({len(tasks)} tasks). One encoder pass answers every task that reads the same input. "
             f"Artefact: {artefact}.", "",
             "## Tasks and labels", "", "| task | type | input column(s) | labels |", "|---|---|---|---|"]
    for t, task in tasks.items():
        cfg = config.tasks[t]
        cols = f"`{cfg.text}`" + (f" + `{cfg.text_pair}`" if cfg.text_pair else "")
        lines.append(f"| {t} | {task.type_name} | {cols} | {_labels(task)} |")
    lines += ["", "## Training data", "", "| task | source | training rows used |", "|---|---|---|"]
    for t in tasks:
        cfg = config.tasks[t]
        lines.append(f"| {t} | {_source(cfg)} | {cfg.max_train_samples or 'all'} |")
    lines += ["", "## Evaluation results", ""]
    if not results:
        lines.append("Not evaluated yet: run `polytask evaluate RUN --split test`.")
    for split, r in results.items():
        lines += [f"{split} split:", "", "| task | metric | value |", "|---|---|---|"]
        for t, task in tasks.items():
            if t in r:
                lines.append(f"| {t} | {task.main_metric} (main) | {100 * float(r[t][task.main_metric]):.2f} |")
                for metric in task.metric_names:
                    if metric != task.main_metric and isinstance(r[t].get(metric), (int, float)):
                        lines.append(f"| {t} | {metric} | {100 * float(r[t][metric]):.2f} |")
        if "mean" in r:
            lines.append(f"| **mean of main metrics** | | {100 * float(r['mean']):.2f} |")
        lines.append("")
    peft = f"{m.peft.method} ({m.peft.sharing})" if m.peft.enabled else "none (full fine-tuning)"
    lines += ["## Training procedure", "",
              f"- encoder `{m.encoder}`, max length {m.max_length} tokens, pooling `{m.pooling}`, freeze "
              f"`{m.freeze}`, PEFT: {peft}",
              f"- {tr.epochs} epoch(s), batch {tr.batch_size}, lr {tr.lr}, precision `{tr.precision}`, sampling "
              f"`{tr.sampling}`, weighting `{tr.weighting.method}`, seed {tr.seed}", ""]
    if extra:
        lines += ["## Export", "", *extra, ""]
    lines += ["## How to use", "", "```python", "import polytask", "",
              'model = polytask.load("PATH")' + ('  # the export folder: polytask.load(..., backend="onnx")'
                                                 if artefact.startswith("onnx") else ""),
              'model.predict(["your text"])', "```", "",
              "```bash", "polytask predict PATH --text 'your text'" + (" --backend onnx" if artefact.startswith("onnx")
                                                                        else ""),
              "polytask serve PATH --port 8000" + (" --backend onnx" if artefact.startswith("onnx") else ""), "```",
              "", "## Limitations", "",
              f"- Inputs longer than {m.max_length} tokens are truncated; token tags past the limit are not predicted.",
              "- Scores hold for the data and splits above; other domains, languages and label sets are not measured.",
              "- Labels are those seen in training; a multi-label threshold or class imbalance may need tuning for "
              "new data.", ""]
    if config.train.meta.enabled:
        lines.append("- This model was meta-learned: its task heads are untrained; learn a task with `polytask adapt`.")
        lines.append("")
    lines += ["## Licence", "",
              f"Licence of this model: {license or 'unknown (set it with `--license`)'}. It also inherits the terms "
              f"of the `{m.encoder}` encoder and of the training data listed above; check them before "
              "redistributing.", ""]
    return "\n".join(lines)
