"""Recipes: customer-service routing rules (each rule, the missing-slot question, escalation, bad rules files
named by line), `polytask route`, and POST /route on the server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from polytask.cli import main
from polytask.errors import UserError
from polytask.recipes import RoutingRules
from tests.conftest import toy_rows, write_jsonl

RULES = """\
tasks:
  intent: intent
  slots: slots
  sentiment: sentiment
queues:
  pos: happy_desk
default_queue: general
required_slots:
  pos:
    - {slot: city, ask: "Which city?"}
escalate:
  label: neg
  threshold: 0.7
  queue: human_agent
"""


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def prediction(intent="pos", intent_score=0.9, spans=("city",), mood="pos", mood_score=0.95, multilabel=False):
    intent_pred = ({"labels": [intent], "scores": {intent: intent_score}} if multilabel
                   else {"label": intent, "score": intent_score})
    return {"intent": intent_pred, "slots": {"tags": [], "spans": [{"label": s, "start": 0, "end": 1, "text": "x"}
                                                                    for s in spans]},
            "sentiment": {"label": mood, "score": mood_score}}


def test_each_rule_decides_with_its_reason(tmp_path):
    rules = RoutingRules.load(write(tmp_path, RULES))
    routed = rules.decide(prediction())
    assert routed["action"] == "route" and routed["queue"] == "happy_desk"
    assert "intent pos (0.90) -> queue happy_desk" in routed["reason"] and "every required slot" in routed["reason"]
    asked = rules.decide(prediction(spans=()))
    assert asked["action"] == "ask" and asked["question"] == "Which city?" and asked["missing"] == ["city"]
    assert asked["queue"] == "happy_desk" and "missing city -> ask" in asked["reason"]
    angry = rules.decide(prediction(spans=(), mood="neg", mood_score=0.75))  # escalation comes first
    assert angry["action"] == "escalate" and angry["queue"] == "human_agent"
    assert "sentiment neg 0.75 >= 0.7" in angry["reason"]
    mild = rules.decide(prediction(mood="neg", mood_score=0.6))  # below the threshold: not escalated
    assert mild["action"] == "route"
    other = rules.decide(prediction(intent="neg", spans=()))  # no queue, no required slots
    assert other["action"] == "route" and other["queue"] == "general" and "has no queue" in other["reason"]
    multi = rules.decide(prediction(multilabel=True, intent_score=0.8))  # a multi-label intent task
    assert multi["intent"] == "pos" and "(0.80)" in multi["reason"]


@pytest.mark.parametrize("text, line, message", [
    ("tasks: [intent\n", 2, "not valid YAML"),
    ("queues: {a: b}\n", 1, "missing 'tasks'"),
    ("tasks:\n  slots: slots\n", 2, "'intent' is required"),
    ("tasks:\n  intent: intent\n  mood: sentiment\n", 3, "unknown key 'mood'"),
    ("tasks: {intent: intent}\nqueues:\n  pos: [a, b]\n", 3, "queues.pos: expected a non-empty string"),
    ("tasks: {intent: intent}\nrequired_slots:\n  pos: [{slot: city}]\n", 3, "needs tasks.slots"),
    ("tasks: {intent: intent, slots: slots}\nrequired_slots:\n  pos:\n    - {slot: city}\n", 4, "missing 'ask'"),
    ("tasks: {intent: intent, sentiment: sentiment}\nescalate:\n  label: neg\n  threshold: high\n", 4,
     "escalate.threshold: expected a number in [0, 1]"),
    ("tasks: {intent: intent}\nescalate: {label: neg}\n", 2, "escalate needs tasks.sentiment"),
    ("tasks: {intent: intent}\ntasks: {intent: x}\n", 2, "'tasks' is given twice"),
])
def test_a_bad_rules_file_is_refused_naming_its_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as e:
        RoutingRules.load(path)
    assert f"{path}:{line}:" in str(e.value) and message in str(e.value)


@pytest.fixture(scope="module")
def service_run(tmp_path_factory, tiny_encoder):
    """A toy customer-service model: intent and slots on the same utterances, sentiment from other rows."""
    import polytask
    from polytask.config import load_config

    folder = tmp_path_factory.mktemp("service")
    rows = {split: [] for split in ("train", "validation", "test")}
    for split, n, seed in (("train", 32, 0), ("validation", 8, 1), ("test", 8, 2)):
        for c, t in zip(toy_rows("classification", n, seed), toy_rows("token", n, seed)):
            rows[split].append({"text": " ".join(t["words"]), "words": t["words"], "tags": t["tags"],
                                "label": c["label"]})
    files = {split: str(write_jsonl(folder / f"{split}.jsonl", r)) for split, r in rows.items()}
    cfg = load_config(data={
        "model": {"encoder": str(tiny_encoder), "max_length": 32},
        "tasks": {"intent": {"type": "classification", "text": "text", "label": "label", **files},
                  "slots": {"type": "token_classification", "text": "words", "label": "tags", **files},
                  "sentiment": {"type": "classification", "text": "text", "label": "label", **files}},
        "train": {"output_dir": str(folder / "run"), "epochs": 1, "batch_size": 8, "tensorboard": False,
                  "progress": False, "precision": "fp32"}})
    return polytask.train(cfg).output_dir


def test_route_command_answers_predictions_and_a_decision(service_run, tmp_path, capsys):
    rules = write(tmp_path, RULES)
    assert main(["route", str(service_run), "--rules", str(rules), "--text", "show me boston good",
                 "--text", "cheap flights bad"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert {"text", "intent", "slots", "sentiment", "route"} <= set(line)
        assert line["route"]["action"] in {"route", "ask", "escalate"} and line["route"]["reason"]
    out = tmp_path / "routed.jsonl"
    inp = write_jsonl(tmp_path / "in.jsonl", [{"text": "miami now"}])
    assert main(["route", str(service_run), "--rules", str(rules), "--input", str(inp), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["route"]["queue"] in {"happy_desk", "general", "human_agent"}
    # checked against the model: an intent, slot or label it does not have is named with its line
    for bad, line, message in ((RULES.replace("  pos: happy_desk", "  refund: happy_desk"), 6, "'refund' is not an "
                                "intent of task 'intent'"),
                               (RULES.replace("slot: city", "slot: airport"), 10, "'airport' is not a slot"),
                               (RULES.replace("label: neg", "label: angry"), 12, "'angry' is not a label"),
                               (RULES.replace("intent: intent", "intent: topic"), 2, "no task 'topic'"),
                               (RULES.replace("intent: intent\n  slots: slots", "intent: slots\n  slots: slots"), 2,
                                "task 'slots' is token_classification")):
        path = write(tmp_path, bad, "bad.yaml")
        assert main(["route", str(service_run), "--rules", str(path), "--text", "x"]) == 2
        err = capsys.readouterr().err
        assert f"{path}:{line}:" in err and message in err, err


def test_serve_route_endpoint(service_run, tmp_path):
    from fastapi.testclient import TestClient

    from polytask.serve import ServeSettings, create_app

    rules = write(tmp_path, RULES)
    with TestClient(create_app(ServeSettings(path=str(service_run), rules=str(rules)))) as c:
        deadline = time.monotonic() + 60
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = c.post("/route", json={"texts": ["show me boston good", "cheap now bad"]})
        assert r.status_code == 200
        items = r.json()["predictions"]
        assert [i["text"] for i in items] == ["show me boston good", "cheap now bad"]
        assert all(i["route"]["action"] in {"route", "ask", "escalate"} for i in items)
        assert c.post("/route", json={"texts": ["a"], "tasks": ["intent"]}).status_code == 422
        assert "route" not in c.post("/predict", json={"texts": ["a"]}).json()["predictions"][0]
    with TestClient(create_app(ServeSettings(path=str(service_run)))) as c:  # no rules: no /route
        assert c.post("/route", json={"texts": ["a"]}).status_code == 404


def test_the_recipe_rules_files_are_valid(tmp_path):
    root = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "customer_service"
    for name in ("rules.yaml", "rules_zh.yaml"):
        rules = RoutingRules.load(root / name)
        assert rules.queues and rules.escalate_label == "negative"
    from polytask.catalog.datasets import DATASETS

    intents = set(DATASETS.get("repayment_intents_zh").label_vocab("intent"))
    assert set(RoutingRules.load(root / "rules_zh.yaml").queues) <= intents
    atis = {i for _, r in DATASETS.get("atis").rows("train") for i in r["intents"]}
    assert set(RoutingRules.load(root / "rules.yaml").queues) <= atis
