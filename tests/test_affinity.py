"""polytask affinity: the measurement run, its report files, and the recommendation logic."""

from __future__ import annotations

import json
import math

import yaml

from polytask.affinity import recommend
from polytask.cli import main


def test_affinity_cli_writes_heatmap_table_and_recommendation(tmp_path, toy_config, capsys):
    data = toy_config(["classification", "token", "regression"], n_train=32, n_eval=8,
                      train={"epochs": 1, "batch_size": 8})
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = tmp_path / "aff"
    code = main(["affinity", str(cfg), "--steps", "8", "--fraction", "0.5", "--lookahead-lr", "0.001",
                 "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Recommendation:" in printed
    result = json.loads((out / "affinity.json").read_text())
    assert result["steps"] == 8 and result["sampled_steps"] == 4
    tasks = result["tasks"]
    assert sorted(tasks) == ["classification", "regression", "token"]
    for a in tasks:
        assert math.isclose(result["cosine"][a][a]["mean"], 1.0, rel_tol=1e-9)
        # a small step along a task's own gradient lowers its own loss
        assert result["lookahead"][a][a]["mean"] > 0
        for b in tasks:
            assert math.isfinite(result["lookahead"][a][b]["mean"]) and result["cosine"][a][b]["n"] == 4
            assert -1.0001 <= result["cosine"][a][b]["mean"] <= 1.0001
    assert (out / "affinity_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "affinity.md").read_text()
    assert "## Recommendation" in md and "| **token** |" in md and "Cost: a measured step took" in md


def cell(mean, stderr=0.001, n=10):
    return {"mean": mean, "stderr": stderr, "n": n}


def result_of(matrix):
    tasks = list(matrix)
    return {"tasks": tasks, "lookahead": {a: {b: cell(matrix[a][b]) for b in tasks} for a in tasks}}


def test_recommendation_sentences():
    lines = recommend(result_of({
        "intent": {"intent": 0.05, "slots": 0.02, "topic": 0.0},
        "slots": {"intent": 0.03, "slots": 0.05, "topic": 0.0},
        "topic": {"intent": 0.0, "slots": -0.02, "topic": 0.05},
    }))
    assert "intent and slots help each other." in lines
    assert "topic hurts slots." in lines
    assert "intent and topic: no clear effect either way." in lines
    assert lines[-1].startswith("Recommendation: topic hurts slots — consider separate models")
    calm = recommend(result_of({"a": {"a": 0.1, "b": 0.01}, "b": {"a": 0.0, "b": 0.1}}))
    assert calm[0] == "a helps b; b does not clearly affect a."
    assert calm[-1].startswith("Recommendation: no task measurably hurts another")


def test_noise_is_not_called_an_effect():
    lines = recommend({"tasks": ["a", "b"], "lookahead": {
        "a": {"a": cell(0.1), "b": cell(-0.001, stderr=0.01)},
        "b": {"a": cell(0.002, stderr=0.01), "b": cell(0.1)}}})
    assert lines[0] == "a and b: no clear effect either way."
