"""Summary, ``comparison.md`` / ``comparison.json`` and PNG plots of a ``polytask compare`` run."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from polytask.compare.runner import mean_std
from polytask.config import Config
from polytask.model.io import write_json
from polytask.plotting import cjk_font, needs_cjk, plot_style, pyplot
from polytask.precision import runtime_precision

KIND_NAMES = {"probe": "frozen probe (before fine-tuning)", "single": "single-task", "multi": "multi-task"}


def task_value(results: list[dict[str, Any]], kind: str, task: str, seed: int) -> float | None:
    for r in results:
        if r["kind"] == kind and r["seed"] == seed and (r["task"] in (task, None)) and task in r["metrics"]:
            return r["metrics"][task]["value"]
    return None


def delta_m(multi: dict[str, float], single: dict[str, float], higher: dict[str, bool]) -> float:
    """Maninis et al. 2019: mean over tasks of the sign-adjusted relative difference, in percent."""
    terms = [(1 if higher[t] else -1) * (multi[t] - single[t]) / abs(single[t]) for t in single
             if t in multi and single[t] != 0]
    return 100.0 * sum(terms) / len(terms) if terms else float("nan")


def verdict(multi: list[float], single: list[float], higher: bool) -> str:
    """'helped' / 'hurt' when the mean difference exceeds the seeds' spread, else 'no clear difference'."""
    if not multi or not single:
        return "n/a"
    (m, sm), (s, ss) = mean_std(multi), mean_std(single)
    diff = (m - s) if higher else (s - m)
    noise = math.sqrt(sm**2 + ss**2)
    if len(multi) > 1 and abs(diff) <= noise:
        return "no clear difference"
    return "helped" if diff > 0 else "hurt" if diff < 0 else "no clear difference"


def overall(dm: dict[str, Any]) -> str:
    """One sentence on Δm: better / worse only when it exceeds its spread over seeds."""
    clear = len(dm["per_seed"]) == 1 or abs(dm["mean"]) > dm["std"]
    if dm["mean"] < 0 and clear:
        return f"**Overall, multi-task is worse than single-task (Δm {dm['mean']:+.2f}%).**"
    if dm["mean"] > 0 and clear:
        return f"Overall, multi-task is better than single-task (Δm {dm['mean']:+.2f}%)."
    return (f"Overall, no clear difference: Δm {dm['mean']:+.2f}% is within its spread over seeds "
            f"(± {dm['std']:.2f}).")


def summarize(config: Config, results: list[dict[str, Any]], seeds: list[int],
              inference: dict[str, Any] | None) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    higher: dict[str, bool] = {}
    for name in config.tasks:
        entry: dict[str, Any] = {}
        for kind in ("probe", "single", "multi"):
            vals = [v for s in seeds if (v := task_value(results, kind, name, s)) is not None]
            if vals:
                m, sd = mean_std(vals)
                entry[kind] = {"mean": m, "std": sd, "values": vals}
        meta = next((r["metrics"][name] for r in results if name in r["metrics"]), None)
        if meta is None:
            continue
        entry["metric"] = meta["main"]
        entry["higher_is_better"] = higher[name] = meta["higher_is_better"]
        entry["split"] = next(r["split"][name] for r in results if name in r["split"])
        if "single" in entry and "multi" in entry:
            entry["multi_minus_single"] = entry["multi"]["mean"] - entry["single"]["mean"]
            entry["verdict"] = verdict(entry["multi"]["values"], entry["single"]["values"], higher[name])
        tasks[name] = entry
    per_seed = []
    for s in seeds:
        multi = {t: v for t in tasks if (v := task_value(results, "multi", t, s)) is not None}
        single = {t: v for t in tasks if (v := task_value(results, "single", t, s)) is not None}
        if multi and single:
            per_seed.append(delta_m(multi, single, higher))
    dm = None
    if per_seed:
        m, sd = mean_std(per_seed)
        dm = {"mean": m, "std": sd, "per_seed": per_seed}
    timing: dict[str, float] = {}
    for r in results:
        timing[r["kind"]] = timing.get(r["kind"], 0.0) + r["train_seconds"]
    params = {}
    for kind in ("single", "multi", "probe"):
        rs = [r for r in results if r["kind"] == kind and r["seed"] == seeds[0]]
        if rs:
            params[kind] = {"total": sum(r["parameters"] for r in rs),
                            "trainable": sum(r["trainable_parameters"] for r in rs), "models": len(rs)}
    return {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "seeds": seeds, "tasks": tasks, "delta_m": dm,
            "parameters": params, "inference": inference, "train_seconds": timing,
            "encoder": config.model.encoder, "precision": runtime_precision(config.train.precision, "cpu")}


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    return f"{pct(entry['mean'])} ± {pct(entry['std'])}" if len(entry["values"]) > 1 else pct(entry["mean"])


