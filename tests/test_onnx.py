"""ONNX export (polytask export --format onnx): one graph with every task's logits, equal to PyTorch within the
tolerance for every task type (Chinese character tagging included), the int8 graph, the onnx backend of predict /
evaluate, the model card, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import polytask
from polytask.cli import main
from polytask.config import load_config
from polytask.data.features import collate, prepare_task_data
from polytask.export.onnx import OnnxModel, load_onnx
from tests.conftest import KINDS, toy_run, write_jsonl

INPUTS = [{"text": "show me flights from boston to denver good", "text2": "boston",
           "words": ["show", "me", "flights", "boston", "good"]},
          {"text": "cheap miami now bad", "text2": "miami", "words": ["cheap", "miami", "bad"]}]


def graph_vs_torch(run: Path, graph: OnnxModel, split: str = "validation") -> dict[str, float]:
    loaded = polytask.load(run)
    data = prepare_task_data(loaded.tasks, loaded.tokenizer, 32, splits=(split,), fit_labels=False)
    worst = {}
    for name, d in data.items():
        batch = collate(d.features[split], d.task, loaded.tokenizer.pad_token_id)
        with torch.no_grad():
            ref = loaded.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], tasks=[name])[name]
        got = graph(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], tasks=[name])[name]
        assert got.shape == ref.shape, name
        diff = (ref - got).abs()
        if diff.dim() == 3:
            diff = diff[batch["attention_mask"].bool()]
        worst[name] = float(diff.max())
    return worst


def test_every_task_type_exports_to_one_graph_equal_to_pytorch(exported, capsys):
    run, out = exported
    meta = json.loads((out / "onnx.json").read_text())
    assert set(meta["outputs"]) == set(KINDS) and meta["int8"] is True
    assert all(v["max_abs_diff"] <= 1e-3 and v["rows"] == 16 for v in meta["verification"].values())
    graph = OnnxModel(out / "model.onnx")
    assert graph.outputs == list(KINDS)  # named outputs, one per task, in task order
    # on other rows (another split, 16 at once: other lengths and padding) the graph still matches
    worst = graph_vs_torch(run, graph)
    assert max(worst.values()) < 1e-4, worst
    # the int8 graph is smaller, loads, answers every task, and was scored on the test split
    assert (out / "model.int8.onnx").stat().st_size < 0.6 * (out / "model.onnx").stat().st_size
    assert set(meta["metrics"]) >= {"pytorch", "onnx", "onnx-int8"}
    for name in KINDS:  # the same scores, give or take one of the 16 test rows flipping at a boundary
        assert abs(meta["metrics"]["onnx"][name] - meta["metrics"]["pytorch"][name]) <= 1 / 16 + 1e-6, name
    int8 = load_onnx(out)
    assert int8.backend == "onnx-int8" and set(int8.predict(INPUTS)[0]) == set(KINDS)


def test_onnx_backend_predicts_and_evaluates_like_pytorch(exported, capsys):
    run, out = exported
    fp32, torch_model = load_onnx(out, int8=False), polytask.load(run)
    for a, b in zip(fp32.predict(INPUTS), torch_model.predict(INPUTS)):
        assert a["classification"]["label"] == b["classification"]["label"]
        assert a["token"]["tags"] == b["token"]["tags"] and a["token"]["spans"] == b["token"]["spans"]
        assert a["multilabel"]["labels"] == b["multilabel"]["labels"]
        assert a["classification"]["score"] == pytest.approx(b["classification"]["score"], abs=1e-4)
        assert a["regression"]["value"] == pytest.approx(b["regression"]["value"], abs=1e-4)
    capsys.readouterr()
    assert main(["predict", str(out), "--backend", "onnx-fp32", "--text", "show me boston good", "--tasks",
                 "classification,multilabel"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = torch_model.predict(["show me boston good"], tasks=["classification", "multilabel"])[0]
    assert line["classification"]["label"] == want["classification"]["label"]
    assert main(["evaluate", str(out), "--backend", "onnx-fp32", "--json"]) == 0
    assert (out / "evaluate-onnx-fp32" / "MODEL_CARD.md").is_file()  # beside the export's own card
    assert "## Export" in (out / "MODEL_CARD.md").read_text()
    onnx_results = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(run), "--json"]) == 0
    torch_results = json.loads(capsys.readouterr().out)
    assert onnx_results["mean"] == pytest.approx(torch_results["mean"], abs=1e-6)
    # a checkpoint-only loader is told what the folder is
    assert main(["predict", str(out), "--text", "x"]) == 2
    assert "ONNX export" in capsys.readouterr().err


def test_model_cards_follow_the_hugging_face_layout(exported):
    import yaml

    run, out = exported
    assert main(["evaluate", str(run), "--split", "test"]) == 0  # evaluate writes the run's card
    for card_path, split in ((out / "MODEL_CARD.md", "test"), (run / "MODEL_CARD.md", "test")):
        text = card_path.read_text(encoding="utf-8")
        front = yaml.safe_load(text.split("---")[1])
        assert front["library_name"] == "polytask" and front["base_model"]
        results = front["model-index"][0]["results"]
        assert {r["task"]["name"] for r in results} == set(KINDS)
        assert all(r["dataset"]["split"] == split and r["metrics"] for r in results)
        for section in ("## Tasks and labels", "## Training data", "## Evaluation results", "## Limitations",
                        "## Licence"):
            assert section in text, (card_path, section)
    assert yaml.safe_load((out / "MODEL_CARD.md").read_text().split("---")[1])["license"] == "mit"
    assert "ONNX int8" in (out / "MODEL_CARD.md").read_text()


def test_chinese_character_tagging_exports_and_decodes_the_same(tmp_path, tiny_encoder):
    from tests.test_chinese import chinese_rows

    files = {split: str(write_jsonl(tmp_path / f"{split}.jsonl", chinese_rows(n, seed)))
             for split, n, seed in (("train", 32, 0), ("validation", 8, 1), ("test", 8, 2))}
    cfg = load_config(data={
        "model": {"encoder": str(tiny_encoder), "max_length": 32},
        "tasks": {"实体": {"type": "token_classification", "text": "文本", "label": "标签", **files},
                  "情感": {"type": "classification", "text": "文本", "label": "情感", **files}},
        "train": {"output_dir": str(tmp_path / "运行"), "epochs": 1, "batch_size": 8, "tensorboard": False,
                  "progress": False, "precision": "fp32"}})
    run = polytask.train(cfg).output_dir
    assert main(["export", str(run), "--format", "onnx", "--output", str(tmp_path / "导出")]) == 0
    graph = load_onnx(tmp_path / "导出")
    assert graph.backend == "onnx" and graph.model.outputs == ["实体", "情感"]
    text = ["我们去北京吃饭好", "明天上海工作差"]
    for t, a, b in zip(text, graph.predict([{"文本": t} for t in text]),
                       polytask.load(run).predict([{"文本": t} for t in text])):
        assert a["实体"]["tags"] == b["实体"]["tags"] and a["实体"]["spans"] == b["实体"]["spans"]
        assert len(a["实体"]["tags"]) == len(t) and a["情感"]["label"] == b["情感"]["label"]


def test_a_shared_lora_run_exports_merged(tmp_path, tiny_encoder):
    run = toy_run(tmp_path, tiny_encoder, kinds=("classification", "token"),
                  model={"peft": {"method": "lora", "r": 4}})
    assert main(["export", str(run), "--format", "onnx"]) == 0
    meta = json.loads((run / "onnx" / "polytask.json").read_text())
    assert not meta["config"]["model"].get("peft", {}).get("method")
    assert max(graph_vs_torch(run, OnnxModel(run / "onnx" / "model.onnx")).values()) < 1e-4


def test_export_refusals_and_a_failed_check_write_nothing(exported, tmp_path, tiny_encoder, monkeypatch, capsys):
    run, out = exported
    assert main(["export", str(run), "--format", "onnx"]) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "onnx", "--output", str(run / "best")]) == 2
    assert main(["export", str(run)]) == 2  # neither --format nor --merge
    assert main(["export", str(run), "--quantize", "int8", "--merge"]) == 2
    assert "--format onnx" in capsys.readouterr().err
    before = (out / "model.onnx").read_bytes()

    def wrong(self, *args, **kwargs):  # a graph that does not reproduce PyTorch
        return {k: v + 0.5 for k, v in real(self, *args, **kwargs).items()}

    real = OnnxModel.__call__
    monkeypatch.setattr(OnnxModel, "__call__", wrong)
    assert main(["export", str(run), "--format", "onnx", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "differs from PyTorch" in err and "nothing was written" in err
    assert (out / "model.onnx").read_bytes() == before  # the earlier export is intact
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".onnx")) == []  # no temporary left behind
    monkeypatch.setattr(OnnxModel, "__call__", real)
    per_task = toy_run(tmp_path / "pt", tiny_encoder, kinds=("classification", "token"),
                       model={"peft": {"method": "lora", "r": 2, "sharing": "per_task"}})
    capsys.readouterr()
    assert main(["export", str(per_task), "--format", "onnx"]) == 2
    assert "per-task adapters" in capsys.readouterr().err
