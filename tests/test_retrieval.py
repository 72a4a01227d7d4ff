"""The retrieval task type: InfoNCE against a hand computation, ranking metrics against hand-made rankings, the
corpus embedded once per evaluation, retrieval beside classification through train -> save -> load -> predict,
exclusions, and bad input (exit 2, one message)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import polytask
from polytask.config import TaskConfig
from polytask.evaluate.ranking import query_metrics, ranking_metrics
from polytask.evaluate.report import evaluate_checkpoint
from polytask.tasks.retrieval import Retrieval, RetrievalHead
from tests.conftest import CITIES, write_jsonl
from tests.test_errors import edit_row, expect_error, expect_train_error, write_config


def task(**cfg) -> Retrieval:
    return Retrieval("search", TaskConfig(type="retrieval", document="doc", **cfg))


# -- loss and head ----------------------------------------------------------------------------------------
def test_loss_is_infonce_with_in_batch_and_hard_negatives():
    g = torch.Generator().manual_seed(0)
    b, negatives, d = 3, 2, 4
    logits = torch.randn(2 * b + negatives, d, generator=g)  # 3 queries, their 3 documents, 2 hard negatives
    q, docs = logits[:b], logits[b:]
    expected = 0.0
    for i in range(b):
        scores = [float(q[i] @ docs[j]) for j in range(b + negatives)]
        expected += -(scores[i] - math.log(sum(math.exp(s) for s in scores)))
    log_q = torch.tensor([-1.0, -2.0, -0.5])  # ignored unless logq_correction is on
    rows = torch.tensor([0.0, 1.0, 2.0])  # the documents' corpus rows: three different documents
    got = task().loss(logits, torch.stack([torch.ones(b), log_q, rows], 1))
    assert got.item() == pytest.approx(expected / b, rel=1e-5)
    # graded relevance weighs each query's term: relevance 2, 1, 1 -> (2 l0 + l1 + l2) / 4
    terms = torch.nn.functional.cross_entropy(q @ docs.T, torch.arange(b), reduction="none")
    graded = task().loss(logits, torch.stack([torch.tensor([2.0, 1.0, 1.0]), log_q, rows], 1))
    assert graded.item() == pytest.approx(float((2 * terms[0] + terms[1] + terms[2]) / 4), rel=1e-5)
    # logQ correction: in-batch document j's score minus log q_j; the hard negatives' scores unchanged
    expected = 0.0
    for i in range(b):
        scores = [float(q[i] @ docs[j]) - (float(log_q[j]) if j < b else 0.0) for j in range(b + negatives)]
        expected += -(scores[i] - math.log(sum(math.exp(s) for s in scores)))
    corrected = task(logq_correction=True).loss(logits, torch.stack([torch.ones(b), log_q, rows], 1))
    assert corrected.item() == pytest.approx(expected / b, rel=1e-5)
    # rows 0 and 2 share their document: neither is the other's negative (its column is masked out)
    expected = 0.0
    for i in range(b):
        cols = [j for j in range(b + negatives) if not (j < b and j != i and {i, j} == {0, 2})]
        scores = [float(q[i] @ docs[j]) for j in cols]
        expected += -(float(q[i] @ docs[i]) - math.log(sum(math.exp(s) for s in scores)))
    shared = task().loss(logits, torch.stack([torch.ones(b), log_q, torch.tensor([5.0, 1.0, 5.0])], 1))
    assert shared.item() == pytest.approx(expected / b, rel=1e-4)


def test_logq_is_the_log_share_of_each_document_among_training_positives(toy_config, build_config):
    data = toy_config(["retrieval"], n_train=40, n_eval=8, train={"epochs": 1})
    data["tasks"]["retrieval"]["logq_correction"] = True
    from polytask.train.setup import build_run

    run = build_run(build_config(data))
    t, examples = run.tasks["retrieval"], run.data["retrieval"].examples["train"]
    share = {c: sum(ex.label["id"] == c for ex in examples) / len(examples) for c in CITIES}
    assert t.log_frequency == pytest.approx({c: math.log(v) for c, v in share.items() if v > 0})
    feats = run.data["retrieval"].features["train"]
    first = examples[0].label["id"]
    assert feats[0]["labels"] == [1.0, pytest.approx(math.log(share[first])), float(CITIES.index(first))]


def test_head_dot_product_is_cosine_over_temperature():
    torch.manual_seed(0)
    pooled = torch.randn(5, 16)
    fixed = RetrievalHead(16, 8, dropout=0.0, temperature=0.1).eval()
    out = fixed(pooled)
    proj = fixed.proj(pooled)
    cos = torch.nn.functional.cosine_similarity(proj[:, None], proj[None], dim=-1)  # [5, 5]
    assert torch.allclose(out @ out.T, cos / 0.1, atol=1e-4)
    assert "log_scale" in dict(fixed.named_buffers()) and "log_scale" not in dict(fixed.named_parameters())
    learned = RetrievalHead(16, 8, dropout=0.0, temperature=None)
    assert learned.log_scale.requires_grad and learned.log_scale.item() == pytest.approx(math.log(20.0))


# -- metrics ----------------------------------------------------------------------------------------------
def test_ranking_metrics_match_hand_made_rankings():
    m = query_metrics(["a", "b", "c", "d"], {"b": 1.0}, k=3)
    assert m == {"recall@3": 1.0, "hit_rate@3": 1.0, "ndcg@3": pytest.approx(1 / math.log2(3)), "mrr@3": 0.5}
    assert query_metrics(["a", "b", "c", "d"], {"d": 1.0}, k=3) == {"recall@3": 0.0, "hit_rate@3": 0.0,
                                                                     "ndcg@3": 0.0, "mrr@3": 0.0}
    # two relevant documents, graded 3 and 1, found at ranks 2 and 3
    m = query_metrics(["x", "p", "q"], {"q": 1.0, "p": 3.0}, k=3)
    dcg = 3 / math.log2(3) + 1 / math.log2(4)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@3"] == pytest.approx(dcg / idcg) and m["recall@3"] == 1.0 and m["mrr@3"] == 0.5
    both = ranking_metrics([["a", "b"], ["b", "a"]], [{"a": 1.0}, {"a": 1.0}], ks=(1,))
    assert both["recall@1"] == 0.5 and both["mrr@1"] == 0.5


def test_metrics_pool_the_rows_of_one_query():
    t = task()
    ranking = ["d1", "d2", "d3"]
    preds = [{"documents": [{"id": d} for d in ranking]}] * 2
    golds = [{"document": d, "id": None, "relevance": 1.0, "query": "q", "exclude": ()} for d in ("d1", "d3")]
    m = t.metrics(preds, golds)
    assert m["queries"] == 1 and m["recall@1"] == 0.5 and m["recall@5"] == 1.0


# -- training ---------------------------------------------------------------------------------------------
def city_of(text: str) -> str:
    return next(c for c in CITIES if c in text.split())


def test_retrieval_learns_beside_classification_and_reloads_identically(toy_config, build_config):
    data = toy_config(["retrieval", "classification"], n_train=160, n_eval=32,
                      train={"epochs": 6, "batch_size": 16, "lr": 3e-3, "sampling": "all_tasks",
                             "early_stopping": {"patience": None}})
    cfg = build_config(data)
    result = polytask.train(cfg)
    test = evaluate_checkpoint(polytask.load(result.output_dir), split="test")
    assert test["retrieval"]["recall@1"] > 0.5 and test["classification"]["accuracy"] > 0.8
    assert test["retrieval"]["queries"] == 32
    loaded = polytask.load(result.output_dir)
    again = polytask.load(result.output_dir)
    inputs = ["show me flights to denver good", "cheap flights from miami bad"]
    a, b = loaded.predict(inputs), again.predict(inputs)
    assert a == b
    assert set(a[0]) == {"retrieval", "classification"}
    assert a[0]["retrieval"]["documents"][0]["id"] == "denver"
    assert a[1]["retrieval"]["documents"][0]["id"] == "miami"


def test_the_corpus_is_embedded_once_per_evaluation(toy_config, build_config, monkeypatch):
    import polytask.evaluate.runner as runner

    calls = []
    real = runner.embed_features

    def counting(model, task, features, *args, **kwargs):
        calls.append(len(features))
        return real(model, task, features, *args, **kwargs)

    monkeypatch.setattr(runner, "embed_features", counting)
    cfg = build_config(toy_config(["retrieval"], n_train=16, n_eval=24, train={"epochs": 2, "batch_size": 8}))
    polytask.train(cfg)
    assert calls == [10, 10]  # one validation per epoch, each embeds the 10 corpus documents once (not per batch)


def test_excluded_documents_are_never_ranked(tmp_path, toy_config, build_config):
    data = toy_config(["retrieval"], n_train=16, n_eval=8, train={"epochs": 1})
    data["tasks"]["retrieval"]["exclude"] = "seen"
    result = polytask.train(build_config(data))
    model = polytask.load(result.output_dir)
    out = model.predict([{"text": "flights to boston", "seen": ["boston", "denver"]}, {"text": "flights to boston"}])
    assert {"boston", "denver"}.isdisjoint(d["id"] for d in out[0]["retrieval"]["documents"])
    assert len(out[0]["retrieval"]["documents"]) == 8 and len(out[1]["retrieval"]["documents"]) == 10


def test_hard_negatives_and_fgm_and_a_weighting_method_train(toy_config, build_config, tmp_path):
    data = toy_config(["retrieval", "classification"], n_train=16, n_eval=8,
                      train={"epochs": 1, "sampling": "all_tasks", "weighting": {"method": "pcgrad"},
                             "adversarial": {"method": "fgm", "epsilon": 0.5}})
    for split in ("train", "validation", "test"):
        path = Path(data["tasks"]["retrieval"][split])
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for r in rows:
            r["neg"] = "weather report"
        write_jsonl(path, rows)
    data["tasks"]["retrieval"]["negative"] = "neg"
    cfg = build_config(data)
    from polytask.train.setup import build_run

    run = build_run(cfg)
    batch = run.collate("retrieval", [0, 1, 2])
    # 3 queries, their 3 documents, 3 hard negatives; the loss reads all 9 rows
    assert batch["input_ids"].shape[0] == 9 and batch["parts"]["retrieval"][0].tolist() == list(range(9))
    assert run.tokenizer.decode(batch["input_ids"][8], skip_special_tokens=True) == "weather report"
    result = polytask.train(cfg)
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss/retrieval"] for r in records if r["type"] == "train"]
    assert train_losses and all(math.isfinite(x) and x > 0 for x in train_losses) and result.global_step == 2


# -- bad input --------------------------------------------------------------------------------------------
def test_missing_corpus_file_is_exit_2(tmp_path, toy_config, capsys):
    data = toy_config(["retrieval"], n_train=16, n_eval=8, train={"epochs": 1})
    data["tasks"]["retrieval"]["corpus"] = str(tmp_path / "nowhere.jsonl")
    msg = expect_train_error(capsys, tmp_path, data)
    assert "tasks.retrieval.corpus" in msg and "nowhere.jsonl" in msg


def test_no_corpus_at_all_is_exit_2(tmp_path, toy_config, capsys):
    data = toy_config(["retrieval"], n_train=16, n_eval=8, train={"epochs": 1})
    del data["tasks"]["retrieval"]["corpus"]
    assert "tasks.retrieval.corpus" in expect_train_error(capsys, tmp_path, data)


def test_document_id_not_in_the_corpus_is_exit_2(tmp_path, toy_config, capsys):
    data = toy_config(["retrieval"], n_train=16, n_eval=8, train={"epochs": 1})
    edit_row(Path(data["tasks"]["retrieval"]["validation"]), 3, doc_id="atlantis")
    msg = expect_train_error(capsys, tmp_path, data)
    assert "retrieval-validation.jsonl:3" in msg and "'atlantis'" in msg and "not in the corpus" in msg


def test_empty_query_is_exit_2(tmp_path, toy_config, capsys):
    data = toy_config(["retrieval"], n_train=16, n_eval=8, train={"epochs": 1})
    edit_row(Path(data["tasks"]["retrieval"]["train"]), 5, text="  ")
    msg = expect_train_error(capsys, tmp_path, data)
    assert "retrieval-train.jsonl:5" in msg and "empty text" in msg


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("temperature", 0, "tasks.retrieval.temperature"),
    ("top_k", 0, "tasks.retrieval.top_k"),
    ("document", None, "tasks.retrieval.document"),
])
def test_bad_retrieval_options_are_exit_2(tmp_path, toy_config, capsys, key, value, expected):
    data = toy_config(["retrieval"], n_train=16, n_eval=8, train={"epochs": 1})
    data["tasks"]["retrieval"][key] = value
    assert expected in expect_train_error(capsys, tmp_path, data)


def test_retrieval_keys_on_another_type_are_exit_2(tmp_path, toy_config, capsys):
    data = toy_config(["classification"], n_train=16, n_eval=8, train={"epochs": 1})
    data["tasks"]["classification"]["corpus"] = "docs.jsonl"
    assert "tasks.classification.corpus" in expect_train_error(capsys, tmp_path, data)


def test_distilling_a_retrieval_task_is_not_supported(tmp_path, toy_config, capsys):
    data = toy_config(["retrieval"], n_train=16, n_eval=8, train={"epochs": 1})
    data["train"]["distill"] = {"teacher": str(tmp_path / "teacher")}
    msg = expect_error(capsys, ["train", write_config(tmp_path, data)])
    assert "not supported" in msg


def test_onnx_export_ranks_like_pytorch(tmp_path, toy_config, build_config):
    """The graph outputs the retrieval head's embeddings; the onnx backend embeds the corpus with the graph itself
    and decodes with the same code, so the rankings match PyTorch's."""
    pytest.importorskip("onnxruntime")
    from polytask.cli import main

    result = polytask.train(build_config(toy_config(["retrieval"], n_train=16, n_eval=8, train={"epochs": 1})))
    assert main(["export", str(result.output_dir), "--format", "onnx", "--license", "mit"]) == 0
    inputs = ["flights to denver good", "cheap miami now bad"]
    want = polytask.load(result.output_dir).predict(inputs)
    got = polytask.load(result.output_dir / "onnx", backend="onnx").predict(inputs)
    for w, g in zip(want, got):
        assert [d["id"] for d in w["retrieval"]["documents"]] == [d["id"] for d in g["retrieval"]["documents"]]
        assert [d["score"] for d in w["retrieval"]["documents"]] == pytest.approx(
            [d["score"] for d in g["retrieval"]["documents"]], abs=1e-4)


