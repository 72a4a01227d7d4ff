"""The affinity report: heatmaps, a table and a plain recommendation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polytask.model.io import write_json
from polytask.plotting import plot_style, pyplot


def _significant(cell: dict[str, Any]) -> int:
    """+1 / -1 when the mean is more than two standard errors from zero, else 0."""
    mean, err = cell["mean"], cell["stderr"]
    if cell["n"] < 2 or mean != mean:
        return 0
    if mean > 2 * err:
        return 1
    if mean < -2 * err:
        return -1
    return 0


def recommend(result: dict[str, Any]) -> list[str]:
    """Plain sentences: which pairs help each other, which task hurts which, and what to do about it."""
    tasks, look = result["tasks"], result["lookahead"]
    lines, hurts = [], []
    for i, a in enumerate(tasks):
        for b in tasks[i + 1:]:
            ab, ba = _significant(look[a][b]), _significant(look[b][a])
            if ab > 0 and ba > 0:
                lines.append(f"{a} and {b} help each other.")
            elif ab > 0 and ba <= 0:
                lines.append(f"{a} helps {b}" + (f", but {b} hurts {a}." if ba < 0 else f"; {b} does not clearly "
                                                                                       f"affect {a}."))
            elif ba > 0 and ab <= 0:
                lines.append(f"{b} helps {a}" + (f", but {a} hurts {b}." if ab < 0 else f"; {a} does not clearly "
                                                                                       f"affect {b}."))
            elif ab < 0 and ba < 0:
                lines.append(f"{a} and {b} hurt each other.")
            elif ab < 0:
                lines.append(f"{a} hurts {b}.")
            elif ba < 0:
                lines.append(f"{b} hurts {a}.")
            else:
                lines.append(f"{a} and {b}: no clear effect either way.")
            if ab < 0:
                hurts.append((a, b))
            if ba < 0:
                hurts.append((b, a))
    if hurts:
        pairs = "; ".join(f"{a} hurts {b}" for a, b in hurts)
        lines.append(f"Recommendation: {pairs} — consider separate models (or a separate head group) for those "
                     "tasks, or check with `polytask compare`.")
    else:
        lines.append("Recommendation: no task measurably hurts another; one shared model is a reasonable choice "
                     "(confirm the end metrics with `polytask compare`).")
    return lines


def markdown(result: dict[str, Any], lines: list[str]) -> str:
    tasks = result["tasks"]

    def table(key: str, scale: float, unit: str) -> list[str]:
        out = [f"| {unit} | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for a in tasks:
            cells = [f"{scale * result[key][a][b]['mean']:+.3f} ± {scale * result[key][a][b]['stderr']:.3f}"
                     for b in tasks]
            out.append(f"| **{a}** | " + " | ".join(cells) + " |")
        return out

    md = ["# Task affinity", "",
          f"{result['steps']} training steps, {result['sampled_steps']} of them measured (fraction "
          f"{result['fraction']}), lookahead learning rate {result['lookahead_lr']:g}.", "",
          "## Recommendation", "", *[f"- {x}" for x in lines], "",
          "## Lookahead affinity (Fifty et al. 2021)", "",
          "Row i, column j: `1 - L_j(after a step on task i) / L_j(before)`, × 1000, mean ± standard error over "
          "the measured steps. Positive: a step on i lowers j's loss.", "",
          *table("lookahead", 1000.0, "i → j (×10⁻³)"), "",
          "## Gradient cosine similarity", "",
          "Cosine between the tasks' gradients on the shared encoder.", "",
          *table("cosine", 1.0, "cos"), "", "![heatmaps](affinity_heatmap.png)", ""]
    plain, sampled = result.get("seconds_per_plain_step"), result.get("seconds_per_sampled_step")
    if plain and sampled:
        md.append(f"Cost: a measured step took {sampled:.3f} s against {plain:.3f} s for a plain step "
                  f"({sampled / plain:.2f}×).")
    return "\n".join(md) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    tasks = result["tasks"]
    with plot_style(tasks):
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(5.0 * 2, 0.6 * len(tasks) + 3.2))
        for ax, (key, title, scale) in zip(axes, (("lookahead", "lookahead affinity i → j (×10⁻³)", 1000.0),
                                                  ("cosine", "gradient cosine", 1.0))):
            m = [[scale * result[key][a][b]["mean"] for b in tasks] for a in tasks]
            lim = max(1e-12, max(abs(v) for row in m for v in row))
            im = ax.imshow(m, cmap="RdBu", vmin=-lim, vmax=lim)
            ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
            ax.set_yticks(range(len(tasks)), tasks)
            ax.set_title(title)
            for i in range(len(tasks)):
                for j in range(len(tasks)):
                    ax.text(j, i, f"{m[i][j]:.2f}", ha="center", va="center", fontsize=8)
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def write_report(result: dict[str, Any], out: str | Path) -> list[str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = recommend(result)
    plot(result, out / "affinity_heatmap.png")
    write_json(out / "affinity.json", {**result, "recommendation": lines})
    (out / "affinity.md").write_text(markdown(result, lines), encoding="utf-8")
    return lines
