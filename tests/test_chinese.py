"""Chinese: character-level tagging through tokenizer offsets, the Chinese built-in datasets, the restricted
unpickler, and UTF-8 from config path to prediction output."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest
import torch

from polytask.cli import main
from polytask.config import TaskConfig
from polytask.data.features import collate
from polytask.errors import UserError
from polytask.model.encoder import load_tokenizer
from polytask.tasks import build_task
from polytask.tasks.spans import detect_scheme, extract_spans, spans_to_tags

from .conftest import write_jsonl

# (text, BMES tags per character)
BMES = [
    ("我爱北京天安门", ["O", "O", "B-LOC", "E-LOC", "B-LOC", "M-LOC", "E-LOC"]),
    ("张三在微软公司工作。", ["B-PER", "E-PER", "O", "B-ORG", "M-ORG", "M-ORG", "E-ORG", "O", "O", "O"]),
    ("李说：去上海！", ["S-PER", "O", "O", "O", "B-LOC", "E-LOC", "O"]),
    ("他在New York工作", ["O", "O", "B-LOC", "M-LOC", "M-LOC", "M-LOC", "M-LOC", "M-LOC", "M-LOC", "E-LOC",
                          "O", "O"]),
]


def char_task(tags_of_rows, units="auto"):
    task = build_task("ner", TaskConfig(type="token_classification", text="text", label="tags", units=units))
    examples = [task.read({"text": t, "tags": g}, f"rows.jsonl:{i + 1}") for i, (t, g) in enumerate(tags_of_rows)]
    task.fit_labels(examples)
    return task, examples


def oracle_decode(task, examples, tokenizer, max_length=64):
    """Decode logits that put all mass on the gold token labels: what a perfect model would output."""
    feats = task.encode(examples, tokenizer, max_length)
    batch = collate(feats, task, tokenizer.pad_token_id)
    gold = batch["labels"].clamp(min=0)
    batch["words"] = [ex.text for ex in examples]
    return task.decode(torch.nn.functional.one_hot(gold, len(task.labels)).float(), batch), feats


@pytest.fixture(params=["xlmr", "bert"])
def tokenizer(request, e5_folder, tiny_encoder):
    return load_tokenizer(e5_folder if request.param == "xlmr" else tiny_encoder)


def test_character_tags_round_trip_through_tokens(tokenizer):
    task, examples = char_task(BMES)
    assert task.units == "chars"
    preds, feats = oracle_decode(task, examples, tokenizer)
    for (text, gold), pred in zip(BMES, preds):
        assert pred["tags"] == gold
        assert [(s["label"], s["start"], s["end"]) for s in pred["spans"]] == extract_spans(gold)
        for s in pred["spans"]:
            assert s["text"] == text[s["start"]:s["end"]]
    assert [s["text"] for s in preds[1]["spans"]] == ["张三", "微软公司"]
    assert preds[3]["spans"][0]["text"] == "New York"


def test_multi_character_tokens_are_split_so_boundaries_inside_them_survive(e5_folder):
    tok = load_tokenizer(e5_folder)
    text = "我爱北京天安门"
    natural = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert any(e - s > 1 for s, e in natural)  # XLM-R merges characters (e.g. 北京) into one token
    task, examples = char_task(BMES[:1])
    feats = task.encode(examples, tok, 64)
    assert feats[0]["char_spans"] == [(i, i + 1) for i in range(len(text))]
    assert tok.unk_token_id not in feats[0]["input_ids"]


def test_bio_scheme_and_underscore_separator_are_written_back_as_read(tiny_encoder):
    rows = [("我在北京和上海", ["O", "O", "B_LOC", "I_LOC", "O", "B_LOC", "I_LOC"])]
    task, examples = char_task(rows)
    assert detect_scheme(task.labels) == ("BIO", "_")
    preds, _ = oracle_decode(task, examples, load_tokenizer(tiny_encoder))
    assert preds[0]["tags"] == rows[0][1]
    assert [s["text"] for s in preds[0]["spans"]] == ["北京", "上海"]


def test_characters_past_max_length_are_predicted_O(tiny_encoder):
    text = "北京" * 20
    tags = ["B-LOC", "E-LOC"] * 20
    task, examples = char_task([(text, tags)])
    preds, feats = oracle_decode(task, examples, load_tokenizer(tiny_encoder), max_length=10)
    assert len(feats[0]["input_ids"]) == 10 and len(preds[0]["tags"]) == 40
    assert preds[0]["tags"][:8] == tags[:8] and set(preds[0]["tags"][8:]) == {"O"}


def test_spans_to_tags_writes_every_scheme():
    spans = [("PER", 0, 1), ("LOC", 2, 5)]
    assert spans_to_tags(spans, 6, "BIO") == ["B-PER", "O", "B-LOC", "I-LOC", "I-LOC", "O"]
    assert spans_to_tags(spans, 6, "BIOES") == ["S-PER", "O", "B-LOC", "I-LOC", "E-LOC", "O"]
    assert spans_to_tags(spans, 6, "BMES") == ["S-PER", "O", "B-LOC", "M-LOC", "E-LOC", "O"]
    for scheme in ("BIO", "BIOES", "BMES"):
        assert extract_spans(spans_to_tags(spans, 6, scheme)) == spans


def test_units_auto_tells_words_from_characters():
    words, _ = char_task([("show me boston", ["O", "O", "B-city"])])
    assert words.units == "words"
    chars, _ = char_task([("去北京", ["O", "B-LOC", "E-LOC"])])
    assert chars.units == "chars"


@pytest.mark.parametrize("units, text, tags, message", [
    ("auto", "去北京", ["O", "B-LOC"], "2 tags in column 'tags' match neither the 1 words nor the 3 characters"),
    ("chars", "去 北京", ["O", "B-LOC", "E-LOC"], "3 tags in column 'tags' for 4 characters"),
    ("chars", ["去", "北京"], ["O", "B-LOC"], "must be a string for character-level tagging"),
    ("words", "去北京", ["O", "B-LOC", "E-LOC"], "3 tags in column 'tags' for 1 words"),
])
def test_tag_count_errors_name_the_row(units, text, tags, message):
    task = build_task("ner", TaskConfig(type="token_classification", text="text", label="tags", units=units))
    with pytest.raises(UserError) as err:
        task.read({"text": text, "tags": tags}, "data/训练.jsonl:7")
    assert str(err.value).startswith("data/训练.jsonl:7: ") and message in str(err.value)


def test_units_must_be_a_known_value(build_config, toy_config):
    cfg = toy_config(["token"])
    cfg["tasks"]["token"]["units"] = "bytes"
    with pytest.raises(UserError, match="tasks.token.units"):
        build_config(cfg)


# -- restricted unpickler -------------------------------------------------------------------------------------
class Boom:
    ran = False

    def __reduce__(self):
        return (Boom.mark, ())

    @staticmethod
    def mark():
        Boom.ran = True
        return "ran"


def test_plain_pickle_reader_accepts_data_and_refuses_code(tmp_path):
    from polytask.data.safe_pickle import load_plain_pickle

    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps((["标题"], ["正文"], [0]), protocol=4))
    assert load_plain_pickle(good) == (["标题"], ["正文"], [0])
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps(([Boom()], [], []), protocol=4))
    with pytest.raises(UserError, match=r"bad.pkl: refusing to load .*Boom.mark"):
        load_plain_pickle(bad)
    assert not Boom.ran
    import os

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(os.getcwd, protocol=0))  # GLOBAL opcode in protocol 0
    with pytest.raises(UserError, match="refusing to load"):
        load_plain_pickle(evil)
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(UserError, match="broken.pkl: not a readable pickle"):
        load_plain_pickle(broken)


# -- built-in Chinese datasets --------------------------------------------------------------------------------
def test_msra_ner_splits():
    from polytask.catalog.datasets import DATASETS

    splits = DATASETS.get("msra_ner").splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 48246, "validation": 2000, "test": 5000}
    texts = {k: {r["text"] for _, r in v} for k, v in splits.items()}
    assert not texts["train"] & texts["test"] and not texts["validation"] & texts["test"]
    assert not texts["train"] & texts["validation"]
    for _, rec in splits["test"][:200]:
        assert len(rec["tags"]) == len(rec["text"]) and "\r" not in rec["text"]
    tags = {t for _, r in splits["train"] for t in r["tags"]}
    assert tags == set(DATASETS.get("msra_ner").label_vocab("tags"))


def test_chinese_reviews_are_deduplicated_and_leak_free():
    from polytask.catalog.datasets import DATASETS

    splits = DATASETS.get("chinese_reviews").splits()
    texts = [r["text"] for v in splits.values() for _, r in v]
    assert len(texts) == len(set(texts)) == 17361
    # the 47 texts found in both source files are gone: no text appears with two labels
    by_text = {}
    for v in splits.values():
        for _, r in v:
            by_text.setdefault(r["text"], set()).add(r["sentiment"])
    assert all(len(s) == 1 for s in by_text.values())
    assert {r["sentiment"] for _, r in splits["test"][:100]} == {"positive", "negative"}  # shuffled, not grouped
    assert DATASETS.get("chinese_reviews").splits() is splits  # deterministic and parsed once


def test_ccf_news_sentiment_reads_pickles_safely():
    from polytask.catalog.datasets import DATASETS

    splits = DATASETS.get("ccf_news_sentiment").splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 5280, "validation": 990, "test": 990}
    test = {r["text"] for _, r in splits["test"]}
    assert not test & {r["text"] for _, r in splits["train"]}
    rec = splits["train"][0][1]
    assert rec["text"] == f"{rec['title']}\n{rec['content']}" and rec["sentiment"] in {"positive", "neutral",
                                                                                       "negative"}


# -- UTF-8 end to end (tiny encoder) ---------------------------------------------------------------------------
CITIES = ["北京", "上海", "广州", "深圳", "南京"]
FILLER = list("我们今天明天要去看朋友吃饭工作学习")


def chinese_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        before, after = "".join(rng.sample(FILLER, 3)), "".join(rng.sample(FILLER, 2))
        city = rng.choice(CITIES)
        mood = rng.choice(["好", "差"])
        text = before + city + after + mood
        tags = ["O"] * len(before) + ["B-LOC", "E-LOC"] + ["O"] * (len(after) + 1)
        rows.append({"文本": text, "标签": tags, "情感": "正面" if mood == "好" else "负面"})
    return rows


def test_chinese_paths_data_predictions_and_reports_stay_utf8(tmp_path, tiny_encoder, capsys):
    data = tmp_path / "数据"
    for split, n, seed in (("训练", 64, 0), ("验证", 16, 1), ("测试", 16, 2)):
        write_jsonl(data / f"{split}.jsonl", chinese_rows(n, seed))
    files = {"train": str(data / "训练.jsonl"), "validation": str(data / "验证.jsonl"),
             "test": str(data / "测试.jsonl")}
    config = {
        "model": {"encoder": str(tiny_encoder), "max_length": 32},
        "tasks": {"实体": {"type": "token_classification", "text": "文本", "label": "标签", **files},
                  "情感": {"type": "classification", "text": "文本", "label": "情感", **files}},
        "train": {"output_dir": str(tmp_path / "运行"), "epochs": 2, "batch_size": 8, "lr": 1e-3,
                  "tensorboard": False, "progress": False},
    }
    import yaml

    cfg_path = tmp_path / "配置.yaml"
    cfg_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    assert main(["train", str(cfg_path)]) == 0
    run = tmp_path / "运行"
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "实体" in report and "情感" in report
    capsys.readouterr()
    text = "我们去北京吃饭好"
    assert main(["predict", str(run), "--text", text]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert text in line and "\\u" not in line  # JSON without escaping
    pred = json.loads(line)
    assert pred["text"] == text and pred["情感"]["label"] in {"正面", "负面"}
    assert len(pred["实体"]["tags"]) == len(text)
    for span in pred["实体"]["spans"]:
        assert span["text"] == text[span["start"]:span["end"]]
    out = tmp_path / "输出" / "预测.jsonl"
    inp = write_jsonl(tmp_path / "输入.jsonl", [{"文本": text}])
    assert main(["predict", str(run / "best"), "--input", str(inp), "--output", str(out)]) == 0
    raw = out.read_text(encoding="utf-8")
    assert text in raw and "\\u" not in raw
    # robustness: Chinese tasks get the character noises, and the character tags stay aligned
    assert main(["robustness", str(run), "--rate", "0.2"]) == 0
    result = json.loads((run / "robustness" / "robustness.json").read_text(encoding="utf-8"))
    for name in ("实体", "情感"):
        assert result["tasks"][name]["language"] == "zh"
        assert set(result["tasks"][name]["noises"]) == {"char_drop", "char_swap", "char_duplicate"}
    assert "实体" in (run / "robustness" / "robustness.md").read_text(encoding="utf-8")


def test_chinese_example_trains_and_predicts_with_the_real_encoder(tmp_path, e5_folder, capsys):
    example = Path(__file__).parent.parent / "examples" / "chinese.yaml"
    run = tmp_path / "chinese"
    args = ["train", str(example), "--set", f"train.output_dir={run}", "--set", "train.max_steps=12",
            "--set", "train.eval_steps=12", "--set", "train.progress=false", "--set", "train.tensorboard=false"]
    for task in ("ner", "review", "news"):
        args += ["--set", f"tasks.{task}.max_train_samples=256", "--set", f"tasks.{task}.max_eval_samples=64"]
    assert main(args) == 0
    capsys.readouterr()
    texts = ["国务院总理在北京会见了微软公司总裁。", "这本书写得太好了，强烈推荐！"]
    assert main(["predict", str(run), "--text", texts[0], "--text", texts[1]]) == 0
    preds = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [p["text"] for p in preds] == texts
    for text, p in zip(texts, preds):
        assert p["review"]["label"] in {"positive", "negative"}
        assert p["news"]["label"] in {"positive", "neutral", "negative"}
        assert len(p["ner"]["tags"]) == len(text)
        for span in p["ner"]["spans"]:
            assert span["text"] == text[span["start"]:span["end"]]


def test_plots_with_chinese_task_names_are_written(tmp_path, recwarn):
    from polytask.compare.report import plot_bars
    from polytask.plotting import needs_cjk

    summary = {"tasks": {"情感": {"metric": "accuracy", "single": {"mean": 0.8, "std": 0.01},
                                 "multi": {"mean": 0.82, "std": 0.02}},
                         "ner": {"metric": "f1", "single": {"mean": 0.5, "std": 0.05},
                                 "multi": {"mean": 0.55, "std": 0.03}}}}
    path = tmp_path / "bars.png"
    plot_bars(summary, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [w for w in recwarn if "Glyph" in str(w.message)]
    assert needs_cjk(["情感"]) and not needs_cjk(["sentiment", "Ünïcode"])


def test_a_lone_word_start_marker_carries_no_label_and_spans_never_overlap(e5_folder):
    tok = load_tokenizer(e5_folder)
    text = "国务院总理在北京"
    natural = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    assert tok.convert_ids_to_tokens(natural["input_ids"])[0] == "▁" and natural["offset_mapping"][0] == (0, 1)
    task, examples = char_task([(text, ["B-ORG", "M-ORG", "E-ORG", "O", "O", "O", "B-LOC", "E-LOC"])])
    feats = task.encode(examples, tok, 64)
    assert feats[0]["char_spans"] == [(i, i + 1) for i in range(len(text))]  # one labelled token per character
    # whatever the model predicts, the character spans it decodes never overlap
    batch = collate(feats, task, tok.pad_token_id)
    batch["words"] = [text]
    torch.manual_seed(0)
    for _ in range(20):
        pred = task.decode(torch.randn(1, batch["input_ids"].shape[1], len(task.labels)), batch)[0]
        ends = [(s["start"], s["end"]) for s in pred["spans"]]
        assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:]))
        assert extract_spans(pred["tags"]) == [(s["label"], s["start"], s["end"]) for s in pred["spans"]]