def test_a_label_column_is_not_relevance_and_relevance_drops_non_positives(toy_config, build_config):
    data = toy_config(["retrieval"], n_train=16, n_eval=8, train={"epochs": 1})
    for split in ("train", "validation", "test"):
        path = Path(data["tasks"]["retrieval"][split])
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for i, r in enumerate(rows):
            r["label"] = "billing"  # another task's label in the same file: not the retrieval task's business
            r["grade"] = 0 if i % 4 == 0 else 2
        write_jsonl(path, rows)
    from polytask.train.setup import build_run

    assert len(build_run(build_config(data)).data["retrieval"].examples["train"]) == 16
    data["tasks"]["retrieval"]["relevance"] = "grade"
    run = build_run(build_config(data))
    kept = run.data["retrieval"].examples["train"]
    assert len(kept) == 12 and all(ex.label["relevance"] == 2 for ex in kept)  # rows graded 0 are no positives


def test_a_checkpoint_keeps_its_corpus(tmp_path, toy_config, build_config):
    data = toy_config(["retrieval"], n_train=16, n_eval=8, train={"epochs": 1})
    result = polytask.train(build_config(data))
    want = polytask.load(result.output_dir).predict(["flights to denver"])
    Path(data["tasks"]["retrieval"]["corpus"]).write_text("", encoding="utf-8")  # the file changes after training
    got = polytask.load(result.output_dir).predict(["flights to denver"])
    assert got == want
    saved = result.output_dir / "best" / "corpus" / "retrieval.jsonl"
    assert len(saved.read_text(encoding="utf-8").splitlines()) == 10


