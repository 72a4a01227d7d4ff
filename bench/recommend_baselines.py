"""Collaborative-filtering baselines on ``movielens_100k``: what a recommender that never reads text scores on the
same split, the same candidates and the same metric code as polytask.

- ``popularity``: every user gets the most-rated movies of the training split;
- ``als``: implicit ALS (Hu, Koren & Volinsky 2008, "Collaborative Filtering for Implicit Feedback Datasets"),
  library ``implicit``, on the binary user x movie matrix of the training ratings (every rating is an
  interaction, whatever its value — the same signal the retrieval task's positives carry);
- ``svd``: biased matrix factorisation (Funk SVD as in Koren, Bell & Volinsky 2009), library ``scikit-surprise``,
  fit to the training ratings' values: rating predictions (RMSE) and a ranking by predicted rating.

Protocol (one helper for all three): the models see the ``train`` rows only; each evaluation row (``validation``
or ``test``: the user's second-last or last rating) is one query whose one relevant movie is the row's; the
ranking is over all 1,682 movies but the row's ``seen`` ones (full ranking, no sampled negatives), scored by
``polytask.evaluate.ranking.ranking_metrics`` — overall, and on the cold-start slice (rows whose movie has fewer
than ``COLD_START_BELOW`` training ratings). ``implicit`` and ``scikit-surprise`` are benchmark-only, never
polytask dependencies: ``pip install implicit==0.7.3 scikit-surprise==1.1.5``.

An importable module (``bench/recommend.py`` builds on it) that also runs alone, with a table on the test split:

    python bench/recommend_baselines.py --seeds 3
    python bench/recommend_baselines.py --split validation --seeds 1 --threads 2
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the bench scripts run from a checkout, as common.py does

from polytask.catalog.datasets import DATASETS  # noqa: E402
from polytask.catalog.movielens import MovieLens100k  # noqa: E402
from polytask.evaluate.ranking import ranking_metrics  # noqa: E402

COLD_START_BELOW = 5  # a movie with fewer training ratings than this is "cold"
INSTALL = "pip install implicit==0.7.3 scikit-surprise==1.1.5"
Record = dict[str, Any]


def _library(module: str) -> Any:
    """Import a benchmark-only library, or exit with the command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise SystemExit(f"bench/recommend_baselines.py needs '{module}', a benchmark-only library; "
                         f"install it with: {INSTALL}") from None


@dataclass
class Split:
    """The training ratings and one evaluation split, as records; ``items`` is every movie id (the candidates),
    so a movie nobody rated in training can still be ranked."""

    train: list[Record]
    rows: list[Record]
    items: list[str]
    item_index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.item_index = {item: i for i, item in enumerate(self.items)}


@dataclass
class Result:
    """One baseline's output on one split: per evaluation row, the top-k movie ids (best first, ``seen`` movies
    left out); ``predictions`` are rating predictions aligned with the rows (svd only); seconds of fitting."""

    name: str
    rankings: list[list[str]]
    train_seconds: float
    predictions: list[float] | None = None


def load_split(split: str = "test", dataset: MovieLens100k | None = None) -> Split:
    """``dataset``'s training rows and ``split``'s rows (default: the built-in ``movielens_100k``)."""
    ds = dataset or DATASETS.get("movielens_100k")
    return Split(train=[r for _, r in ds.rows("train")], rows=[r for _, r in ds.rows(split)],
                 items=[r["item_id"] for _, r in ds.corpus()])


def train_counts(train: Sequence[Record]) -> Counter[str]:
    """Training ratings per movie id."""
    return Counter(r["item_id"] for r in train)


def cold_start_mask(split_rows: Sequence[Record], counts: Counter[str] | None = None,
                    below: int = COLD_START_BELOW) -> list[bool]:
    """Per evaluation row: does its movie have fewer than ``below`` training ratings? ``counts`` defaults to the
    built-in dataset's training counts."""
    if counts is None:
        counts = train_counts(load_split("test").train)
    return [counts[r["item_id"]] < below for r in split_rows]


def evaluate_rankings(rankings: Sequence[Sequence[str]], rows: Sequence[Record], counts: Counter[str],
                      ks: Sequence[int] = (10,), below: int = COLD_START_BELOW) -> dict[str, Any]:
    """``ranking_metrics`` (hit_rate@k = HR@k, ndcg@k, recall@k, mrr@k) over all rows and over the cold-start
    slice (``cold_start_mask``), with the slice's size. Each row's one relevant movie is its own ``item_id``.
    An empty slice has empty metrics."""
    relevant = [{r["item_id"]: 1.0} for r in rows]
    cold = cold_start_mask(rows, counts, below)
    pick = [i for i, c in enumerate(cold) if c]
    return {"overall": ranking_metrics(rankings, relevant, ks=ks),
            "cold_start": ranking_metrics([rankings[i] for i in pick], [relevant[i] for i in pick], ks=ks),
            "rows": len(rows), "cold_start_rows": len(pick)}


