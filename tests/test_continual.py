"""Continual learning: polytask add-task / update with every protection method on the tiny encoder, the
forgetting report, --max-forgetting, resume, and bad input (the base run is never modified)."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import pytest
import torch
import yaml

import polytask
from polytask.cli import main
from polytask.continual.runner import add_task, update
from tests.conftest import TASK_SPECS, toy_rows, write_jsonl
from tests.test_resume_ddp import final_eval

METHODS = ("none", "replay", "ewc", "l2sp", "freeze")


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_encoder):
    """A trained classification + token run, and a task file adding a regression task."""
    root = tmp_path_factory.mktemp("continual")
    tasks = {}
    for kind in ("classification", "token", "regression"):
        files = {split: str(write_jsonl(root / "data" / f"{kind}-{split}.jsonl", toy_rows(kind, n, seed)))
                 for split, n, seed in (("train", 32, 0), ("validation", 8, 1), ("test", 8, 2))}
        tasks[kind] = {**TASK_SPECS[kind], **files}
    data = {"model": {"encoder": str(tiny_encoder), "max_length": 32},
            "tasks": {k: tasks[k] for k in ("classification", "token")},
            "train": {"output_dir": str(root / "base"), "epochs": 2, "batch_size": 8, "lr": 1e-3,
                      "tensorboard": False, "progress": False, "precision": "fp32"}}
    polytask.train(polytask.load_config(data=data))
    task_file = root / "new-task.yaml"
    task_file.write_text(yaml.safe_dump({"tasks": {"regression": tasks["regression"]},
                                         "train": {"epochs": 1}}), encoding="utf-8")
    return root, task_file


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def encoder_distance(a, b) -> float:
    sa, sb = a.model.encoder.state_dict(), b.model.encoder.state_dict()
    return float(sum(((sa[k].float() - sb[k].float()) ** 2).sum() for k in sa))


@pytest.mark.parametrize("method", METHODS)
def test_add_task_with_each_method_reports_forgetting_and_leaves_the_base_alone(method, base, capsys):
    root, task_file = base
    before = digest(root / "base")
    out = root / f"added-{method}"
    assert main(["add-task", str(root / "base"), str(task_file), "--method", method, "--output", str(out)]) == 0
    printed = capsys.readouterr()
    assert "Backward transfer" in printed.out and f"continual learning from {root / 'base' / 'best'}" in printed.err
    assert digest(root / "base") == before  # the base run is only read
    report = json.loads((out / "forgetting.json").read_text())
    assert report["method"] == method and report["split"] == "test"
    own = polytask.evaluate.report.evaluate_checkpoint(polytask.load(root / "base"), "test")
    for row in report["old_tasks"]:  # "before" is the base model's own test score
        metric = row["metric"]
        assert row["before"] == pytest.approx(100 * own[row["task"]][metric])
    assert [r["task"] for r in report["old_tasks"]] == ["classification", "token"]
    assert [r["task"] for r in report["new_tasks"]] == ["regression"] and report["new_tasks"][0]["after"] is not None
    changes = [r["change"] for r in report["old_tasks"]]
    assert report["backward_transfer"] == pytest.approx(sum(changes) / len(changes))

    old, new = polytask.load(root / "base"), polytask.load(out / "last")
    assert new.task_names == ["classification", "token", "regression"]
    heads_equal = all(torch.equal(old.model.heads[t][-1].weight, new.model.heads[t][-1].weight)
                      for t in ("classification", "token"))
    if method == "freeze":  # only the new head trained
        assert encoder_distance(old, new) == 0.0 and heads_equal
    else:
        assert encoder_distance(old, new) > 0.0
        assert heads_equal == (method != "replay")  # old heads train only on replayed rows
    if method == "replay":
        assert "replayed rows: classification" in printed.err


def test_a_strong_pull_keeps_the_encoder_near_its_start(base):
    root, task_file = base
    old = polytask.load(root / "base")
    dist = {}
    for method, strength in (("none", None), ("l2sp", 1e4)):
        sets = [f"train.continual.strength={strength}"] if strength else []
        out = root / f"pull-{method}"
        add_task(root / "base", task_file, overrides=sets, output=str(out), method=method)
        dist[method] = encoder_distance(old, polytask.load(out / "last"))
    assert dist["l2sp"] < 0.1 * dist["none"]


def test_ewc_fisher_and_pull_gradient_are_the_formulas(base):
    """F = mean over the old tasks' batches of the squared batch gradient; the pull adds λ F (θ − θ*)."""
    from polytask.config import ContinualConfig
    from polytask.continual import Continual
    from polytask.data.features import collate, prepare_task_data

    root, _ = base
    loaded = polytask.load(root / "base")
    model, tasks = loaded.model, loaded.tasks
    data = prepare_task_data(tasks, loaded.tokenizer, 32, splits=("train",), fit_labels=False)
    c = Continual(ContinualConfig(method="ewc", base="x", strength=3.0, fisher_batches=2), ["classification"])
    model.requires_grad_(True)
    c.prepare(model, data, tasks, 0, 8, torch.device("cpu"))
    name, param = next((n, p) for n, p in model.encoder.named_parameters() if "query.weight" in n)
    expected = torch.zeros_like(param)
    model.eval()
    for s in (0, 8):  # two batches of 8 of the 32 rows
        batch = collate(data["classification"].features["train"][s:s + 8], tasks["classification"], 0)
        model.zero_grad()
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], tasks=["classification"])
        tasks["classification"].loss(logits["classification"], batch["labels"]).backward()
        expected += param.grad ** 2 / 2
    assert torch.allclose(c.fisher[name], expected, rtol=1e-5, atol=1e-12) and expected.abs().sum() > 0
    with torch.no_grad():
        param.add_(0.01)
    model.zero_grad(set_to_none=True)
    param.grad = torch.zeros_like(param)  # as if this step's tasks reached it (gradient 0)
    c.add_gradient(model)
    assert torch.allclose(param.grad, 3.0 * c.fisher[name] * 0.01, rtol=1e-4, atol=1e-12)
    untouched = next(p for n, p in model.encoder.named_parameters() if n != name and p.requires_grad)
    assert untouched.grad is None  # a parameter no task reached this step is not pulled (it does not move)


