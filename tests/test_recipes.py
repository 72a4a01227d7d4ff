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


# -- polytask monitor ------------------------------------------------------------------------------------------
def synthetic_stream(n_before=600, n_after=400, base=0.2, turned=0.7, seed=0):
    """Two groups; group 'a' turns negative at item n_before of its own, 'b' stays at the base rate."""
    import random

    rng = random.Random(seed)
    items = []
    for i in range(n_before + n_after):
        for group in ("a", "b"):
            rate = turned if group == "a" and i >= n_before else base
            items.append((group, rng.random() < rate, i))
    return items


def test_alerts_fire_within_a_window_of_the_turn_and_never_in_the_stable_part():
    from polytask.recipes.monitor import AlertRule, Monitor

    mon = Monitor(window=100, rule=AlertRule(z=3, min_count=20))
    alerts = [a for k, (group, neg, i) in enumerate(synthetic_stream())
              if (a := mon.add(k, i, group, neg)) is not None]
    assert [a["group"] for a in alerts] == ["a"]  # one alert, for the group that turned, none for 'b'
    assert 600 <= alerts[0]["time"] < 600 + 100  # within one window after the turn (time = the group's item)
    assert alerts[0]["z"] >= 3 and alerts[0]["window_share"] > alerts[0]["history_share"]
    # the alert re-arms only once z falls back: a second turn later fires again
    quiet = Monitor(window=50, rule=AlertRule(z=3, min_count=20))
    fired = [quiet.add(k, k, "g", neg) for k, neg in enumerate([False] * 300 + [True] * 60 + [False] * 600 +
                                                                 [True] * 60)]
    assert sum(a is not None for a in fired) == 2


@pytest.mark.parametrize("rule, message", [("z=abc", "z must be a number"), ("y=3", "expected z=NUMBER"),
                                           ("z=0", "z must be > 0"), ("min_count=0", "min_count at least 1")])
def test_bad_alert_rules_are_refused(rule, message):
    from polytask.recipes.monitor import AlertRule

    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        AlertRule.parse(rule)


class _Task:
    def __init__(self, labels, type_name="classification", text="text"):
        import types

        self.labels, self.type_name, self.cfg = labels, type_name, types.SimpleNamespace(text=text)


class _Model:
    """Sentiment = 'negative' when the text says 'bad'; topic = the text's first word."""

    tasks = {"sentiment": _Task(["negative", "positive"]), "topic": _Task(["sport", "tech"])}

    def __init__(self):
        self.batches = []

    def predict(self, records, tasks=None, batch_size=32, where=None):
        self.batches.append(len(records))
        for r, w in zip(records, where):
            if r["text"] == "unreadable":
                raise UserError(f"{w}: the model cannot read this")
        return [{"sentiment": {"label": "negative" if "bad" in r["text"] else "positive", "score": 0.9},
                 "topic": {"label": r["text"].split()[0], "score": 0.9}} for r in records]