def rmse(predictions: Sequence[float], rows: Sequence[Record]) -> float:
    """Root mean squared error of rating predictions against the rows' ratings."""
    if len(predictions) != len(rows):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
    errors = np.asarray(predictions, dtype=np.float64) - np.asarray([r["rating"] for r in rows], dtype=np.float64)
    return float(np.sqrt(np.mean(errors ** 2)))


def top_k(scores: np.ndarray, seen: Sequence[str], data: Split, k: int) -> list[str]:
    """The ``k`` best movies by ``scores`` ([n_items], higher is better) but the ``seen`` ones; ties go to the
    lower index (the stable sort), so a ranking never depends on chance."""
    scores = scores.astype(np.float64, copy=True)
    scores[[data.item_index[i] for i in seen]] = -np.inf
    best = np.argsort(-scores, kind="stable")[:k]
    return [data.items[i] for i in best if scores[i] > -np.inf]


def _rank_users(user_scores: dict[str, np.ndarray], data: Split, k: int) -> list[list[str]]:
    return [top_k(user_scores[r["user_id"]], r["seen"], data, k) for r in data.rows]


def popularity(split: str = "test", k: int = 10, dataset: MovieLens100k | None = None) -> Result:
    """Rank movies by training interaction count, the same list for every user (less what each has seen)."""
    data = load_split(split, dataset)
    start = time.perf_counter()
    counts = train_counts(data.train)
    scores = np.array([counts[i] for i in data.items], dtype=np.float64)  # [n_items]
    seconds = time.perf_counter() - start
    return Result("popularity", _rank_users({r["user_id"]: scores for r in data.rows}, data, k), seconds)


def _interaction_matrix(data: Split) -> tuple[Any, dict[str, int]]:
    """Binary CSR matrix [n_users, n_items] of the training ratings, and each user's row."""
    from scipy.sparse import csr_matrix

    users = {u: n for n, u in enumerate(sorted({r["user_id"] for r in data.train}))}
    rows = [users[r["user_id"]] for r in data.train]
    cols = [data.item_index[r["item_id"]] for r in data.train]
    matrix = csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(users), len(data.items)))
    return matrix, users


def als(split: str = "test", factors: int = 64, iterations: int = 20, regularization: float = 0.05,
        alpha: float = 1.0, seed: int = 0, threads: int = 1, k: int = 10,
        dataset: MovieLens100k | None = None) -> Result:
    """Implicit ALS on the binary training matrix, CPU, ``threads`` threads; a movie's score is the dot product
    of user and movie factors.

    ``alpha`` scales the confidence of an observed interaction (confidence = 1 + alpha): 1 (implicit's default)
    had the best mean validation NDCG@10 of 1, 5, 10, 20 and 40 over seeds 0 and 1 (0.062; 1 to 10 lie within
    the seeds' spread, 20 and 40 fall to 0.058 and 0.053), with factors 64, 20 iterations, regularization 0.05."""
    implicit_als = _library("implicit.als")
    from threadpoolctl import threadpool_limits  # a dependency of implicit

    data = load_split(split, dataset)
    matrix, users = _interaction_matrix(data)
    model = implicit_als.AlternatingLeastSquares(factors=factors, iterations=iterations,
                                                 regularization=regularization, alpha=alpha, use_gpu=False,
                                                 num_threads=threads, random_state=seed)
    # implicit warns when BLAS runs its own threads under its per-user threads; keep BLAS to one
    with threadpool_limits(1, "blas"):
        start = time.perf_counter()
        model.fit(matrix, show_progress=False)
        seconds = time.perf_counter() - start
    scores = np.asarray(model.user_factors) @ np.asarray(model.item_factors).T  # [n_users, n_items]
    no_history = np.zeros(len(data.items))  # a user without training ratings (never on MovieLens): all ties
    user_scores = {r["user_id"]: scores[users[r["user_id"]]] if r["user_id"] in users else no_history
                   for r in data.rows}
    return Result("als", _rank_users(user_scores, data, k), seconds)