def markdown(summary: dict[str, Any], plots: list[str]) -> str:
    s = summary
    lines = ["# Multi-task vs single-task comparison", "",
             f"Encoder `{s['encoder']}`, precision {s['precision']}, seeds {', '.join(map(str, s['seeds']))}; "
             f"values are the test metric (×100) as mean ± standard deviation over seeds.", "",
             "| task | metric | split | frozen probe | single-task | multi-task | multi − single | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for name, e in s["tasks"].items():
        diff = f"{100 * e['multi_minus_single']:+.2f}" if "multi_minus_single" in e else "—"
        lines.append(f"| {name} | {e['metric']} | {e['split']} | {cell(e.get('probe'))} | {cell(e.get('single'))} "
                     f"| {cell(e.get('multi'))} | {diff} | {e.get('verdict', '—')} |")
    lines.append("")
    dm = s["delta_m"]
    if dm:
        lines += [f"**Δm = {dm['mean']:+.2f}% ± {dm['std']:.2f}** (multi-task vs single-task: mean over tasks of the "
                  "relative difference of the main metric, sign-adjusted so higher is better; Maninis et al. 2019; "
                  f"per seed: {', '.join(f'{x:+.2f}' for x in dm['per_seed'])}).", ""]
        hurt = [n for n, e in s["tasks"].items() if e.get("verdict") == "hurt"]
        helped = [n for n, e in s["tasks"].items() if e.get("verdict") == "helped"]
        if hurt:
            lines.append("**Multi-task is worse than single-task on: "
                         + ", ".join(f"{n} ({100 * s['tasks'][n]['multi_minus_single']:+.2f} pt)" for n in hurt)
                         + ".**")
        if helped:
            lines.append("Multi-task is better than single-task on: "
                         + ", ".join(f"{n} ({100 * s['tasks'][n]['multi_minus_single']:+.2f} pt)" for n in helped)
                         + ".")
        if not hurt and not helped:
            lines.append("Multi-task and single-task differ by less than the spread over seeds on every task.")
        lines.append(overall(dm))
        lines.append("")
    p = s["parameters"]
    if "single" in p and "multi" in p:
        lines += ["## Cost", "", "| | models | parameters | trained parameters |", "|---|---|---|---|",
                  f"| multi-task | {p['multi']['models']} | {p['multi']['total']:,} | {p['multi']['trainable']:,} |",
                  f"| single-task | {p['single']['models']} | {p['single']['total']:,} | "
                  f"{p['single']['trainable']:,} |", ""]
    inf = s["inference"]
    if inf:
        lines += [f"Inference, every task answered for the same {inf['inputs']} inputs (batch {inf['batch_size']}, "
                  f"{inf['threads']} threads, seed {s['seeds'][0]}'s models): multi-task "
                  f"{inf['multi_inputs_per_second']} inputs/s ({inf['multi_megabytes']} MB of weights) vs "
                  f"{inf['tasks']} single-task models {inf['single_inputs_per_second']} inputs/s "
                  f"({inf['single_megabytes']} MB): **{inf['speedup']}×**.", ""]
    if s["train_seconds"]:
        lines += ["Training time (all seeds): " + ", ".join(f"{KIND_NAMES[k]} {v / 60:.1f} min"
                                                         for k, v in s["train_seconds"].items()), ""]
    for plot in plots:
        lines += [f"![{plot}]({plot})", ""]
    lines.append(f"Created {s['created']}.")
    return "\n".join(lines) + "\n"


def plot_bars(summary: dict[str, Any], path: Path) -> None:
    with plot_style(summary["tasks"]):
        _plot_bars(summary, path)


def _plot_bars(summary: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    tasks = list(summary["tasks"])
    kinds = [k for k in ("probe", "single", "multi") if any(k in e for e in summary["tasks"].values())]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(tasks) + 1), 4.0))
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        xs = [i + (j - (len(kinds) - 1) / 2) * width for i in range(len(tasks))]
        means = [100 * summary["tasks"][t].get(kind, {}).get("mean", float("nan")) for t in tasks]
        stds = [100 * summary["tasks"][t].get(kind, {}).get("std", 0.0) for t in tasks]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=KIND_NAMES[kind])
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([f"{t}\n({summary['tasks'][t]['metric']})" for t in tasks])
    ax.set_ylabel("test metric × 100 (mean ± std over seeds)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(kinds), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(results: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    with plot_style(tasks):
        _plot_curves(results, tasks, path)


def _plot_curves(results: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    plt = pyplot()
    colours = {"probe": "tab:blue", "single": "tab:orange", "multi": "tab:green"}
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        labelled = set()
        for r in results:
            pts = r["curves"].get(task)
            if not pts:
                continue
            kind = r["kind"]
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3, alpha=0.7,
                    color=colours[kind], label=None if kind in labelled else KIND_NAMES[kind])
            labelled.add(kind)
        ax.set_title(task)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation metric × 100")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out: Path, summary: dict[str, Any], results: list[dict[str, Any]]) -> None:
    plots = []
    if summary["tasks"]:
        plot_bars(summary, out / "comparison_bars.png")
        plot_curves(results, list(summary["tasks"]), out / "comparison_curves.png")
        plots = ["comparison_bars.png", "comparison_curves.png"]
    write_json(out / "comparison.json", {**summary, "runs": [{k: v for k, v in r.items() if k != "config"}
                                                             for r in results]})
    md = markdown(summary, plots)
    if plots and needs_cjk(summary["tasks"]) and cjk_font() is None:
        md += ("\nThe plots show CJK task names as boxes: no font with CJK glyphs is installed "
               "(e.g. `apt install fonts-noto-cjk`).\n")
    (out / "comparison.md").write_text(md, encoding="utf-8")
