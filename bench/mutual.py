"""Mutual learning: 2 peers learning from each other vs 2 independent peers, at the same budget.

For one example config, per seed: the example trained with ``train.mutual: {peers: 2, sharing_weight: W}``
(``--sync-every``), and the same with ``sharing_weight: 0`` — two independent models on the same batches,
the same steps. Per side: the test score of the best peer (chosen by validation, what ``best/`` holds) and of
the two peers' ensemble (averaged probabilities), per task and as the mean of main metrics; mean ± std over
seeds; whether the difference is beyond the seeds' spread. Cost: the wall time of each run; both hold two
models, so a run costs about two single-model trainings (``--single`` also times one plain run).

``ratio`` = the mutual best peer's mean score / the independent best peer's (mean over seeds).

    python bench/mutual.py --example atis --seeds 3
    python bench/mutual.py --example english3 --seeds 3
    python bench/mutual.py --quick          # atis, 1 seed: 32 examples/task, 32 tokens, 1 epoch
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from common import add_seed_args, example_config, machine, parser, ratio_line, seed_runs, setup_threads


def finished(run: Path) -> bool:
    state = run / "last" / "training_state" / "trainer_state.json"
    return (run / "peers").is_dir() and state.is_file() and json.loads(state.read_text())["finished"]


def test_scores(run: Path) -> dict:
    """Test metrics of the best peer and of the peers' ensemble."""
    import polytask
    from polytask.data.features import prepare_task_data
    from polytask.evaluate.report import evaluate_checkpoint
    from polytask.evaluate.runner import evaluate_split
    from polytask.mutual import PeerEnsemble, PeerModel

    best = polytask.load(run / "best")
    peers = [polytask.load(p) for p in sorted((run / "peers").iterdir())]
    ensemble = PeerEnsemble(PeerModel([p.model for p in peers]), best.tasks).eval()
    data = prepare_task_data(best.tasks, best.tokenizer, best.config.model.max_length, splits=("test",),
                             fit_labels=False)
    ens = evaluate_split(ensemble, data, "test", 64, best.tokenizer.pad_token_id or 0, best.device,
                         best.config.train.precision)
    own = evaluate_checkpoint(best, "test")
    main = {t: task.main_metric for t, task in best.tasks.items()}
    return {"best": {**{t: own[t][m] for t, m in main.items()}, "mean": own["mean"]},
            "ensemble": {**{t: ens[t][m] for t, m in main.items()}, "mean": ens["mean"]}, "metrics": main}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    add_seed_args(p, "bench-mutual")
    p.add_argument("--sharing-weight", type=float, default=1.0, help="the mutual side's sharing weight (1)")
    p.add_argument("--sync-every", type=int, default=1, help="the mutual side's sync_every (1)")
    p.add_argument("--single", action="store_true", help="also time one plain (single-model) run per seed")
    p.add_argument("--sides", default="mutual,independent",
                   help="which sides to train and score (default both; one side lets two processes share a seed's "
                        "runs; the table needs both)")
    args = p.parse_args()
    setup_threads(args.threads)
    import polytask
    from polytask.compare.runner import mean_std

    out, seeds, overrides = seed_runs(args, "bench-mutual")
    print(f"machine: {machine()}")
    print(f"example: {args.example}; 2 peers; mutual: sharing_weight {args.sharing_weight}, sync_every "
          f"{args.sync_every}; independent: sharing_weight 0")
    results: dict[str, list[dict]] = {"mutual": [], "independent": []}
    times: dict[str, list[float]] = {"mutual": [], "independent": [], "single": []}
    for seed in seeds:
        sides = {k: v for k, v in {"mutual": args.sharing_weight, "independent": 0.0}.items()
                 if k in args.sides.split(",")}
        for side, weight in sides.items():
            run = out / f"seed{seed}" / side
            if not finished(run) or args.quick:
                cfg = example_config(args.example, [*overrides, f"train.seed={seed}", "train.mutual.peers=2",
                                                    f"train.mutual.sharing_weight={weight}",
                                                    f"train.mutual.sync_every={args.sync_every}",
                                                    "train.mutual.save_peers=true"], run)
                start = time.perf_counter()
                polytask.train(cfg, overwrite=True)
                (run / "seconds.json").write_text(json.dumps(time.perf_counter() - start))
            times[side].append(json.loads((run / "seconds.json").read_text()))
            results[side].append(test_scores(run))
            print(f"seed {seed} {side}: best peer {100 * results[side][-1]['best']['mean']:.2f}, ensemble "
                  f"{100 * results[side][-1]['ensemble']['mean']:.2f} ({times[side][-1]:.0f} s)", flush=True)
        if args.single:
            start = time.perf_counter()
            polytask.train(example_config(args.example, [*overrides, f"train.seed={seed}"],
                                          out / f"seed{seed}" / "single"), overwrite=True)
            times["single"].append(time.perf_counter() - start)

    if not all(results.values()):
        print("one side only: no table (run again with both sides to print it from the finished runs)")
        return
    metrics = results["mutual"][0]["metrics"]
    print(f"\ntest split, {len(seeds)} seed(s), mean ± std over seeds\n")
    print("| task | metric | independent, best peer | mutual, best peer | independent, ensemble | mutual, ensemble |"
          " mutual − independent (best peer) |")
    print("|---|---|---|---|---|---|---|")
    for t in [*metrics, "mean"]:
        cells = []
        for kind in ("best", "ensemble"):
            for side in ("independent", "mutual"):
                m, s = mean_std([r[kind][t] for r in results[side]])
                cells.append(f"{100 * m:.2f} ± {100 * s:.2f}")
        diff = [a["best"][t] - b["best"][t] for a, b in zip(results["mutual"], results["independent"])]
        spread = max(mean_std([r["best"][t] for r in results[side]])[1] for side in results)
        verdict = "beyond the spread" if abs(statistics.mean(diff)) > spread and len(seeds) > 1 else "within the spread"
        print(f"| {t} | {metrics.get(t, 'mean of main metrics')} | " + " | ".join(cells)
              + f" | {100 * statistics.mean(diff):+.2f} ({verdict}) |")
    tm, ti = statistics.mean(times["mutual"]), statistics.mean(times["independent"])
    line = (f"\ncost: mutual {tm:.0f} s, independent {ti:.0f} s per run (2 peers each): "
            f"mutual/independent {tm / ti:.2f}x")
    if times["single"]:
        line += f"; one plain single-model run {statistics.mean(times['single']):.0f} s"
    print(line)
    ratios = [a["best"]["mean"] / b["best"]["mean"] for a, b in zip(results["mutual"], results["independent"])
              if b["best"]["mean"]]
    print(ratio_line(statistics.mean(ratios) if ratios else float("nan")))


if __name__ == "__main__":
    main()
