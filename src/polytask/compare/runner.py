"""``polytask compare``: does multi-task help or hurt these tasks?

For one config and several seeds it trains and evaluates, per seed:

- ``probe/<task>``: the encoder frozen, only that task's head trained — the encoder "before fine-tuning";
- ``single/<task>``: the config with only that task — one fine-tuned model per task;
- ``multi``: the config as written — one model for every task.

Every variant keeps the config's training settings (epochs, batch size, learning rates, sampling, ...);
only the task set, ``model.freeze`` (probe), ``train.seed`` and ``train.output_dir`` change. A probe's head
learns at ``head_lr`` (or ``lr``) unless ``probe_lr`` is given. Each finished variant writes
``result.json``; running compare again reuses every variant whose config is unchanged, so an interrupted
comparison continues where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from polytask.config import Config, upgrade_saved
from polytask.errors import UserError
from polytask.model.io import write_json


@dataclass
class Variant:
    kind: str  # probe | single | multi
    task: str | None  # None for multi
    seed: int
    dir: Path

    @property
    def label(self) -> str:
        return f"seed {self.seed} {self.kind}" + (f"/{self.task}" if self.task else "")


@dataclass
class CompareResult:
    output_dir: Path
    summary: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)


KINDS = ("probe", "single", "multi")


def variant_config(base: Config, kind: str, task: str | None, seed: int, out: Path,
                   probe_lr: float | None = None) -> Config:
    d = base.to_dict()
    if task is not None:
        d["tasks"] = {task: d["tasks"][task]}
        es = d["train"]["early_stopping"]
        if es["metric"] not in ("mean", "loss") and es["metric"].split(".", 1)[0] != task:
            es["metric"] = "mean"  # the config's metric names another task; one task's mean is its main metric
        adv = d["train"].get("adversarial")
        if adv and adv.get("tasks") is not None:  # adversarial training of listed tasks: only those in this model
            adv["tasks"] = [t for t in adv["tasks"] if t == task]
            if not adv["tasks"]:
                d["train"]["adversarial"] = {"method": "none"}
    if kind == "probe":
        d["model"]["freeze"] = "encoder"
        if probe_lr is not None:
            d["train"]["head_lr"] = probe_lr
    d["train"]["seed"] = seed
    d["train"]["output_dir"] = str(out)
    return Config.from_dict(d).validate()


def plan_variants(config: Config, seeds: list[int], out: Path, kinds=KINDS) -> list[Variant]:
    variants = []
    for seed in seeds:
        base = out / f"seed{seed}"
        for kind in kinds:
            if kind == "multi":
                variants.append(Variant("multi", None, seed, base / "multi"))
            else:
                variants += [Variant(kind, t, seed, base / kind / t) for t in config.tasks]
    return variants


def run_variant(v: Variant, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Train and evaluate one variant, or reuse its ``result.json`` when its config is unchanged."""
    from polytask.evaluate.report import evaluate_checkpoint
    from polytask.predict import Predictor
    from polytask.train.loop import train

    result_path = v.dir / "result.json"
    wanted = cfg.to_dict()
    if result_path.exists() and not force:
        try:
            old = json.loads(result_path.read_text(encoding="utf-8"))
            if same_config(old.get("config"), wanted):
                old["reused"] = True
                return old
        except (json.JSONDecodeError, OSError):
            pass  # a damaged result: train again
    start = time.perf_counter()
    res = train(cfg, overwrite=True)
    train_seconds = time.perf_counter() - start
    predictor = Predictor(res.best_dir)
    scores, splits = {}, {}
    for split in ("test", "validation"):  # test where the task has it, else validation (and say so)
        missing = [t for t in predictor.tasks if t not in scores]
        if not missing:
            break
        found = evaluate_checkpoint(predictor, split)
        for t in missing:
            if t in found:
                scores[t], splits[t] = found[t], split
    tasks = predictor.tasks
    out = {
        "kind": v.kind, "task": v.task, "seed": v.seed, "config": wanted,
        "metrics": {t: {"main": tasks[t].main_metric, "value": float(s[tasks[t].main_metric]),
                        "higher_is_better": tasks[t].higher_is_better,
                        "all": {k: float(x) for k, x in s.items() if isinstance(x, (int, float))}}
                    for t, s in scores.items()},
        "split": splits,
        "curves": read_curves(v.dir / "metrics.jsonl", {t: tasks[t].main_metric for t in tasks}),
        "train_seconds": round(train_seconds, 1), "steps": res.global_step,
        "parameters": sum(p.numel() for p in predictor.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in res.model.parameters() if p.requires_grad),
    }
    write_json(result_path, out)
    return out


