"""polytask recommend: the best documents of a retrieval task's corpus for a user text, exclusions, bad input."""

from __future__ import annotations

import json

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
