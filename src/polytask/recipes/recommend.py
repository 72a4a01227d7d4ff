"""Recommendation with a trained model's retrieval task: the best ``k`` documents (movies, products, articles)
of its corpus for a user described in text — given directly, or built from a user of the task's built-in dataset
(``movielens_100k``: their demographics and last liked movies), leaving out what the user has already seen.

Example::

    polytask recommend runs/movies --user 42 -k 10
    polytask recommend runs/movies --user-text "31-year-old female writer. Liked recently: Fargo (1996) ..."
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from polytask.errors import UserError


def retrieval_task(predictor, name: str | None = None) -> str:
    """The retrieval task to recommend with: ``name``, or the model's only one."""
    ranked = [n for n, t in predictor.tasks.items() if t.type_name == "retrieval"]
    if name is not None:
        if name not in ranked:
            raise UserError(f"--task {name}: not a retrieval task of this model; its retrieval tasks: "
                            f"{', '.join(ranked) or 'none'}")
        return name
    if not ranked:
        raise UserError(f"{predictor.path} has no retrieval task to recommend with (tasks: "
                        f"{', '.join(predictor.tasks)})")
    if len(ranked) > 1:
        raise UserError(f"this model has several retrieval tasks ({', '.join(ranked)}); choose one with --task")
    return ranked[0]


def user_query(predictor, task: str, user_id: str) -> dict[str, Any]:
    """The query record of user ``user_id`` of the task's built-in dataset (its query and exclusion columns)."""
    cfg = predictor.tasks[task].cfg
    if cfg.dataset is None:
        raise UserError(f"--user needs a retrieval task over a built-in dataset with users (movielens_100k); task "
                        f"'{task}' reads files: give the user's text with --user-text")
    from polytask.catalog.datasets import DATASETS

    record = DATASETS.get(cfg.dataset).user_record(user_id)
    column = predictor.tasks[task].input_column
    if column not in record:
        raise UserError(f"built-in dataset '{cfg.dataset}' describes users in {', '.join(record)}, not in "
                        f"'{column}', the query column of task '{task}'")
    if cfg.exclude:  # what the user has seen, in whichever column the task reads its exclusions from
        record[cfg.exclude] = record["seen"]
    else:
        print(f"polytask: warning: task '{task}' was trained without an exclusion column (tasks.{task}.exclude), so "
              "documents this user has already seen may be recommended", file=sys.stderr, flush=True)
    return record


def recommend(predictor, records: Sequence[dict[str, Any]], task: str, k: int = 10,
              where: Sequence[str] | None = None) -> list[list[dict[str, Any]]]:
    """For each query record, its ``k`` best documents, best first: ``{"rank", "id", "document", "score"}``."""
    if k < 1:
        raise UserError(f"-k {k}: give a number of recommendations >= 1")
    cfg = predictor.tasks[task].cfg
    old, cfg.top_k = cfg.top_k, k
    try:
        preds = predictor.predict(list(records), tasks=[task], where=where)
    finally:
        cfg.top_k = old
    return [[{"rank": i + 1, **doc} for i, doc in enumerate(p[task]["documents"])] for p in preds]
