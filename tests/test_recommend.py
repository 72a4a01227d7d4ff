"""polytask recommend: the best documents of a retrieval task's corpus for a user text, exclusions, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import polytask
from polytask.cli import main
from tests.test_errors import expect_error


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_encoder):
    from tests.conftest import toy_run

    return toy_run(tmp_path_factory.mktemp("recommend"), tiny_encoder, kinds=("retrieval", "classification"))


def test_recommend_a_user_text(run, capsys):
    capsys.readouterr()
    assert main(["recommend", str(run), "--user-text", "cheap flights to denver", "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    recs = out["recommendations"]
    assert [r["rank"] for r in recs] == [1, 2, 3] and out["query"] == "cheap flights to denver"
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    want = polytask.load(run).predict(["cheap flights to denver"], tasks=["retrieval"])[0]["retrieval"]["documents"]
    assert [r["id"] for r in recs] == [d["id"] for d in want[:3]]  # the same ranking as predict
    assert main(["recommend", str(run), "--user-text", "cheap flights to denver", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "--user-text: cheap flights to denver" and lines[1].lstrip().startswith("1. ")


def test_recommend_refuses_bad_requests(run, capsys):
    # a task over files has no users to look up
    assert "--user-text" in expect_error(capsys, ["recommend", run, "--user", "7"])
    # the toy task has no exclusion column
    assert "exclusion column" in expect_error(capsys, ["recommend", run, "--user-text", "x", "--exclude", "boston"])
    assert "-k 0" in expect_error(capsys, ["recommend", run, "--user-text", "x", "-k", "0"])
    assert "not a retrieval task" in expect_error(capsys, ["recommend", run, "--user-text", "x", "--task",
                                                           "classification"])
    assert "empty text" in expect_error(capsys, ["recommend", run, "--user-text", "  "])


def test_the_movies_recipe_trains_on_movielens_and_recommends_for_a_user(tmp_path, tiny_encoder, capsys):
    """The shipped recipe end to end on the real data (a tiny encoder and a few dozen rows per task)."""
    from polytask.catalog.datasets import DATASETS
    from polytask.config import load_config
    from polytask.errors import UserError

    try:
        DATASETS.get("movielens_100k").folder()
    except UserError:
        pytest.skip("recbole's MovieLens files are not installed (scripts/setup.sh installs them)")
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "examples" / "recipes" / "movies" / "config.yaml", [
        f"model.encoder={tiny_encoder}", "model.max_length=32", "train.epochs=1", "train.batch_size=8",
        "train.precision=fp32", "train.progress=false", "train.tensorboard=false",
        f"train.output_dir={tmp_path / 'run'}",
        *(f"tasks.{t}.max_train_samples=24" for t in ("next_movie", "rating", "genres")),
        *(f"tasks.{t}.max_eval_samples=16" for t in ("next_movie", "rating", "genres"))])
    assert {n: t.type for n, t in cfg.tasks.items()} == {
        "next_movie": "retrieval", "rating": "regression", "genres": "multilabel_classification"}
    result = polytask.train(cfg)
    assert 0.0 <= result.validation["next_movie.ndcg@10"] <= 1.0 and result.validation["rating.rmse"] > 0
    capsys.readouterr()
    assert main(["recommend", str(result.output_dir), "--user", "42", "-k", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    seen = set(DATASETS.get("movielens_100k").user_record("42")["seen"])
    assert len(out["recommendations"]) == 5 and not seen & {r["id"] for r in out["recommendations"]}
    assert out["query"].startswith("30-year-old male administrator.")
