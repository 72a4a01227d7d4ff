"""Ranking metrics of retrieval and recommendation: recall@k, hit rate@k, NDCG@k, MRR@k.

One function serves the ``retrieval`` task type and ``bench/recommend.py``'s collaborative baselines, so
polytask and the baselines are scored by the same code. Every metric is the mean over queries of a per-query
value; a query's relevant documents are a dict ``{doc_id: gain}`` (gain 1 for plain relevance, a grade for
graded relevance) and its ranking a list of doc ids, best first, already without excluded documents.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def query_metrics(ranking: Sequence[str], relevant: dict[str, float], k: int) -> dict[str, float]:
    """``recall@k``, ``hit_rate@k``, ``ndcg@k`` and ``mrr@k`` of one query.

    NDCG uses linear gains (``gain / log2(rank + 1)``, rank from 1) over the ideal ordering of the relevant
    documents' gains; MRR is ``1 / rank`` of the first relevant document within the top ``k`` (0 if none).
    """
    positive = {d: g for d, g in relevant.items() if g > 0}
    if not positive:
        raise ValueError("a query needs at least one relevant document with a positive gain")
    top = list(ranking[:k])
    hits = [i for i, d in enumerate(top) if d in positive]
    dcg = sum(positive[top[i]] / math.log2(i + 2) for i in hits)
    ideal = sorted(positive.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return {
        f"recall@{k}": len(hits) / len(positive),
        f"hit_rate@{k}": 1.0 if hits else 0.0,
        f"ndcg@{k}": dcg / idcg,
        f"mrr@{k}": 1.0 / (hits[0] + 1) if hits else 0.0,
    }


def ranking_metrics(rankings: Sequence[Sequence[str]], relevant: Sequence[dict[str, float]],
                    ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Mean of ``query_metrics`` over queries for each ``k`` in ``ks`` (rankings and relevance aligned)."""
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings for {len(relevant)} queries")
    out: dict[str, float] = {}
    n = max(len(rankings), 1)
    for k in ks:
        for ranking, rel in zip(rankings, relevant):
            for name, value in query_metrics(ranking, rel, k).items():
                out[name] = out.get(name, 0.0) + value / n
    return out