def test_update_trains_one_task_on_new_data_and_grows_its_head(base, tmp_path, capsys):
    root, _ = base
    rows = toy_rows("classification", 24, 5)
    for r in rows[:6]:
        r["label"] = "neutral"  # a label the base model never saw
    new_data = write_jsonl(tmp_path / "fresh.jsonl", rows)
    out = tmp_path / "updated"
    assert main(["update", str(root / "base"), "--task", "classification", "--data", str(new_data),
                 "--method", "replay", "--output", str(out)]) == 0
    printed = capsys.readouterr()
    assert "1 new label(s) the base model never saw, added to its head: neutral" in printed.err
    old, new = polytask.load(root / "base"), polytask.load(out / "best")
    assert new.tasks["classification"].labels == old.tasks["classification"].labels + ["neutral"]
    assert new.model.heads["classification"][-1].out_features == 3
    report = json.loads((out / "forgetting.json").read_text())
    assert report["updated"] == "classification" and [r["task"] for r in report["old_tasks"]] == ["token"]
    # the head starts from the base model's rows: old label ids keep their meaning
    from polytask.train.setup import build_run

    cfg = polytask.load_config(data=json.loads((out / "best" / "polytask.json").read_text())["config"])
    run = build_run(cfg)
    start, was = run.model.heads["classification"][-1].weight, old.model.heads["classification"][-1].weight
    assert torch.equal(start[:2], was) and not torch.equal(start[2], torch.zeros_like(start[2]))


