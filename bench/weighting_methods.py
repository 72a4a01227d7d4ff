"""Quality of every loss-weighting / gradient method: Δm vs single-task models, mean ± std over seeds.

For one example config, on a reduced budget (the first ``--train-samples`` training examples of each task,
``--eval-samples`` validation and test examples, ``--epochs`` epochs), per seed it trains:

- one single-task model per task (the baseline of Δm; the same for every method), and
- one multi-task model per method, ``train.sampling: all_tasks`` for every method (the gradient methods need
  every task's loss at each step; using it for static weighting too keeps the comparison about weighting).

Δm (Maninis et al. 2019) is the mean over tasks of the sign-adjusted relative test-set difference to the
single-task model of the same seed, in percent. ``vs static`` is each method's Δm minus static weighting's,
paired by seed (same data order and initialisation), mean ± std over seeds: a method beats static only when
that margin exceeds its spread. ``s/step`` is training seconds per optimizer step of the multi-task runs (a
rough guide on this shared machine; ``bench/weighting_overhead.py`` measures the overhead side by side).

Every finished run keeps its ``result.json`` under ``--output``; running again reuses the runs whose config
is unchanged, so an interrupted benchmark continues where it stopped.

    python bench/weighting_methods.py --example english3 --seeds 3
    python bench/weighting_methods.py --example atis --seeds 3
    python bench/weighting_methods.py --quick            # atis, static + pcgrad, 1 seed: 16 examples/task, 32 tokens
"""

from __future__ import annotations

import json
import math
import shutil
import time

from common import add_budget_args, budget, machine, parser, ratio_line, setup_threads


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--example", default=None, help="example config (default english3; --quick: atis)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: every registered one)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each run's best/ and last/ folders (default: delete them once scored)")
    add_budget_args(p, "bench-weighting")
    args = p.parse_args()
    setup_threads(args.threads)
    from polytask.compare.report import delta_m
    from polytask.compare.runner import Variant, mean_std, run_variant, variant_config
    from polytask.weighting import WEIGHTINGS

    example = args.example or ("atis" if args.quick else "english3")
    names = sorted(WEIGHTINGS, key=lambda n: (n != "static", n))
    methods = args.methods.split(",") if args.methods else (["static", "pcgrad"] if args.quick else names)
    for m in methods:
        WEIGHTINGS.get(m, where="--methods")
    if "static" not in methods:
        methods.insert(0, "static")
    out, overrides, base = budget(args, example, "bench-weighting", ["train.sampling=all_tasks"])
    train_n, eval_n, seeds_n = args.train_samples, args.eval_samples, args.seeds
    seeds = [base.train.seed + i for i in range(seeds_n)]
    tasks = list(base.tasks)
    print(f"machine: {machine()}")
    print(f"{example}: tasks {', '.join(tasks)}; {train_n} training / {eval_n} test examples per task, "
          f"{base.train.epochs} epochs, batch {base.train.batch_size}, sampling all_tasks, seeds {seeds}")
    print(f"methods: {', '.join(methods)}")

    def run(kind: str, task: str | None, seed: int, method: str | None) -> dict:
        folder = out / f"seed{seed}" / (f"single/{task}" if kind == "single" else f"multi-{method}")
        cfg = variant_config(base, kind, task, seed, folder)
        if method is not None:
            d = cfg.to_dict()
            d["train"]["weighting"] = {"method": method}
            cfg = type(cfg).from_dict(d).validate()
        start = time.perf_counter()
        res = run_variant(Variant(kind, task, seed, folder), cfg)
        if not args.keep_checkpoints:  # ~250 MB per run; the scores are in result.json
            for sub in ("best", "last"):
                shutil.rmtree(folder / sub, ignore_errors=True)
        shown = "  ".join(f"{t}={m['value'] * 100:.2f}" for t, m in res["metrics"].items())
        took = "reused" if res.get("reused") else f"{time.perf_counter() - start:.0f} s"
        print(f"seed {seed} {kind} {task or method}: {shown}  ({took})", flush=True)
        return res

    single: dict[int, dict[str, float]] = {}
    higher: dict[str, bool] = {}
    for seed in seeds:
        single[seed] = {}
        for t in tasks:
            res = run("single", t, seed, None)
            single[seed][t] = res["metrics"][t]["value"]
            higher[t] = res["metrics"][t]["higher_is_better"]
    multi: dict[str, dict[int, dict[str, float]]] = {m: {} for m in methods}
    step_time: dict[str, list[float]] = {m: [] for m in methods}
    for seed in seeds:  # seeds outermost: an interrupted run still has every method on the first seeds
        for m in methods:
            res = run("multi", None, seed, m)
            multi[m][seed] = {t: res["metrics"][t]["value"] for t in tasks}
            step_time[m].append(res["train_seconds"] / max(res["steps"], 1))

    rows = []
    for m in methods:
        dms = [delta_m(multi[m][s], single[s], higher) for s in seeds]
        margin = [dms[i] - delta_m(multi["static"][s], single[s], higher) for i, s in enumerate(seeds)]
        rows.append({"method": m, "delta_m": mean_std(dms), "delta_m_per_seed": dms, "vs_static": mean_std(margin),
                     "tasks": {t: mean_std([multi[m][s][t] * 100 for s in seeds]) for t in tasks},
                     "s_per_step": sum(step_time[m]) / len(step_time[m])})
    single_row = {t: mean_std([single[s][t] * 100 for s in seeds]) for t in tasks}
    print()
    print("| method | " + " | ".join(tasks) + " | Δm % | vs static | s/step |")
    print("|---" * (len(tasks) + 4) + "|")
    print("| single-task | " + " | ".join(f"{v[0]:.2f} ± {v[1]:.2f}" for v in single_row.values()) + " | | | |")
    for r in rows:
        cells = " | ".join(f"{r['tasks'][t][0]:.2f} ± {r['tasks'][t][1]:.2f}" for t in tasks)
        vs = "—" if r["method"] == "static" else f"{r['vs_static'][0]:+.2f} ± {r['vs_static'][1]:.2f}"
        print(f"| {r['method']} | {cells} | {r['delta_m'][0]:+.2f} ± {r['delta_m'][1]:.2f} | {vs} | "
              f"{r['s_per_step']:.2f} |")
    best = max(rows, key=lambda r: r["delta_m"][0])
    mean, std = best["vs_static"]
    clear = len(seeds) > 1 and abs(mean) > std
    print()
    if best["method"] == "static":
        print("best: static weighting (no method has a higher mean Δm)")
    else:
        print(f"best: {best['method']}, Δm {best['delta_m'][0]:+.2f}% vs static's "
              f"{next(r for r in rows if r['method'] == 'static')['delta_m'][0]:+.2f}%: margin {mean:+.2f} ± "
              f"{std:.2f} over seeds — " + ("larger than its spread" if clear else "within seed noise"))
    (out / "weighting_methods.json").write_text(json.dumps(
        {"example": example, "seeds": seeds, "train_samples": train_n, "eval_samples": eval_n,
         "single": single_row, "rows": rows}, indent=2), encoding="utf-8")
    # the run's one number: static's step time over the slowest method's (see weighting_overhead.py for the
    # side-by-side measurement this only approximates)
    static_t = next(r["s_per_step"] for r in rows if r["method"] == "static")
    slowest = max(r["s_per_step"] for r in rows)
    if args.quick and not args.output:  # a quick run's fresh temporary folder
        shutil.rmtree(out, ignore_errors=True)
    print(ratio_line(static_t / slowest if slowest > 0 and math.isfinite(slowest) else float("nan")))


if __name__ == "__main__":
    main()