@pytest.mark.parametrize("method", ["ewc", "freeze"])
def test_add_task_to_a_model_with_a_retrieval_task(tmp_path, toy_config, build_config, method):
    import yaml

    from polytask.cli import main

    data = toy_config(["retrieval", "classification"], n_train=16, n_eval=8, train={"epochs": 1})
    base = polytask.train(build_config(data)).output_dir
    new = toy_config(["token"], n_train=16, n_eval=8)["tasks"]
    task_file = tmp_path / "new.yaml"
    task_file.write_text(yaml.safe_dump({"tasks": new, "train": {"epochs": 1}}), encoding="utf-8")
    assert main(["add-task", str(base), str(task_file), "--method", method, "--output", str(tmp_path / "more")]) == 0
    before, after = polytask.load(base), polytask.load(tmp_path / "more")
    assert set(after.tasks) == {"retrieval", "classification", "token"}
    if method == "freeze":  # the old heads do not train: the retrieval head is the base's, copied over
        for k, v in before.model.heads["retrieval"].state_dict().items():
            assert torch.equal(v, after.model.heads["retrieval"].state_dict()[k]), k
        assert after.predict(["flights to denver"])[0]["retrieval"] == before.predict(["flights to denver"])[0][
            "retrieval"]
    assert after.predict(["flights to denver"])[0]["retrieval"]["documents"]