def test_max_forgetting_keeps_the_run_but_not_as_best(base, monkeypatch, capsys):
    root, task_file = base
    runner = importlib.import_module("polytask.continual.runner")
    real = runner.forgetting_report

    def dropped(*args):  # the real report, with the token task 5 points worse than it was
        report = real(*args)
        row = report["old_tasks"][1]
        row["after"], row["change"] = row["before"] - 5.0, -5.0
        return report

    monkeypatch.setattr(runner, "forgetting_report", dropped)
    out = root / "forgot"
    code = main(["add-task", str(root / "base"), str(task_file), "--output", str(out), "--max-forgetting", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "old task 'token' dropped 5.00 points" in err and "more than --max-forgetting 1" in err
    assert not (out / "best").exists() and (out / "rejected" / "polytask.json").is_file()
    assert (out / "forgetting.md").is_file() and (out / "last").is_dir()
    monkeypatch.setattr(runner, "forgetting_report", real)
    out2 = root / "forgot-little"
    assert main(["add-task", str(root / "base"), str(task_file), "--output", str(out2), "--max-forgetting", "100"]) == 0
    assert (out2 / "best").is_dir()


def test_resume_of_add_task_matches_the_uninterrupted_run(base, monkeypatch):
    root, task_file = base
    sets = ["train.epochs=2"]
    straight = add_task(root / "base", task_file, overrides=sets, output=str(root / "straight"), method="ewc")
    loop = importlib.import_module("polytask.train.loop")
    real_step = loop.train_step

    def interrupted(accelerator, model, run, window, step, epoch=0):
        if step == 5:  # in the second epoch: last/ holds the end of the first
            raise KeyboardInterrupt
        return real_step(accelerator, model, run, window, step, epoch)

    monkeypatch.setattr(loop, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        add_task(root / "base", task_file, overrides=sets, output=str(root / "resumed"), method="ewc")
    monkeypatch.setattr(loop, "train_step", real_step)
    resumed = add_task(root / "base", task_file, overrides=sets, output=str(root / "resumed"), method="ewc",
                       resume=True)
    assert final_eval(straight.output_dir) == final_eval(resumed.output_dir)
    assert straight.report == {**resumed.report, "run": straight.report["run"]}


def test_bad_continual_input_is_refused_and_writes_nothing(base, tmp_path, capsys):
    root, task_file = base
    before = digest(root / "base")
    clash = tmp_path / "clash.yaml"
    clash.write_text(yaml.safe_dump({"tasks": {"token": {"type": "classification", "train": "x.jsonl"}}}))
    cases = [
        (["add-task", str(root / "base"), str(clash), "--output", str(tmp_path / "a")], "task 'token' already exists"),
        (["update", str(root / "base"), "--task", "nope", "--data", str(task_file), "--output", str(tmp_path / "b")],
         "no task 'nope'"),
        (["update", str(root / "base"), "--task", "token", "--data", str(tmp_path / "missing.jsonl"), "--output",
          str(tmp_path / "c")], "no such file"),
        (["add-task", str(root / "base"), str(task_file), "--output", str(root / "base")], "never modified"),
        (["add-task", str(root / "base"), str(task_file), "--output", str(tmp_path / "d"), "--set",
          "train.continual.replay_ratio=1.5"], "'train.continual.replay_ratio' has bad value 1.5"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err
    assert not any((tmp_path / x).exists() for x in "abcd")
    assert digest(root / "base") == before


def test_the_shipped_task_file_adds_a_task_to_the_atis_example(tmp_path):
    """examples/tasks/*.yaml merge into the example they name into a valid config (nothing is trained)."""
    from polytask.config import load_config, read_yaml

    root = Path(__file__).resolve().parents[1]
    base = read_yaml(root / "examples" / "atis.yaml")
    extra = read_yaml(root / "examples" / "tasks" / "atis-add-topic.yaml")
    assert set(extra) <= {"tasks", "train"} and not set(extra["tasks"]) & set(base["tasks"])
    base["tasks"].update(extra["tasks"])
    base["train"].update(extra["train"])
    base["train"]["continual"] = {**extra["train"]["continual"], "base": str(tmp_path),
                                  "old_tasks": ["intent", "slots"]}
    cfg = load_config(data=base)
    assert cfg.train.continual.method == "replay" and list(cfg.tasks) == ["intent", "slots", "topic"]


def test_add_task_to_a_per_task_lora_run_trains_only_the_new_adapter_under_freeze(tiny_encoder, tmp_path):
    tasks = {}
    for kind in ("classification", "regression"):
        files = {split: str(write_jsonl(tmp_path / "data" / f"{kind}-{split}.jsonl", toy_rows(kind, n, seed)))
                 for split, n, seed in (("train", 16, 0), ("validation", 8, 1), ("test", 8, 2))}
        tasks[kind] = {**TASK_SPECS[kind], **files}
    data = {"model": {"encoder": str(tiny_encoder), "max_length": 32,
                      "peft": {"method": "lora", "r": 4, "sharing": "per_task"}},
            "tasks": {"classification": tasks["classification"]},
            "train": {"output_dir": str(tmp_path / "base"), "epochs": 1, "batch_size": 8, "lr": 1e-3,
                      "tensorboard": False, "progress": False, "precision": "fp32"}}
    polytask.train(polytask.load_config(data=data))
    task_file = tmp_path / "add.yaml"
    task_file.write_text(yaml.safe_dump({"tasks": {"regression": tasks["regression"]}}), encoding="utf-8")
    add_task(tmp_path / "base", task_file, output=str(tmp_path / "added"), method="freeze")
    old, new = polytask.load(tmp_path / "base"), polytask.load(tmp_path / "added" / "best")
    assert set(new.model.encoder.peft_config) == {"classification", "regression"}
    old_state, new_state = old.model.state_dict(), new.model.state_dict()
    for k, v in new_state.items():
        if ".regression." in k and "lora_B" in k:
            assert v.abs().sum() > 0, k  # the new adapter trained (LoRA's B starts at zero)
        elif k in old_state:
            assert torch.equal(v, old_state[k]), k  # the old adapter, the encoder and the old head did not


@pytest.mark.parametrize("method", METHODS)
def test_update_with_each_method(method, base, tmp_path):
    root, _ = base
    new_data = write_jsonl(tmp_path / "fresh.jsonl", toy_rows("token", 16, 9))
    result = update(root / "base", "token", new_data, output=str(tmp_path / "u"), method=method)
    report = result.report
    assert report["method"] == method and report["updated"] == "token"
    assert [r["task"] for r in report["old_tasks"]] == ["classification"]
    assert report["new_tasks"][0]["before"] is not None and report["new_tasks"][0]["after"] is not None
    old, new = polytask.load(root / "base"), polytask.load(tmp_path / "u" / "last")
    same_old_head = torch.equal(old.model.heads["classification"][-1].weight,
                                new.model.heads["classification"][-1].weight)
    assert same_old_head == (method != "replay")
    assert (encoder_distance(old, new) == 0.0) == (method == "freeze")


def test_training_on_keeps_the_base_model_and_resume_keeps_the_method(base, tmp_path, capsys, monkeypatch):
    root, task_file = base
    argv = ["add-task", str(root / "base"), str(task_file), "--output", str(tmp_path / "a")]
    assert main([*argv, "--set", "model.pooling=cls"]) == 2
    assert "config key 'model.pooling' differs from the base run's" in capsys.readouterr().err
    assert main([*argv, "--method", "freeze", "--set", "train.weighting.method=pcgrad", "--set",
                 "train.sampling=all_tasks"]) == 2
    assert "freeze with train.weighting.method: pcgrad is not supported" in capsys.readouterr().err
    assert main([*argv, "--method", "ewc"]) == 0
    assert main([*argv, "--method", "l2sp", "--resume"]) == 2
    assert "train.continual" in capsys.readouterr().err
