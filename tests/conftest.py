"""Shared test fixtures: a tiny random BERT encoder (built once per session) and small toy datasets.

The tiny encoder uses the real MiniLM tokenizer (from its package) with random weights: 2 layers,
hidden 32 — fast enough that a whole train/evaluate/predict cycle takes seconds on 2 cores.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from polytask.catalog.encoders import resolve_encoder
from polytask.config import load_config

CITIES = ["boston", "denver", "dallas", "atlanta", "seattle", "chicago", "miami", "phoenix"]
FILLER = ["show", "me", "flights", "please", "the", "a", "from", "to", "on", "monday", "cheap", "now"]


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-encoder")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(str(folder))
    src = resolve_encoder("minilm")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def e5_folder(tmp_path_factory):
    """The real multilingual-e5-small, converted into a fresh cache (exercises the first-use build)."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("POLYTASK_CACHE")
    os.environ["POLYTASK_CACHE"] = str(cache)
    try:
        from polytask.catalog.encoders import resolve_encoder

        folder = resolve_encoder("multilingual-e5-small")
        again = resolve_encoder("multilingual-e5-small")  # reused, not rebuilt
        assert folder == again and folder.parent.parent == cache
        yield folder
    finally:
        if old is None:
            os.environ.pop("POLYTASK_CACHE", None)
        else:
            os.environ["POLYTASK_CACHE"] = old


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def toy_utterance(rng: random.Random) -> tuple[list[str], str, int, str]:
    """Four filler words with a city inserted somewhere and a mood word at the end: (words, city, pos, mood)."""
    words = rng.sample(FILLER, 4)
    city = rng.choice(CITIES)
    pos = rng.randrange(len(words) + 1)
    words.insert(pos, city)
    mood = rng.choice(["good", "bad"])
    words.append(mood)
    return words, city, pos, mood


def toy_rows(kind: str, n: int, seed: int) -> list[dict]:
    """Learnable toy data: the label is a simple function of the words."""
    rng = random.Random(f"{kind}-{seed}")
    rows = []
    for _ in range(n):
        words, city, pos, mood = toy_utterance(rng)
        text = " ".join(words)
        if kind == "classification":
            rows.append({"text": text, "label": "pos" if mood == "good" else "neg"})
        elif kind == "multilabel":
            labels = ["city_" + ("east" if city in CITIES[:4] else "west")] + (["mood"] if mood == "good" else [])
            rows.append({"text": text, "labels": labels})
        elif kind == "token":
            tags = ["O"] * len(words)
            tags[pos] = "B-city"
            rows.append({"words": words, "tags": tags})
        elif kind == "regression":
            rows.append({"text": text, "text2": city, "score": float(CITIES.index(city)) / 7.0})
        elif kind == "retrieval":  # the relevant document is the guide of the utterance's city
            rows.append({"text": text, "doc": CITY_GUIDE.format(city=city), "doc_id": city})
    return rows


CITY_GUIDE = "travel guide to {city}"


def toy_corpus(path: Path) -> Path:
    """The retrieval toy task's candidates: one guide per city, plus two that no query wants."""
    return write_jsonl(path, [{"doc_id": c, "doc": CITY_GUIDE.format(city=c)} for c in CITIES]
                       + [{"doc_id": "weather", "doc": "weather report"}, {"doc_id": "rail", "doc": "train times"}])


TASK_SPECS = {
    "classification": {"type": "classification", "text": "text", "label": "label"},
    "multilabel": {"type": "multilabel_classification", "text": "text", "label": "labels"},
    "token": {"type": "token_classification", "text": "words", "label": "tags"},
    "regression": {"type": "regression", "text": "text", "text_pair": "text2", "label": "score"},
    "retrieval": {"type": "retrieval", "text": "text", "document": "doc", "document_id": "doc_id"},
}


def toy_files(folder: Path, kind: str, sizes) -> dict[str, str]:
    """The split files of a toy task (``sizes``: (split, rows, seed) triples), and a retrieval task's corpus."""
    files = {split: str(write_jsonl(folder / f"{kind}-{split}.jsonl", toy_rows(kind, n, seed)))
             for split, n, seed in sizes}
    if kind == "retrieval":
        files["corpus"] = str(toy_corpus(folder / "retrieval-corpus.jsonl"))
    return files


@pytest.fixture
def toy_config(tmp_path, tiny_encoder):
    """Build a config dict for toy tasks: ``toy_config(["classification", "token"], train={...})``."""

    def make(kinds=("classification", "token"), n_train=48, n_eval=16, train=None, model=None) -> dict:
        tasks = {}
        for kind in kinds:
            files = toy_files(tmp_path / "data", kind,
                              (("train", n_train, 0), ("validation", n_eval, 1), ("test", n_eval, 2)))
            tasks[kind] = {**TASK_SPECS[kind], **files}
        return {
            "model": {"encoder": str(tiny_encoder), "max_length": 32, **(model or {})},
            "tasks": tasks,
            # fp32 unless a test asks: the suite computes the same on every CPU kind (precision: auto would
            # pick bf16 on some); tests/test_precision.py covers auto.
            "train": {"output_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 8, "lr": 1e-3,
                      "tensorboard": False, "progress": False, "logging_steps": 2, "precision": "fp32",
                      **(train or {})},
        }

    return make


@pytest.fixture
def build_config():
    def build(data: dict, overrides=()):
        return load_config(data=data, overrides=list(overrides))

    return build


KINDS = ("classification", "multilabel", "token", "regression")


def toy_run(folder: Path, encoder: Path, kinds=KINDS, model=None, epochs=1) -> Path:
    tasks = {}
    for kind in kinds:
        files = toy_files(folder / "data", kind, (("train", 32, 0), ("validation", 16, 1), ("test", 16, 2)))
        tasks[kind] = {**TASK_SPECS[kind], **files}
    cfg = load_config(data={"model": {"encoder": str(encoder), "max_length": 32, **(model or {})}, "tasks": tasks,
                            "train": {"output_dir": str(folder / "run"), "epochs": epochs, "batch_size": 8,
                                      "lr": 1e-3, "tensorboard": False, "progress": False, "precision": "fp32"}})
    import polytask

    return polytask.train(cfg).output_dir


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_encoder):
    """A toy run of every task type and its ONNX export with the int8 graph (shared by the ONNX and serve tests)."""
    folder = tmp_path_factory.mktemp("onnx")
    run = toy_run(folder, tiny_encoder)
    from polytask.cli import main

    assert main(["export", str(run), "--format", "onnx", "--quantize", "int8", "--license", "mit"]) == 0
    return run, run / "onnx"
