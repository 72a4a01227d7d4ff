"""The study's report: ``tune.md`` (best trial, Pareto front, every trial), PNG plots from Optuna's matplotlib
visualisations, and the best config(s) as YAML that ``polytask train`` runs directly."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any

import yaml

from polytask.tune.space import NOISE_OBJECTIVES, parse_space, set_key

SPLITS = ("train", "validation", "test", "distill_data")


def signed_mean(values: list[float], directions: list[str]) -> float:
    """The mean of the objectives with minimised ones negated (higher is better)."""
    return sum(v if d == "maximize" else -v for v, d in zip(values, directions)) / len(values)


def best_trials(study, directions: list[str]) -> list[Any]:
    """The best trial first: single objective, Optuna's best; pareto, the Pareto-optimal trials by their
    signed mean, best first."""
    if len(directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: -signed_mean(t.values, directions))


def best_yaml(config, source: dict[str, Any] | None, trial, header: str, fixed: dict[str, Any]) -> str:
    """The config as written (``source``) with the trial's values (and ``fixed``: what every trial set) set, data
    paths made absolute (they are read from the study folder) and the ``tune:`` section dropped."""
    data = copy.deepcopy(source) if source is not None else config.to_dict()
    data.pop("tune", None)
    for name, t in (data.get("tasks") or {}).items():
        for split in SPLITS:
            if isinstance(t, dict) and t.get(split) is not None and name in config.tasks:
                t[split] = getattr(config.tasks[name], split)
    for key, value in {**trial.params, **fixed}.items():
        set_key(data, key, value)
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def write_report(study, config, names: list[str], directions: list[str], out: Path,
                 source: dict[str, Any] | None, seconds: float, fixed: dict[str, Any]) -> tuple[list[Path], Path]:
    from optuna.trial import TrialState

    from polytask.evaluate.report import evaluate_checkpoint
    from polytask.predict import Predictor

    trials = study.trials
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    best = best_trials(study, directions)
    objective = ", ".join(f"{n} ({d})" for n, d in zip(names, directions))
    keys = [p.key for p in parse_space(config.tune.space)]

    written = []
    for i, t in enumerate(best if len(directions) > 1 else best[:1]):
        shown = "  ".join(f"{n} = {v:.4f}" for n, v in zip(names, t.values))
        path = out / "best.yaml" if i == 0 else out / "pareto" / f"trial-{t.number:03d}.yaml"
        header = f"# polytask tune: trial {t.number} of {out}, validation {shown}\n# train it: polytask train {path}\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(best_yaml(config, source, t, header, fixed), encoding="utf-8")
        written.append(path)

    # the best trial's checkpoint on the test split: does what validation chose hold on unseen data?
    test = {}
    run_dir = Path(best[0].user_attrs.get("run_dir", ""))
    if (run_dir / "best").is_dir():
        predictor = Predictor(run_dir / "best")
        results = evaluate_checkpoint(predictor, "test")
        test = {t: float(results[t][task.main_metric]) for t, task in predictor.tasks.items() if t in results}
        if test and "mean" in results:
            test["mean"] = float(results["mean"])
        del predictor
    plots = write_plots(study, names, directions, out)

    lines = [f"# polytask tune — {out.name}", "",
             f"Objective on the validation split: **{objective}**; sampler {type(study.sampler).__name__}, pruner "
             f"{type(study.pruner).__name__}. {len(trials)} trials: {counts[TrialState.COMPLETE]} complete, "
             f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed; {seconds:.0f} s in this run.", ""]
    b = best[0]
    lines += [f"## Best trial: {b.number}" + (" (of the Pareto front, by the mean of its objectives)"
                                              if len(directions) > 1 else ""), "",
              "| | value |", "|---|---|"]
    lines += [f"| validation {n} | {v:.4f} |" for n, v in zip(names, b.values)]
    lines += [f"| test {t} | {v:.4f} |" for t, v in test.items()]
    lines += [f"| `{k}` | {short(b.params[k])} |" for k in keys if k in b.params]
    lines += ["", f"Run folder: `{b.user_attrs.get('run_dir')}`. Train it again: `polytask train {written[0]}`.", ""]
    if len(directions) > 1:
        lines += ["## Pareto front", "", "| trial | " + " | ".join(names) + " | " + " | ".join(f"`{k}`" for k in keys)
                  + " |", "|" + "---|" * (1 + len(names) + len(keys))]
        for t in best:
            lines.append(f"| {t.number} | " + " | ".join(f"{v:.4f}" for v in t.values) + " | "
                         + " | ".join(short(t.params.get(k)) for k in keys) + " |")
        lines += ["", "Each Pareto-optimal trial's config: `pareto/trial-NNN.yaml` (the best one is `best.yaml`).", ""]
    noisy = config.tune.objective in NOISE_OBJECTIVES  # each trial's clean mean and drop beside them
    extra = [k for k in ("clean", "drop") if k not in names] if noisy else []
    lines += ["## Every trial", "", "| trial | state | " + " | ".join(names + extra) + " | "
              + " | ".join(f"`{k}`" for k in keys) + " | s |", "|" + "---|" * (3 + len(names + extra) + len(keys))]
    for t in trials:
        vals = t.values if t.values else [None] * len(names)
        if t.state == TrialState.PRUNED and t.intermediate_values:
            vals = [t.intermediate_values[max(t.intermediate_values)]]
        vals = list(vals) + [t.user_attrs.get("robustness", {}).get(k) for k in extra]
        lines.append(f"| {t.number} | {t.state.name.lower()} | " + " | ".join(short(v) for v in vals) + " | "
                     + " | ".join(short(t.params.get(k)) for k in keys) + f" | {t.user_attrs.get('seconds', '')} |")
    lines += ["", "(a pruned trial shows its objective at its last validation" + (
        ": the clean mean, which stands in for noisy while a trial trains; clean and drop are the validation "
        "rows scored by tune.robustness" if noisy else "") + ".)", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    report = out / "tune.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    (out / "tune_result.json").write_text(json.dumps({
        "objective": names, "directions": directions, "best_trial": b.number, "best_values": b.values,
        "best_params": b.params, "test": test, "best_config": str(written[0]),
        "pareto": [{"trial": t.number, "values": t.values, "params": t.params} for t in best]
        if len(directions) > 1 else None,
        "counts": {s.name.lower(): n for s, n in counts.items()}}, indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8")
    return written, report


def write_plots(study, names: list[str], directions: list[str], out: Path) -> list[Path]:
    """history.png, importances.png (with 2+ finished trials) and, for 2-3 objectives, pareto.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vm

    multi = len(directions) > 1
    target = (lambda t: signed_mean(t.values, directions)) if multi else None
    target_name = "mean of the objectives" if multi else names[0]
    written = []
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    jobs = [("history", lambda: vm.plot_optimization_history(study, target=target, target_name=target_name))]
    if len(complete) >= 2 and any(len({str(t.params.get(k)) for t in complete}) > 1 for k in complete[0].params):
        jobs.append(("importances", lambda: vm.plot_param_importances(study, target=target,
                                                                       target_name=target_name)))
    if multi and len(names) <= 3:
        jobs.append(("pareto", lambda: vm.plot_pareto_front(study, target_names=names)))
    for name, job in jobs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                ax = job()
            except (ValueError, RuntimeError) as e:  # e.g. importances of a parameter that never varied
                print(f"tune: no {name} plot ({e})")
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def short(v: Any) -> str:
    """A parameter or objective value as the report and the progress lines show it."""
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