def svd(split: str = "test", seed: int = 0, k: int = 10, dataset: MovieLens100k | None = None,
        **params: Any) -> Result:
    """surprise's ``SVD`` (biased MF by SGD; its defaults: 100 factors, 20 epochs, lr 0.005, reg 0.02, or
    ``params``) fit to the training ratings.

    ``predictions``: ``SVD.predict`` for each evaluation row (clipped to 1-5, surprise's default) -> RMSE. The
    ranking scores every movie with the same estimate unclipped (``svd_scores``): clipped, dozens of movies
    would tie at 5."""
    surprise = _library("surprise")

    data = load_split(split, dataset)
    # Dataset.construct_trainset takes (user, item, rating, timestamp) tuples: no pandas DataFrame needed
    trainset = surprise.Dataset(surprise.Reader(rating_scale=(1, 5))).construct_trainset(
        [(r["user_id"], r["item_id"], r["rating"], None) for r in data.train])
    model = surprise.SVD(random_state=seed, **params)
    start = time.perf_counter()
    model.fit(trainset)
    seconds = time.perf_counter() - start

    user_scores = svd_scores(model, trainset, data.items, {r["user_id"] for r in data.rows})
    predictions = [model.predict(r["user_id"], r["item_id"]).est for r in data.rows]
    return Result("svd", _rank_users(user_scores, data, k), seconds, predictions)


def svd_scores(model: Any, trainset: Any, items: Sequence[str], users: set[str]) -> dict[str, np.ndarray]:
    """Per user, a fitted ``surprise.SVD``'s unclipped estimate for every movie of ``items`` ([n_items]):
    ``mu + b_u + b_i + q_i . p_u``, with ``b_i`` and ``q_i`` 0 for a movie absent from training, as surprise
    itself estimates it. One matrix product per user instead of 1,682 ``predict`` calls."""
    column = {item: n for n, item in enumerate(items)}
    bi, qi = np.zeros(len(items)), np.zeros((len(items), model.qi.shape[1]))  # [n_items], [n_items, factors]
    for inner in trainset.all_items():
        bi[column[trainset.to_raw_iid(inner)]] = model.bi[inner]
        qi[column[trainset.to_raw_iid(inner)]] = model.qi[inner]
    out = {}
    for user in users:
        try:
            inner = trainset.to_inner_uid(user)
        except ValueError:  # no training rating (never on MovieLens, where each user keeps 18+): mu + b_i
            out[user] = trainset.global_mean + bi
            continue
        out[user] = trainset.global_mean + model.bu[inner] + bi + qi @ model.pu[inner]  # [n_items]
    return out


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Collaborative-filtering baselines on movielens_100k (full ranking).")
    p.add_argument("--split", choices=("validation", "test"), default="test")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...) for ALS and SVD (default 3)")
    p.add_argument("--k", type=int, default=10, help="ranking cut-off (default 10)")
    p.add_argument("--threads", type=int, default=1, help="ALS threads (default 1)")
    args = p.parse_args(argv)

    data = load_split(args.split)
    counts = train_counts(data.train)
    print(f"movielens_100k {args.split}: {len(data.rows)} rows, {len(data.items)} candidate movies, "
          f"{len(data.train)} training ratings; cold start (< {COLD_START_BELOW} training ratings): "
          f"{sum(cold_start_mask(data.rows, counts))} rows")
    runs: dict[str, list[Result]] = {"popularity": [popularity(args.split, args.k)]}  # deterministic: one run
    runs["als"] = [als(args.split, seed=s, threads=args.threads, k=args.k) for s in range(args.seeds)]
    runs["svd"] = [svd(args.split, seed=s, k=args.k) for s in range(args.seeds)]

    hr, ndcg = f"hit_rate@{args.k}", f"ndcg@{args.k}"
    header = ["method", f"HR@{args.k}", f"NDCG@{args.k}", f"cold HR@{args.k}", f"cold NDCG@{args.k}", "RMSE",
              "train s", "seeds"]
    table = [header]
    for name, results in runs.items():
        scored = [evaluate_rankings(r.rankings, data.rows, counts, ks=(args.k,)) for r in results]
        errors = [rmse(r.predictions, data.rows) for r in results if r.predictions is not None]
        table.append([name, _mean_std([s["overall"][hr] for s in scored]),
                      _mean_std([s["overall"][ndcg] for s in scored]),
                      _mean_std([s["cold_start"].get(hr, math.nan) for s in scored]),
                      _mean_std([s["cold_start"].get(ndcg, math.nan) for s in scored]),
                      _mean_std(errors) if errors else "-",
                      f"{statistics.mean(r.train_seconds for r in results):.2f}", str(len(results))])
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
