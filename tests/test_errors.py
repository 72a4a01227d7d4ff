"""Every bad input ends the CLI with exit code 2 and one clear ``polytask: error:`` line, never a traceback.

Each test calls ``polytask.cli.main`` in-process and reads stderr with ``capsys``. The message must name
where the problem is: the config key, or the data file and line (``file:line``). Training errors must
also be raised before anything is written: a fresh output folder is never created, and an existing run
(``--resume`` / ``--overwrite``) is left byte-for-byte as it was.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from polytask.cli import main

SMALL = {"n_train": 16, "n_eval": 8}
TASK_TYPE_NAMES = ("classification", "multilabel_classification", "regression", "token_classification")
DROP = object()  # edit_row: remove the column


# -- helpers ------------------------------------------------------------------------------------------------


def small_config(toy_config, kinds=("classification",), **train) -> dict:
    return toy_config(list(kinds), **SMALL, train={"epochs": 1, **train})


def write_config(tmp_path: Path, cfg: dict, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return str(path)


def expect_error(capsys, argv: list[Any]) -> str:
    """Run the CLI; assert exit 2, exactly one error line and no traceback; return the error line."""
    capsys.readouterr()  # drop output of earlier steps
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, f"expected exit code 2, got {code}; stderr:\n{err}"
    assert "polytask: error:" in err, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("polytask: error:")]
    assert len(lines) == 1, f"expected one error line; stderr:\n{err}"
    return lines[0]


def expect_train_error(capsys, tmp_path: Path, cfg: dict, *extra: str) -> str:
    """``train`` a bad config: exit 2, and the (fresh) output folder is not even created."""
    msg = expect_error(capsys, ["train", write_config(tmp_path, cfg), *extra])
    assert not Path(cfg["train"]["output_dir"]).exists(), "output_dir was created for a failing run"
    return msg


def edit_row(path: Path, line_no: int, **changes: Any) -> None:
    """Change columns of the JSON object on line ``line_no`` (1-based) of a JSONL file; DROP removes one."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[line_no - 1])
    for key, value in changes.items():
        if value is DROP:
            rec.pop(key)
        else:
            rec[key] = value
    lines[line_no - 1] = json.dumps(rec, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_row(path: Path, line_no: int) -> dict:
    return json.loads(path.read_text(encoding="utf-8").splitlines()[line_no - 1])


def without(msg: str, *paths: Path | str) -> str:
    """The message with file paths removed (so digits in tmp paths can't fake a count)."""
    for p in paths:
        msg = msg.replace(str(p), "<path>")
    return msg


def train_ok(capsys, tmp_path: Path, cfg: dict, name: str = "good.yaml") -> Path:
    capsys.readouterr()
    code = main(["train", write_config(tmp_path, cfg, name)])
    out = capsys.readouterr()
    assert code == 0, out.err
    return Path(cfg["train"]["output_dir"])


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file and folder under ``folder``: its bytes (files) and modification time."""
    snap = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        snap[rel] = (p.read_bytes() if p.is_file() else b"<dir>", p.stat().st_mtime_ns)
    return snap


# -- 1-4: config keys and values ----------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "bad", "suggested"), [
    ("train", "epoch", "epochs"),
    ("model", "encodr", "encoder"),
    ("tasks.classification", "lable", "label"),
    ("train.early_stopping", "patiense", "patience"),
])
def test_unknown_config_key(toy_config, tmp_path, capsys, section, bad, suggested):
    cfg = small_config(toy_config)
    node = cfg
    for part in section.split("."):
        node = node.setdefault(part, {})
    node[bad] = 3
    msg = expect_train_error(capsys, tmp_path, cfg)
    assert f"'{section}.{bad}'" in msg
    assert f"'{suggested}'" in msg


def test_unknown_config_key_via_set(toy_config, tmp_path, capsys):
    cfg = small_config(toy_config)
    msg = expect_error(capsys, ["train", write_config(tmp_path, cfg), "--set", "train.epoch=3"])
    assert "'train.epoch'" in msg and "'epochs'" in msg
    assert not Path(cfg["train"]["output_dir"]).exists()


@pytest.mark.parametrize(("key", "value", "via_set"), [
    ("train.epochs", "three", False),
    ("train.lr", "abc", True),
    ("train.batch_size", 8.5, False),
    ("model.max_length", "long", True),
    ("tasks.classification.weight", "heavy", False),
    ("train.tensorboard", "maybe", True),
])
def test_wrong_type(toy_config, tmp_path, capsys, key, value, via_set):
    cfg = small_config(toy_config)
    extra = []
    if via_set:
        extra = ["--set", f"{key}={value}"]
    else:
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        node[last] = value
    msg = expect_error(capsys, ["train", write_config(tmp_path, cfg), *extra])
    assert f"'{key}'" in msg
    assert repr(value) in msg
    assert not Path(cfg["train"]["output_dir"]).exists()


def test_unknown_task_type(toy_config, tmp_path, capsys):
    cfg = small_config(toy_config)
    cfg["tasks"]["classification"]["type"] = "clasification"
    msg = expect_train_error(capsys, tmp_path, cfg)
    assert "tasks.classification.type" in msg
    assert "'clasification'" in msg
    for name in TASK_TYPE_NAMES:
        assert name in msg


@pytest.mark.parametrize("kind", ["unknown name", "folder without config.json"])
def test_unknown_encoder(toy_config, tmp_path, capsys, kind):
    cfg = small_config(toy_config)
    if kind == "unknown name":
        encoder = "no-such-encoder"
    else:
        folder = tmp_path / "not-an-encoder"
        folder.mkdir()
        (folder / "README.txt").write_text("nothing here\n")
        encoder = str(folder)
    cfg["model"]["encoder"] = encoder
    msg = expect_train_error(capsys, tmp_path, cfg)
    assert "model.encoder" in msg
    assert encoder in msg
    if kind == "unknown name":
        assert "minilm" in msg  # the built-in names are listed


# -- 5-10: data files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "validation"])
def test_missing_data_file(toy_config, tmp_path, capsys, split):
    cfg = small_config(toy_config)
    missing = tmp_path / "nowhere" / f"{split}.jsonl"
    cfg["tasks"]["classification"][split] = str(missing)
    msg = expect_train_error(capsys, tmp_path, cfg)
    assert str(missing) in msg
    assert f"tasks.classification.{split}" in msg


@pytest.mark.parametrize(("kind", "split", "column", "line"), [
    ("classification", "train", "label", 1),
    ("classification", "train", "text", 4),
    ("classification", "validation", "label", 6),
    ("token", "train", "tags", 3),
    ("regression", "train", "text2", 2),
])
def test_missing_column(toy_config, tmp_path, capsys, kind, split, column, line):
    cfg = small_config(toy_config, kinds=[kind])
    path = Path(cfg["tasks"][kind][split])
    edit_row(path, line, **{column: DROP})
    msg = expect_train_error(capsys, tmp_path, cfg)
    assert f"{path}:{line}:" in msg
    assert f"'{column}'" in msg


@pytest.mark.parametrize(("kind", "column", "bad"), [
    ("classification", "label", "maybe"),
    ("multilabel", "labels", ["city_east", "maybe"]),
    ("token", "tags", None),  # one tag replaced by 'maybe'
])
def test_unknown_label_in_validation(toy_config, tmp_path, capsys, kind, column, bad):
    cfg = small_config(toy_config, kinds=[kind])
    path = Path(cfg["tasks"][kind]["validation"])
    if bad is None:
        tags = read_row(path, 3)["tags"]
        bad = ["maybe"] + tags[1:]
    edit_row(path, 3, **{column: bad})
    msg = expect_train_error(capsys, tmp_path, cfg)
    assert f"{path}:3:" in msg
    assert "'maybe'" in msg
    assert f"'{kind}'" in msg  # the task is named


@pytest.mark.parametrize(("kind", "split", "column", "empty", "line"), [
    ("classification", "train", "text", "", 5),
    ("classification", "train", "text", "   ", 2),
    ("classification", "validation", "text", "\t", 7),
    ("regression", "train", "text2", "", 3),
    ("token", "train", "words", [], 4),
    ("token", "train", "words", "   ", 1),
])
def test_empty_text(toy_config, tmp_path, capsys, kind, split, column, empty, line):
    cfg = small_config(toy_config, kinds=[kind])
    path = Path(cfg["tasks"][kind][split])
    edit_row(path, line, **{column: empty})
    msg = expect_train_error(capsys, tmp_path, cfg)
    assert f"{path}:{line}:" in msg
    assert "empty" in msg


def test_non_utf8_jsonl(toy_config, tmp_path, capsys):
    cfg = small_config(toy_config)
    path = Path(cfg["tasks"]["classification"]["train"])
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b'{"text": "caf\xff\xfe flights", "label": "pos"}\n'
    path.write_bytes(b"".join(lines))
    msg = expect_train_error(capsys, tmp_path, cfg)
    assert f"{path}:2:" in msg
    assert "UTF-8" in msg


@pytest.mark.parametrize(("suffix", "sep"), [(".csv", b","), (".tsv", b"\t")])
def test_non_utf8_delimited(toy_config, tmp_path, capsys, suffix, sep):
    cfg = small_config(toy_config)
    rows = [json.loads(ln) for ln in Path(cfg["tasks"]["classification"]["train"]).read_text().splitlines()]
    body = [sep.join([b"text", b"label"])]
    body += [sep.join([r["text"].encode(), r["label"].encode()]) for r in rows]
    body[3] = sep.join([b"cheap flights to m\xff\xfenchen", b"pos"])  # file line 4 (line 1 is the header)
    path = tmp_path / f"train{suffix}"
    path.write_bytes(b"\n".join(body) + b"\n")
    cfg["tasks"]["classification"]["train"] = str(path)
    msg = expect_train_error(capsys, tmp_path, cfg)
    assert f"{path}:4:" in msg
    assert "UTF-8" in msg


@pytest.mark.parametrize(("split", "line", "delta"), [
    ("train", 4, -1),
    ("train", 9, +2),
    ("validation", 2, -3),
])
def test_token_tag_count_mismatch(toy_config, tmp_path, capsys, split, line, delta):
    cfg = small_config(toy_config, kinds=["token"])
    path = Path(cfg["tasks"]["token"][split])
    row = read_row(path, line)
    n_words = len(row["words"])
    tags = row["tags"][:delta] if delta < 0 else row["tags"] + ["O"] * delta
    n_tags = len(tags)
    edit_row(path, line, tags=tags)
    msg = expect_train_error(capsys, tmp_path, cfg)
    assert f"{path}:{line}:" in msg
    rest = without(msg, path)
    assert re.search(rf"\b{n_tags}\b", rest), msg
    assert re.search(rf"\b{n_words}\b", rest), msg


# -- 11-12: predict and evaluate ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", [
    "missing jsonl input", "missing txt input", "empty text", "blank text", "missing text column",
    "non-UTF-8 txt", "unknown task", "not a run",
])
def test_predict_errors(toy_config, tmp_path, capsys, case):
    run = train_ok(capsys, tmp_path, small_config(toy_config, kinds=["classification", "token"]))
    inp = tmp_path / "inputs.jsonl"
    inp.write_text('{"text": "flights from boston"}\n{"text": "cheap flights to denver"}\n', encoding="utf-8")
    out = tmp_path / "predictions.jsonl"
    checkpoint = run
    extra: list[str] = []
    if case == "missing jsonl input":
        inp = tmp_path / "no-such-input.jsonl"
    elif case == "missing txt input":
        inp = tmp_path / "no-such-input.txt"
    elif case == "empty text":
        edit_row(inp, 2, text="")
    elif case == "blank text":
        edit_row(inp, 2, text="  ")
    elif case == "missing text column":
        edit_row(inp, 2, txt="hello", text=DROP)
    elif case == "non-UTF-8 txt":
        inp = tmp_path / "inputs.txt"
        inp.write_bytes(b"flights from boston\ncheap flights to m\xff\xfenchen\n")
    elif case == "unknown task":
        extra = ["--tasks", "classification,nosuch"]
    elif case == "not a run":
        checkpoint = tmp_path / "data"  # a folder, but no checkpoint in it
    msg = expect_error(capsys, ["predict", checkpoint, "--input", inp, "--output", out, *extra])
    assert not out.exists()
    if case.startswith("missing") and case.endswith("input"):
        assert str(inp) in msg and "not found" in msg
    elif case in ("empty text", "blank text"):
        assert f"{inp}:2:" in msg and "empty" in msg
    elif case == "missing text column":
        assert f"{inp}:2:" in msg and "'text'" in msg
    elif case == "non-UTF-8 txt":
        assert f"{inp}:2:" in msg and "UTF-8" in msg
    elif case == "unknown task":
        assert "nosuch" in msg and "classification" in msg and "token" in msg
    elif case == "not a run":
        assert str(checkpoint) in msg


@pytest.mark.parametrize("case", ["empty folder", "folder with files", "missing folder", "a file"])
def test_evaluate_not_a_run(tmp_path, capsys, case):
    target = tmp_path / "somewhere"
    if case == "empty folder":
        target.mkdir()
    elif case == "folder with files":
        (target / "best").mkdir(parents=True)
        (target / "notes.txt").write_text("not a run\n")
        (target / "best" / "model.bin").write_bytes(b"\x00" * 16)
    elif case == "a file":
        target = tmp_path / "run.yaml"
        target.write_text("model: {}\n")
    msg = expect_error(capsys, ["evaluate", target])
    assert str(target) in msg
    assert not (tmp_path / "somewhere" / "report.json").exists()


def test_evaluate_unknown_label_in_test_split(toy_config, tmp_path, capsys):
    cfg = small_config(toy_config)
    run = train_ok(capsys, tmp_path, cfg)
    test_file = Path(cfg["tasks"]["classification"]["test"])
    edit_row(test_file, 5, label="maybe")
    msg = expect_error(capsys, ["evaluate", run, "--split", "test"])
    assert f"{test_file}:5:" in msg and "'maybe'" in msg
    assert not (run / "report.json").exists()


# -- 13: nothing already written is damaged -----------------------------------------------------------------


def bad_validation_config(tmp_path: Path, cfg: dict) -> tuple[str, Path]:
    """The same run config, but reading a validation file with an unknown label on line 3."""
    good = Path(cfg["tasks"]["classification"]["validation"])
    bad = tmp_path / "bad-validation.jsonl"
    bad.write_bytes(good.read_bytes())
    edit_row(bad, 3, label="maybe")
    bad_cfg = json.loads(json.dumps(cfg))
    bad_cfg["tasks"]["classification"]["validation"] = str(bad)
    return write_config(tmp_path, bad_cfg, "bad.yaml"), bad


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_failed_train_leaves_existing_run_untouched(toy_config, tmp_path, capsys, flag):
    cfg = small_config(toy_config)
    run = train_ok(capsys, tmp_path, cfg)
    for name in ("best/model.safetensors", "last/model.safetensors", "metrics.jsonl"):
        assert (run / name).is_file(), name
    before = snapshot(run)
    config_path, bad = bad_validation_config(tmp_path, cfg)
    msg = expect_error(capsys, ["train", config_path, flag])
    assert f"{bad}:3:" in msg and "'maybe'" in msg
    assert snapshot(run) == before


@pytest.mark.parametrize(("flags", "expected"), [
    ([], "--resume"),
    (["--resume", "--overwrite"], "--overwrite"),
])
def test_existing_run_needs_resume_or_overwrite(toy_config, tmp_path, capsys, flags, expected):
    cfg = small_config(toy_config)
    run = train_ok(capsys, tmp_path, cfg)
    before = snapshot(run)
    msg = expect_error(capsys, ["train", write_config(tmp_path, cfg), *flags])
    assert expected in msg
    if not flags:
        assert str(run) in msg and "--overwrite" in msg
    assert snapshot(run) == before


def test_resume_without_a_run(toy_config, tmp_path, capsys):
    cfg = small_config(toy_config)
    msg = expect_train_error(capsys, tmp_path, cfg, "--resume")
    assert "cannot resume" in msg and cfg["train"]["output_dir"] in msg


def test_resume_with_changed_tasks_is_refused(toy_config, tmp_path, capsys):
    cfg = small_config(toy_config)
    run = train_ok(capsys, tmp_path, cfg)
    before = snapshot(run)
    cfg["tasks"]["classification"]["weight"] = 3.0
    msg = expect_error(capsys, ["train", write_config(tmp_path, cfg, "changed.yaml"), "--resume"])
    assert "cannot resume" in msg and "tasks.classification" in msg
    assert snapshot(run) == before
