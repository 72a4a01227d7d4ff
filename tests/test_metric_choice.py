"""The main metric of each task: span F1 for BIO-style tags, token accuracy for tags without a span scheme,
``tasks.<name>.metric`` to override; it drives ``mean``, survives a reload and is explained by ``evaluate``."""

from __future__ import annotations

import json

import pytest

import polytask
from polytask.config import TaskConfig
from polytask.errors import UserError
from polytask.evaluate.runner import mean_score
from polytask.tasks import build_task
from polytask.tasks.base import Example
from tests.conftest import toy_rows, write_jsonl

POS_OF = {"show": "v", "please": "v", "me": "r", "flights": "n", "monday": "t", "the": "u", "a": "u",
          "from": "p", "to": "p", "on": "p", "cheap": "a", "now": "d", "good": "a", "bad": "a"}


def pos_rows(n: int, seed: int) -> list[dict]:
    """The toy tagging rows with part-of-speech tags instead of BIO: cities ``ns``, other words by lexicon."""
    rows = []
    for r in toy_rows("token", n, seed):
        tags = ["ns" if t == "B-city" else POS_OF[w] for w, t in zip(r["words"], r["tags"])]
        rows.append({"words": r["words"], "tags": tags})
    return rows


def token_task(tags: list[str], metric: str | None = None, name: str = "tagger"):
    task = build_task(name, TaskConfig(type="token_classification", text="words", label="tags", metric=metric))
    task.fit_labels([Example(text=["w"] * len(tags), text_pair=None, label=tags, where="x:1")])
    return task


@pytest.mark.parametrize("tags, metric, scheme", [
    (["O", "B-city", "I-city"], "f1", "BIO"),
    (["O", "B-LOC", "M-LOC", "E-LOC", "S-PER"], "f1", "BMES"),
    (["O", "S_LOC", "B_PER", "E_PER"], "f1", "BIOES"),
    (["n", "v", "w", "ns", "nr"], "accuracy", None),
    (["NN", "VBZ", "-LRB-", "PRP$", "O"], "accuracy", None),
])
def test_main_metric_follows_the_tag_scheme(tags, metric, scheme):
    task = token_task(tags)
    assert task.main_metric == metric
    if scheme:
        assert task.metric_reason == f"span F1: tags follow the {scheme} scheme"
    else:
        assert task.metric_reason == "token accuracy: tags have no span scheme"
        assert task.higher_is_better


def test_config_overrides_the_main_metric():
    task = token_task(["O", "B-city", "I-city"], metric="accuracy", name="slots")
    assert (task.main_metric, task.metric_reason) == ("accuracy", "set by tasks.slots.metric")
    pos = token_task(["n", "v"], metric="f1", name="pos")
    assert pos.main_metric == "f1"
    sts = build_task("sts", TaskConfig(type="regression", metric="mse"))
    assert sts.main_metric == "mse" and not sts.higher_is_better
    # mean: higher is better, so a lower-is-better main metric enters negated
    results = {"pos": {"f1": 0.2, "accuracy": 0.9}, "sts": {"pearson": 0.5, "mse": 0.3}}
    assert mean_score(results, {"pos": pos, "sts": sts}) == pytest.approx((0.2 - 0.3) / 2)
    default = build_task("intent", TaskConfig(type="classification"))
    assert (default.main_metric, default.metric_reason) == ("accuracy", "the classification default")


@pytest.mark.parametrize("kind, bad", [("token", "span_f1"), ("classification", "f1"), ("regression", "accuracy")])
def test_bad_metric_is_a_user_error_naming_the_key(toy_config, build_config, kind, bad):
    data = toy_config([kind])
    data["tasks"][kind]["metric"] = bad
    with pytest.raises(UserError) as e:
        build_config(data)
    msg = str(e.value)
    assert f"tasks.{kind}.metric" in msg and repr(bad) in msg
    allowed = build_task(kind, TaskConfig(type=data["tasks"][kind]["type"])).metric_names
    assert all(m in msg for m in allowed)


def test_pos_tags_are_scored_by_accuracy_through_train_reload_and_evaluate(toy_config, build_config, tmp_path):
    from polytask.evaluate.report import evaluate_checkpoint, write_report
    from polytask.predict import Predictor

    data = toy_config(["classification"], n_train=24, n_eval=8, train={"epochs": 1})
    files = {split: str(write_jsonl(tmp_path / "pos" / f"{split}.jsonl", pos_rows(n, seed)))
             for split, n, seed in (("train", 24, 0), ("validation", 8, 1), ("test", 8, 2))}
    data["tasks"]["pos"] = {"type": "token_classification", "text": "words", "label": "tags", **files}
    result = polytask.train(build_config(data))
    v = result.validation
    assert v["pos.f1"] != v["pos.accuracy"]  # the two scores differ, so the check below can tell them apart
    assert v["mean"] == pytest.approx((v["classification.accuracy"] + v["pos.accuracy"]) / 2)

    meta = json.loads((result.best_dir / "polytask.json").read_text())
    assert meta["tasks"]["pos"]["main_metric"] == "accuracy"
    predictor = Predictor(result.best_dir)
    assert predictor.tasks["pos"].main_metric == "accuracy"
    assert predictor.tasks["classification"].main_metric == "accuracy"

    results = evaluate_checkpoint(predictor, "test")
    assert results["mean"] == pytest.approx((results["classification"]["accuracy"] + results["pos"]["accuracy"]) / 2)
    json_path, md_path = write_report(results, predictor, "test", tmp_path / "report")
    md = md_path.read_text(encoding="utf-8")
    assert "pos: main metric accuracy (token accuracy: tags have no span scheme)" in md
    assert "classification: main metric accuracy (the classification default)" in md
    report = json.loads(json_path.read_text(encoding="utf-8"))
    assert report["main_metrics"]["pos"] == {"metric": "accuracy", "reason": "token accuracy: tags have no span scheme"}


def test_stored_choice_wins_on_reload(toy_config, build_config):
    """The checkpoint's stored choice is restored as it was, not recomputed; an override is stored too."""
    data = toy_config(["token"], n_train=16, n_eval=8, train={"epochs": 1})
    data["tasks"]["token"]["metric"] = "recall"
    result = polytask.train(build_config(data))
    loaded = polytask.load(result.best_dir)
    assert (loaded.tasks["token"].main_metric, loaded.tasks["token"].metric_reason) == \
        ("recall", "set by tasks.token.metric")
    assert result.validation["mean"] == pytest.approx(result.validation["token.recall"])

    task = token_task(["O", "B-city"])
    spec = {**task.spec(), "main_metric": "accuracy", "metric_reason": "stored"}
    task.load_spec(spec)
    assert (task.main_metric, task.metric_reason) == ("accuracy", "stored")
    old = {k: v for k, v in task.spec().items() if k not in ("main_metric", "metric_reason")}
    fresh = token_task(["O", "B-city"])
    fresh.load_spec(old)  # a checkpoint from before the choice was stored: chosen from its tags
    assert fresh.main_metric == "f1"
