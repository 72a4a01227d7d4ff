"""End to end with the real MiniLM encoder and the real ATIS data, through the CLI (short run)."""

from __future__ import annotations

import json
from pathlib import Path

from polytask.cli import main

EXAMPLE = Path(__file__).parent.parent / "examples" / "atis.yaml"


def test_atis_train_evaluate_predict_with_minilm(tmp_path, capsys):
    run = tmp_path / "atis"
    code = main(["train", str(EXAMPLE), "--set", f"train.output_dir={run}", "--set", "train.max_steps=60",
                 "--set", "train.eval_steps=30", "--set", "train.progress=false", "--set", "train.tensorboard=false",
                 "--set", "tasks.intent.max_train_samples=800", "--set", "tasks.slots.max_train_samples=800",
                 "--set", "tasks.intent.max_eval_samples=200", "--set", "tasks.slots.max_eval_samples=200"])
    assert code == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    results = json.loads((run / "report.json").read_text())["results"]
    assert printed == results
    # 60 steps are far from converged, but well above what an untrained model does: the majority intent
    # (atis_flight) is 71% of test, and an untrained tagger finds no slot spans (F1 0).
    assert results["intent"]["accuracy"] > 0.75
    assert results["slots"]["f1"] > 0.2
    assert (run / "report.md").read_text().startswith("# Evaluation report")

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"text": "show me flights from boston to denver"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(run / "best"), "--input", str(inp), "--output", str(out)]) == 0
    pred = json.loads(out.read_text())
    assert pred["text"] == "show me flights from boston to denver"
    assert pred["intent"]["labels"] and len(pred["slots"]["tags"]) == 7

