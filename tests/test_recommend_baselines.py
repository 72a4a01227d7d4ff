"""bench/recommend_baselines.py on the tiny fake MovieLens folder of test_movielens: the protocol (full ranking
without seen movies, cold-start slice, RMSE) exactly, and ALS / SVD (benchmark-only libraries) when installed.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_movielens import fake_dataset, write_fake

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import recommend_baselines as rb  # noqa: E402


@pytest.fixture
def fake(tmp_path):
    return fake_dataset(write_fake(tmp_path))


def test_popularity_ranks_by_training_count_without_seen_movies(fake):
    result = rb.popularity("test", dataset=fake)
    data = rb.load_split("test", fake)
    assert [r["user_id"] for r in data.rows] == ["1", "2", "3"]  # file order of the test rows (items 10, 15, 1)
    # training counts: item 1 twice, 2-5, 7, 8, 11-14 once, 6, 9, 10, 15 never; ties in id order
    assert result.rankings[2] == ["1", "3", "4", "5", "7", "8", "11", "12", "13", "14"]  # user 3 has seen 2
    assert result.rankings[1] == ["2", "3", "4", "5", "7", "8", "11", "12", "13", "14"]  # user 2 has seen 1, 6
    assert result.rankings[0] == ["6", "10", "15"]  # user 1 has seen every other movie
    for ranking, row in zip(result.rankings, data.rows):
        assert not set(ranking) & set(row["seen"])
    scored = rb.evaluate_rankings(result.rankings, data.rows, rb.train_counts(data.train))
    assert scored["overall"]["hit_rate@10"] == pytest.approx(2 / 3)  # users 1 (rank 2) and 3 (rank 1)
    assert scored["overall"]["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    assert scored["rows"] == 3 and scored["cold_start_rows"] == 3  # every movie has < 5 training ratings


def test_cold_start_slice_and_rmse(fake):
    data = rb.load_split("test", fake)
    counts = rb.train_counts(data.train)
    assert rb.cold_start_mask(data.rows, counts, below=2) == [True, True, False]  # item 1 has 2 training ratings
    rankings = [["6", "10"], ["2"], ["1"]]
    scored = rb.evaluate_rankings(rankings, data.rows, counts, ks=(1,), below=2)
    assert scored["overall"]["hit_rate@1"] == pytest.approx(1 / 3)  # only user 3's first movie is right
    assert scored["cold_start"]["hit_rate@1"] == 0.0 and scored["cold_start_rows"] == 2  # users 1 and 2
    assert rb.evaluate_rankings(rankings, data.rows, counts, below=0)["cold_start"] == {}
    assert rb.rmse([4.0, 4.0, 5.0], data.rows) == pytest.approx(math.sqrt(1 / 3))  # ratings 5, 4, 5
    with pytest.raises(ValueError, match="2 predictions for 3 rows"):
        rb.rmse([1.0, 2.0], data.rows)


def test_top_k_leaves_out_seen_movies_and_breaks_ties_by_position(fake):
    data = rb.load_split("test", fake)
    scores = np.zeros(len(data.items))
    scores[data.item_index["15"]] = 2.0
    assert rb.top_k(scores, ["1", "2"], data, 3) == ["15", "3", "4"]
    assert rb.top_k(scores, ["15"], data, 1) == ["1"]


def test_als_ranks_unseen_movies_and_is_seeded(fake):
    pytest.importorskip("implicit", reason="benchmark-only: pip install implicit==0.7.3")
    first = rb.als("test", factors=4, iterations=3, seed=1, dataset=fake)
    again = rb.als("test", factors=4, iterations=3, seed=1, dataset=fake)
    assert first.rankings == again.rankings and first.train_seconds >= 0
    rows = rb.load_split("test", fake).rows
    for ranking, row in zip(first.rankings, rows):
        assert len(ranking) == min(10, 15 - len(row["seen"])) and not set(ranking) & set(row["seen"])


def test_svd_ranking_scores_are_surprises_own_estimates(fake):
    surprise = pytest.importorskip("surprise", reason="benchmark-only: pip install scikit-surprise==1.1.5")
    result = rb.svd("validation", seed=0, dataset=fake, n_factors=3, n_epochs=5)
    data = rb.load_split("validation", fake)
    assert result.predictions is not None and len(result.predictions) == len(data.rows)
    assert all(1.0 <= p <= 5.0 for p in result.predictions)
    trainset = surprise.Dataset(surprise.Reader(rating_scale=(1, 5))).construct_trainset(
        [(r["user_id"], r["item_id"], r["rating"], None) for r in data.train])
    model = surprise.SVD(random_state=0, n_factors=3, n_epochs=5)
    model.fit(trainset)
    scores = rb.svd_scores(model, trainset, data.items, {"1", "2", "3"})  # user 3 has no training rating
    for user, row in scores.items():
        expected = [model.predict(user, item, clip=False).est for item in data.items]
        np.testing.assert_allclose(row, expected, rtol=1e-9)  # trained, untrained movies and users alike
    assert result.predictions == [model.predict(r["user_id"], r["item_id"]).est for r in data.rows]
