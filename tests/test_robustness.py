"""The noise suite (deterministic, label-preserving for tagging) and the ``polytask robustness`` command."""

from __future__ import annotations

import json

import pytest

import polytask
from polytask.cli import main
from polytask.robustness.noise import (
    CHINESE,
    ENGLISH,
    Units,
    applies,
    apply_noise,
    example_rng,
    noisy_text,
    realign_tags,
)
from polytask.robustness.runner import perturb
from polytask.tasks import Example
from polytask.tasks.spans import extract_spans, scheme_tags

TEXT = "Show me the cheapest flights from Boston to Denver tomorrow, please"


@pytest.mark.parametrize("noise", ENGLISH)
def test_each_english_noise_changes_the_text_deterministically(noise):
    a = noisy_text(TEXT, noise, 0.3, example_rng(0, noise, 7))
    b = noisy_text(TEXT, noise, 0.3, example_rng(0, noise, 7))
    c = noisy_text(TEXT, noise, 0.3, example_rng(1, noise, 7))
    assert a == b and a != TEXT
    assert a != c or noise == "casing"  # another seed draws other noise (casing has few outcomes per word)
    if noise == "word_dropout":
        assert len(a.split()) < len(TEXT.split())
    if noise.startswith("typo_"):
        assert len(a.split()) == len(TEXT.split()) and a.lower() != TEXT.lower()


@pytest.mark.parametrize("noise", CHINESE)
def test_chinese_noises_act_on_characters(noise):
    text = "国务院总理李克强昨天在北京会见了微软公司总裁"
    a = noisy_text(text, noise, 0.2, example_rng(0, noise, 0))
    assert a != text and " " not in a
    if noise == "char_drop":
        assert len(a) < len(text)
    if noise == "char_duplicate":
        assert len(a) > len(text)
    if noise == "char_swap":
        assert sorted(a) == sorted(text)


def test_tags_follow_dropped_and_swapped_words():
    words = ["flights", "from", "new", "york", "to", "denver"]
    tags = ["O", "O", "B-from", "I-from", "O", "B-to"]
    units = Units.of(words, " ")
    dropped = Units([w for i, w in enumerate(words) if i != 2], [i for i in range(6) if i != 2], [" "] * 5)
    assert realign_tags(tags, dropped) == ["O", "O", "B-from", "O", "B-to"]  # "york" keeps its span
    gone = Units(["flights", "from", "to", "denver"], [0, 1, 4, 5], [" "] * 4)
    assert realign_tags(tags, gone) == ["O", "O", "O", "B-to"]  # the whole span dropped
    for seed in range(20):
        noisy = apply_noise(units, "word_dropout", 0.3, example_rng(seed, "word_dropout", 0), word_units=True)
        new = realign_tags(tags, noisy)
        assert len(new) == len(noisy.items) >= 1
        kept = {t for t, _, _ in extract_spans(new)}
        assert kept <= {"from", "to"}
        for typ, s, e in extract_spans(new):  # every span's words come from that span originally
            assert all(tags[noisy.origin[i]].endswith(typ) for i in range(s, e))


def test_bmes_character_tags_stay_valid_under_every_chinese_noise():
    text = "李克强在北京会见了微软公司总裁"
    tags = ["B-PER", "M-PER", "E-PER", "O", "B-LOC", "E-LOC", "O", "O", "O", "B-ORG", "M-ORG", "M-ORG", "E-ORG",
            "O", "O"]
    ex = Example(text=text, text_pair=None, label=tags, where="x:1")

    class CharTask:
        level = "token"
        labels = scheme_tags(["PER", "LOC", "ORG"], "BMES")

    for noise in CHINESE:
        for i in range(30):
            out = perturb(ex, CharTask, noise, 0.2, 0, i)
            assert len(out.label) == len(out.text)
            for typ, s, e in extract_spans(out.label):
                prefixes = [t[0] for t in out.label[s:e]]
                assert prefixes == (["S"] if e - s == 1 else ["B"] + ["M"] * (e - s - 2) + ["E"])
                assert typ in {"PER", "LOC", "ORG"}