@pytest.mark.parametrize(("change", "expected"), [
    ({"train": {"mutual": {"peers": 2}}}, "not supported"),
    ({"train": {"early_stopping": {"metric": "retrieval.loss"}}}, "no validation loss"),
    ({"tasks": {"retrieval": {"text_pair": "doc"}}}, "tasks.retrieval.text_pair"),
])
def test_unsupported_retrieval_combinations_are_exit_2(tmp_path, toy_config, capsys, change, expected):
    data = toy_config(["retrieval"], n_train=16, n_eval=8, train={"epochs": 1})
    for section, values in change.items():
        for k, v in values.items():
            if section == "tasks":
                data["tasks"][k].update(v)
            else:
                data[section][k] = v
    assert expected in expect_error(capsys, ["train", write_config(tmp_path, data)])


def test_a_retrieval_batch_encodes_short_documents_apart_from_long_queries(toy_config, build_config):
    """Documents are not padded to the longest query: two encoder passes, the same outputs as one (fp32)."""
    from polytask.train.setup import build_run

    run = build_run(build_config(toy_config(["retrieval"], n_train=8, n_eval=8, train={"epochs": 1})))
    model = run.model.eval()
    feats = run.data["retrieval"].features["train"][:4]
    for f in feats:  # long queries
        f["input_ids"] = f["input_ids"][:-1] + [1996] * 20 + f["input_ids"][-1:]
        f["token_type_ids"] = [0] * len(f["input_ids"])
    from polytask.data.features import pad_inputs

    batch = pad_inputs(run.tasks["retrieval"].encoder_rows(feats), run.pad_id)
    calls = []
    hook = model.encoder.register_forward_hook(lambda m, a, k, out: calls.append(k["input_ids"].shape),
                                               with_kwargs=True)
    with torch.no_grad():
        split = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], tasks=["retrieval"])
        model.mixed_lengths = set()
        whole = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], tasks=["retrieval"])
    hook.remove()
    width = batch["input_ids"].shape[1]
    assert calls[0][1] < width and calls[1] == (4, width) and calls[2] == (8, width)  # documents, queries; one pass
    assert torch.allclose(split["retrieval"], whole["retrieval"], atol=1e-5)