def same_config(saved: Any, wanted: dict[str, Any]) -> bool:
    """Whether a finished run's saved config is ``wanted``: as saved, or once read by this version of polytask
    (a config written before an option existed reads with that option's default, which is what it trained with)."""
    if saved == wanted:
        return True
    try:
        return Config.from_dict(upgrade_saved(saved)).to_dict() == wanted
    except (UserError, TypeError, ValueError):
        return False


def read_curves(path: Path, main: dict[str, str]) -> dict[str, list[list[float]]]:
    """Per task, ``[epoch, main metric]`` of every validation in a run's metrics log."""
    curves: dict[str, list[list[float]]] = {t: [] for t in main}
    if not path.exists():
        return curves
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("type") != "eval":
            continue
        for t, m in main.items():
            if f"{t}.{m}" in rec:
                curves[t].append([rec.get("epoch", rec["step"]), rec[f"{t}.{m}"]])
    return curves


def compare(config: Config, seeds: int | list[int] = 3, output_dir: str | Path | None = None,
            kinds: tuple[str, ...] = KINDS, probe_lr: float | None = None, overwrite: bool = False,
            inference_samples: int = 256, progress: bool = True) -> CompareResult:
    """Run the comparison and write ``comparison.{md,json}`` and PNG plots into ``output_dir``."""
    import os

    from polytask.compare.report import summarize, write_outputs
    from polytask.errors import NotSupportedError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise NotSupportedError("compare runs its trainings one after another in one process; start it with "
                                "'polytask compare', not under 'accelerate launch' with several processes")
    if isinstance(seeds, int):
        if seeds < 1:
            raise UserError(f"--seeds must be at least 1, got {seeds}")
        seeds = [config.train.seed + i for i in range(seeds)]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise UserError(f"unknown comparison part(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(KINDS)}")
    if "multi" in kinds and len(config.tasks) < 2:
        raise UserError("compare needs a config with at least two tasks (it compares one multi-task model "
                        "with one model per task)")
    out = Path(output_dir) if output_dir else Path(str(config.train.output_dir).rstrip("/") + "-compare")
    if out.exists() and any(out.iterdir()) and not (out / "compare.json").exists():
        raise UserError(f"{out} exists and is not a comparison folder; choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", {"seeds": seeds, "kinds": list(kinds), "config": config.to_dict()})
    variants = plan_variants(config, seeds, out, kinds)
    configs = [variant_config(config, v.kind, v.task, v.seed, v.dir, probe_lr) for v in variants]
    results = []
    bar = tqdm(total=len(variants), desc="compare", position=0, disable=not progress, dynamic_ncols=True)
    for v, cfg in zip(variants, configs):
        bar.set_description(f"compare: {v.label}")
        res = run_variant(v, cfg, force=overwrite)
        shown = "  ".join(f"{t}={m['value'] * 100:.2f}" for t, m in res["metrics"].items())
        bar.write(f"{v.label}: {shown}" + ("  (reused)" if res.get("reused") else f"  ({res['train_seconds']:.0f} s)"))
        results.append(res)
        bar.update(1)
    bar.close()
    inference = None
    if "multi" in kinds and "single" in kinds and inference_samples > 0:
        from polytask.compare.cost import inference_cost

        first = seeds[0]
        multi_dir = next(v.dir for v in variants if v.kind == "multi" and v.seed == first) / "best"
        single_dirs = {v.task: v.dir / "best" for v in variants if v.kind == "single" and v.seed == first}
        inference = inference_cost(multi_dir, single_dirs, inference_samples)
    summary = summarize(config, results, seeds, inference)
    write_outputs(out, summary, results)
    return CompareResult(out, summary, results)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1)) if n > 1 else 0.0)