def test_plain_per_unit_tags_are_copied_not_rewritten():
    tags = ["NOUN", "VERB", "NOUN"]
    units = Units(["dogs", "chase"], [0, 1], [" ", " "])
    assert realign_tags(tags, units) == ["NOUN", "VERB"]


def test_which_noises_apply():
    assert applies("typo_swap", chinese=False, tagged=None)
    assert not applies("whitespace", chinese=False, tagged="words")
    assert not applies("word_dropout", chinese=False, tagged="chars")
    assert not applies("typo_swap", chinese=True, tagged=None) and applies("char_swap", chinese=True, tagged="chars")
    assert not applies("char_drop", chinese=False, tagged=None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder):
    """A tiny model of every task type (trained briefly)."""
    from .conftest import TASK_SPECS, toy_rows, write_jsonl

    root = tmp_path_factory.mktemp("robust")
    tasks = {}
    for kind in ("classification", "multilabel", "token", "regression"):
        files = {s: str(write_jsonl(root / f"{kind}-{s}.jsonl", toy_rows(kind, n, seed)))
                 for s, n, seed in (("train", 32, 0), ("validation", 8, 1), ("test", 16, 2))}
        tasks[kind] = {**TASK_SPECS[kind], **files}
    cfg = {"model": {"encoder": str(tiny_encoder), "max_length": 32}, "tasks": tasks,
           "train": {"output_dir": str(root / "run"), "epochs": 1, "batch_size": 8, "lr": 1e-3,
                     "tensorboard": False, "progress": False}}
    polytask.train(polytask.load_config(data=cfg))
    return root / "run"


def test_robustness_command_writes_clean_and_noisy_metrics(trained, capsys):
    assert main(["robustness", str(trained), "--rate", "0.2"]) == 0
    out = trained / "robustness"
    result = json.loads((out / "robustness.json").read_text())
    assert set(result["tasks"]) == {"classification", "multilabel", "token", "regression"}
    for name, e in result["tasks"].items():
        expected = set(ENGLISH) - ({"whitespace"} if name == "token" else set())
        assert set(e["noises"]) == expected
        assert e["noisy"] == pytest.approx(sum(e["noises"].values()) / len(e["noises"]))
        sign = 1 if e["higher_is_better"] else -1
        assert e["drop"] == pytest.approx(sign * (e["clean"] - e["noisy"]))
    clean = polytask.load(trained).model  # the clean score is the evaluate score
    assert clean is not None
    md = (out / "robustness.md").read_text()
    assert "| token |" in md and "n/a" in md  # whitespace does not apply to word lists
    assert (out / "robustness.png").stat().st_size > 1000
    # deterministic: the same command gives the same numbers
    assert main(["robustness", str(trained), "--rate", "0.2", "--output", str(trained / "again")]) == 0
    again = json.loads((trained / "again" / "robustness.json").read_text())
    assert again["tasks"] == result["tasks"]


def test_robustness_clean_matches_evaluate(trained, capsys):
    assert main(["evaluate", str(trained), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert main(["robustness", str(trained), "--noise", "casing", "--json", "--output", str(trained / "c")]) == 0
    result = json.loads(capsys.readouterr().out)
    for name, e in result["tasks"].items():
        assert e["clean"] == pytest.approx(evaluated[name][e["metric"]])
        assert list(e["noises"]) == ["casing"]


def test_robustness_bad_arguments_exit_2(trained, tmp_path, capsys):
    assert main(["robustness", str(trained), "--noise", "typos"]) == 2
    assert "unknown noise(s) typos" in capsys.readouterr().err
    assert main(["robustness", str(trained), "--rate", "0"]) == 2
    assert main(["robustness", str(tmp_path / "missing")]) == 2
