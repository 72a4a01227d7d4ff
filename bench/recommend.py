"""Recommendation on MovieLens-100k: polytask's text recommender against the recommenders a practitioner would use,
on the same per-user leave-last-out split, with full ranking (every movie the user has not rated is a candidate —
no sampled negatives, which Krichene & Rendle 2020 showed mislead).

Methods:
- ``popularity``: movies by training interactions;
- ``als``: implicit's AlternatingLeastSquares on the binary user x movie matrix of the training ratings;
- ``svd``: scikit-surprise's SVD on the training ratings (RMSE; its ranking is by predicted rating);
- ``retrieval``: polytask, the recipe's retrieval task alone (``examples/recipes/movies/config.yaml``);
- ``multitask``: polytask, the recipe as shipped: retrieval + rating regression + genre tagging in one model.

Reported on the test split (one row per user: their last rating): HR@10 (hit rate), NDCG@10, the same on the
cold-start slice (test movies with fewer than 5 training ratings — collaborative filtering cannot place them),
rating RMSE (svd, multitask) and training seconds; mean ± std over seeds. The baselines see the training ratings
only; polytask's user text at test time also names the validation movie when the user liked it (the text view
of "everything before the target"), one interaction more than the baselines' matrix holds.

The collaborative baselines are for this benchmark only, not dependencies of polytask::

    .venv/bin/python -m pip install implicit==0.7.3 scikit-surprise==1.1.5
    OMP_NUM_THREADS=1 .venv/bin/python bench/recommend.py --seeds 3          # the table in BENCHMARKS.md
    .venv/bin/python bench/recommend.py --quick                              # a tiny run that checks the script

A finished polytask run with the same config is reused (its scores are kept in ``result.json``, its ``best/``
checkpoint beside it). The last line is ``ratio: <polytask multitask NDCG@10 / the best collaborative NDCG@10>``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, keyed_result, machine, parser, scratch_dir, setup_threads  # noqa: E402

RECIPE = ROOT / "examples" / "recipes" / "movies" / "config.yaml"
BASELINES = ("popularity", "als", "svd")
POLYTASK = ("retrieval", "multitask")
RETRIEVAL_TASK = "next_movie"
RATING_TASK = "rating"
DEEP = 100  # rankings kept this deep: the cold-start slice is also scored at HR@100 (its movies rarely make a top 10)
RESULT_VERSION = 2  # part of a run's reuse key: results written before HR@100 was kept are recomputed


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=None, help="seeds per method (default 3; --quick: 1)")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {', '.join(BASELINES + POLYTASK)}")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for both polytask models (repeatable)")
    p.add_argument("--output", default=None, help="folder for the polytask runs (default runs/bench-recommend)")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    import recommend_baselines as cf

    from polytask.compare.runner import mean_std

    # --quick checks the script: one polytask model is enough (retrieval alone runs the same code, one task less)
    methods = (args.methods.split(",") if args.methods else
               list(BASELINES + (("multitask",) if args.quick else POLYTASK)))
    unknown = [m for m in methods if m not in BASELINES + POLYTASK]
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(BASELINES + POLYTASK)}")
    if args.quick:  # a check of the script: a baseline whose library is not installed is left out, and said so
        import importlib.util

        for m, module in (("als", "implicit"), ("svd", "surprise")):
            if m in methods and importlib.util.find_spec(module) is None:
                methods.remove(m)
                print(f"--quick: {m} left out ({module} is not installed: {cf.INSTALL})")
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    overrides = list(args.overrides)
    if args.quick:  # a few dozen rows, short inputs, one epoch: checks the script, measures nothing
        overrides = ["model.max_length=32", "train.epochs=1", "train.batch_size=8",
                     f"tasks.{RETRIEVAL_TASK}.max_train_samples=24", f"tasks.{RATING_TASK}.max_train_samples=24",
                     "tasks.genres.max_train_samples=24", "tasks.genres.max_eval_samples=8",
                     f"tasks.{RETRIEVAL_TASK}.max_eval_samples=16", f"tasks.{RATING_TASK}.max_eval_samples=16",
                     *overrides]
    out = Path(args.output) if args.output else (scratch_dir("bench-recommend-") if args.quick
                                                 else ROOT / "runs" / "bench-recommend")
    print(f"machine: {machine()}")
    data = cf.load_split("test")
    counts = cf.train_counts(data.train)
    rows = data.rows[:40] if args.quick else data.rows  # --quick: the first 40 users
    cold = sum(cf.cold_start_mask(rows, counts))
    print(f"movielens_100k test: {len(rows)} users, {len(data.items)} candidate movies, full ranking; cold-start "
          f"slice (movie with < {cf.COLD_START_BELOW} training ratings): {cold} rows; seeds {seeds}", flush=True)

    results: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for m in methods:
        for seed in ([0] if m == "popularity" else seeds):  # popularity has no randomness
            if m in BASELINES:
                res = baseline(cf, m, seed, rows, counts)
            else:
                res = polytask_run(cf, m, seed, out / m / f"seed{seed}", overrides, rows, counts)
            results[m].append(res)
            took = "reused" if res.get("reused") else f"{res['train_seconds']:.1f} s"
            rmse = f"  RMSE {res['rmse']:.4f}" if res.get("rmse") is not None else ""
            print(f"{m} seed {seed}: HR@10 {res['hr']:.4f}  NDCG@10 {res['ndcg']:.4f}  cold-start HR@10 "
                  f"{res['cold_hr']:.4f}  cold-start HR@{DEEP} {res['cold_hr_deep']:.4f}{rmse}  ({took})", flush=True)

    def cell(m: str, key: str, scale: float = 1.0, digits: int = 4) -> str:
        values = [r[key] * scale for r in results[m] if r.get(key) is not None]
        if not values:
            return "—"
        mean, std = mean_std(values)
        return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else "")

    print()
    print(f"| method | HR@10 | NDCG@10 | cold-start HR@10 | cold-start NDCG@10 | cold-start HR@{DEEP} | rating RMSE "
          "| training s |")
    print("|---|---|---|---|---|---|---|---|")
    for m in methods:
        print(f"| {m} | {cell(m, 'hr')} | {cell(m, 'ndcg')} | {cell(m, 'cold_hr')} | {cell(m, 'cold_ndcg')} | "
              f"{cell(m, 'cold_hr_deep')} | {cell(m, 'rmse')} | {cell(m, 'train_seconds', digits=1)} |")
    best_cf = max((sum(r["ndcg"] for r in results[m]) / len(results[m]) for m in methods if m in ("als", "svd",
                                                                                                  "popularity")),
                  default=float("nan"))
    ours = next((m for m in ("multitask", "retrieval") if m in methods), None)
    mine = sum(r["ndcg"] for r in results[ours]) / len(results[ours]) if ours else float("nan")
    print(f"ratio: {mine / best_cf if best_cf else float('nan'):.4f}")
    if args.quick and not args.output:
        shutil.rmtree(out, ignore_errors=True)
    return 0


def scores(cf, rankings: list[list[str]], rows, counts) -> dict[str, Any]:
    """HR@10 and NDCG@10 over every row and over the cold-start slice, and the slice's HR@100 (rankings [DEEP])."""
    ev = cf.evaluate_rankings(rankings, rows, counts, ks=(10, DEEP))
    return {"hr": ev["overall"]["hit_rate@10"], "ndcg": ev["overall"]["ndcg@10"],
            "cold_hr": ev["cold_start"].get("hit_rate@10", 0.0), "cold_ndcg": ev["cold_start"].get("ndcg@10", 0.0),
            "cold_hr_deep": ev["cold_start"].get(f"hit_rate@{DEEP}", 0.0)}