def test_monitor_reports_alerts_and_survives_bad_lines(tmp_path, capsys):
    import io

    from polytask.recipes.monitor import monitor

    lines = []
    for i, (group, neg, _) in enumerate(synthetic_stream(300, 200)):
        topic = "sport" if group == "a" else "tech"
        lines.append(json.dumps({"ts": 1_700_000_000 + i, "text": f"{topic} news {'bad' if neg else 'fine'}"}))
    bad = {5: "{not json", 9: "[1, 2]", 13: json.dumps({"ts": 1, "text": "  "}), 17: json.dumps({"ts": 2}),
           21: json.dumps({"text": "tech no time"}), 25: json.dumps({"ts": 3, "text": "unreadable"})}
    for number, text in sorted(bad.items()):
        lines.insert(number - 1, text)
    stream = tmp_path / "stream.jsonl"
    stream.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model, errors = _Model(), io.StringIO()
    s = monitor(model, str(stream), tmp_path / "out", window=50, alert="z=3,min_count=20", time_field="ts",
                group_by="topic", batch_size=16, progress=False, errors=errors)
    assert s["bad_lines"] == 6 and s["bad_line_numbers"] == sorted(bad) and s["read"] == 1000
    for number in bad:
        assert f"{stream}:{number}:" in errors.getvalue()
    for problem in ("not JSON", "empty text", "no time field", "not a JSON object", "cannot read this"):
        assert problem in errors.getvalue(), problem
    assert max(model.batches) == 16  # micro-batches of --batch-size lines
    assert s["group_source"] == "model" and set(s["groups"]) == {"sport", "tech"}
    assert [a["group"] for a in s["alerts"]] == ["sport"] and s["alerts"][0]["time"] >= 1_700_000_000 + 600
    out = tmp_path / "out"
    assert [json.loads(x)["group"] for x in (out / "alerts.jsonl").read_text().splitlines()] == ["sport"]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 1000
    md = (out / "monitor.md").read_text()
    assert "## Alerts (1)" in md and "| sport |" in md and "monitor.png" in md and "6 bad lines" in md
    assert (out / "monitor.png").stat().st_size > 10_000
    # grouping by a field of the stream instead of a task
    s2 = monitor(model, str(stream), tmp_path / "out2", window=50, group_by="nope", progress=False, errors=errors)
    assert s2["group_source"] == "field" and set(s2["groups"]) == {"(none)"}


def test_monitor_command_reads_stdin_and_refuses_bad_arguments(service_run, tmp_path, monkeypatch, capsys):
    import io

    rows = [json.dumps({"text": t}) for t in ["show me boston good", "cheap miami now bad"] * 30] + ["oops"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(rows) + "\n"))
    out = tmp_path / "mon"
    assert main(["monitor", str(service_run), "--input", "-", "--sentiment-task", "sentiment", "--negative-label",
                 "neg", "--group-by", "intent", "--window", "10", "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert "monitored 60 items (1 bad lines skipped)" in captured.out and "<stdin>:61: not JSON" in captured.err
    assert json.loads((out / "monitor.json").read_text())["read"] == 60
    bad_utf8 = tmp_path / "latin1.jsonl"
    bad_utf8.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n{"text": "fine"}\n')
    ok = ["--sentiment-task", "sentiment", "--negative-label", "neg"]
    assert main(["monitor", str(service_run), "--input", str(bad_utf8), *ok, "--output", str(tmp_path / "u")]) == 0
    captured = capsys.readouterr()  # a line that is not UTF-8 is a bad line like any other
    assert f"{bad_utf8}:2: not UTF-8" in captured.err and "monitored 2 items (1 bad lines skipped)" in captured.out
    for args, message in (
                          (["--input", str(tmp_path / "none.jsonl")], "input file not found"),
                          (["--input", "-", "--alert", "z=x"], "z must be a number"),
                          (["--input", str(bad_utf8), *ok, "--group-by", "slots"], "group by a classification task"),
                          (["--input", str(bad_utf8), "--negative-label", "neg"], "cannot tell which task"),
                          (["--input", str(bad_utf8), "--sentiment-task", "sentiment"], "is not a label")):
        assert main(["monitor", str(service_run), *args, "--output", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err, args


def test_the_chinese_news_stream_turns_in_its_gold_labels_where_it_says(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "stream.jsonl"
    subprocess.run([sys.executable, str(root / "examples" / "recipes" / "news_monitor" / "make_stream.py"), "--lang",
                    "zh", "--items", "1200", "--turn", "900", "--output", str(out)], check=True, capture_output=True)
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 1200 and {x["outlet"] for x in lines} == {"A", "B", "C"}

    def share(rows):
        return sum(x["gold"] == "negative" for x in rows) / len(rows)

    before = [x for x in lines[:900] if x["outlet"] == "B"]
    after = [x for x in lines[900:] if x["outlet"] == "B"]
    others = [x for x in lines[900:] if x["outlet"] != "B"]
    assert share(after) > share(before) + 0.2 and abs(share(others) - share(before)) < 0.15