def baseline(cf, method: str, seed: int, rows, counts) -> dict[str, Any]:
    if method == "popularity":
        res = cf.popularity("test", k=DEEP)
    elif method == "als":
        res = cf.als("test", seed=seed, k=DEEP)
    else:
        res = cf.svd("test", seed=seed, k=DEEP)
    n = len(rows)
    out = {**scores(cf, res.rankings[:n], rows, counts), "train_seconds": res.train_seconds}
    if res.predictions is not None:
        out["rmse"] = cf.rmse(res.predictions[:n], rows)
    return out


def polytask_run(cf, method: str, seed: int, folder: Path, overrides: list[str], rows, counts) -> dict[str, Any]:
    """Train the recipe (``multitask``) or its retrieval task alone, score its rankings of the test rows like the
    baselines'; reuse a finished run of the same config."""
    from polytask.config import load_config
    from polytask.predict import Predictor
    from polytask.train.loop import train

    cfg = load_config(RECIPE, [*overrides, f"train.output_dir={folder}", "train.progress=false",
                               "train.tensorboard=false"])
    cfg.train.seed += seed  # seed 0 is the recipe's own (42), then 43, 44, ...
    if method == "retrieval":
        cfg.tasks = {RETRIEVAL_TASK: cfg.tasks[RETRIEVAL_TASK]}
        cfg.train.early_stopping.metric = f"{RETRIEVAL_TASK}.ndcg@10"
        cfg.validate()
    wanted = {"config": cfg.to_dict(), "users": len(rows), "version": RESULT_VERSION}

    def make() -> dict[str, Any]:
        start = time.perf_counter()
        result = train(cfg, overwrite=True)
        seconds = time.perf_counter() - start
        predictor = Predictor(result.best_dir)
        records = [{"user_text": r["user_text"], "item_text": r["item_text"], "seen": r["seen"]} for r in rows]
        tasks = [t for t in (RETRIEVAL_TASK, RATING_TASK) if t in predictor.tasks]
        task = predictor.tasks[RETRIEVAL_TASK]
        old_k, task.cfg.top_k = task.cfg.top_k, DEEP
        preds = predictor.predict(records, tasks=tasks, batch_size=64)
        task.cfg.top_k = old_k
        rankings = [[d["id"] for d in p[RETRIEVAL_TASK]["documents"]] for p in preds]
        out = {**scores(cf, rankings, rows, counts), "train_seconds": round(seconds, 1), "steps": result.global_step}
        if RATING_TASK in tasks:
            # ratings live on 1-5: a prediction outside is clipped, as surprise clips SVD's
            out["rmse"] = cf.rmse([min(5.0, max(1.0, p[RATING_TASK]["value"])) for p in preds], rows)
        shutil.rmtree(folder / "last", ignore_errors=True)  # best/ stays (~90 MB): another metric needs no retraining
        return out

    return keyed_result(folder, wanted, make)

if __name__ == "__main__":
    raise SystemExit(main())
