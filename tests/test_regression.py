"""Regression targets standardised by the training split: the unit the head learns in, the loss's scale, the
checkpoint spec, continual runs keeping the base head's unit, and the config key."""

from __future__ import annotations

import json
import math

import pytest
import torch

import polytask
from polytask.cli import main
from polytask.config import TaskConfig
from polytask.errors import UserError
from polytask.tasks import build_task
from polytask.tasks.base import Example
from tests.conftest import TASK_SPECS, toy_rows, write_jsonl

VALUES = [1.0, 2.0, 4.0, 5.0, 3.0]


def fitted(values, **cfg):
    task = build_task("score", TaskConfig(type="regression", **cfg))
    task.fit_labels([Example(f"t{i}", None, v, f"f:{i}") for i, v in enumerate(values)])
    return task


def test_fit_takes_the_training_mean_and_population_std():
    task = fitted(VALUES)
    mean = sum(VALUES) / 5
    assert task.target_mean == pytest.approx(mean)
    assert task.target_std == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in VALUES) / 5))
    off = fitted(VALUES, standardize=False)
    assert (off.target_mean, off.target_std) == (0.0, 1.0)
    assert fitted([2.5, 2.5, 2.5]).target_std == 1.0  # a constant target: no division by zero


def test_the_loss_does_not_depend_on_the_unit_of_the_labels():
    """Targets y and 1000 y + 7 from the same initial head give the same loss and the same head gradient."""
    x, y = torch.randn(6, 8), torch.tensor(VALUES + [2.0])
    losses, grads = [], []
    for scale, shift in ((1.0, 0.0), (1000.0, 7.0)):
        task = fitted([v * scale + shift for v in y.tolist()])
        torch.manual_seed(0)
        head = task.build_head(8, 0.0)
        loss = task.loss(head(x), y * scale + shift)
        loss.backward()
        losses.append(loss.item())
        grads.append(next(m for m in head if isinstance(m, torch.nn.Linear)).weight.grad.clone())
        out = head(x).squeeze(-1)
        z = (out - task.target_mean) / task.target_std  # what the linear layer produced
        assert torch.allclose(((out - (y * scale + shift)) ** 2).mean() / task.target_std ** 2,
                              ((z - (y - y.mean()) / y.std(unbiased=False)) ** 2).mean(), rtol=1e-4)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5)
    raw = fitted(VALUES, standardize=False)
    torch.manual_seed(0)
    head = raw.build_head(8, 0.0)
    assert raw.loss(head(x), y).item() == pytest.approx(((head(x).squeeze(-1) - y) ** 2).mean().item())


def test_a_run_stores_the_unit_and_reloads_to_the_same_predictions(tmp_path, tiny_encoder):
    files = {split: str(write_jsonl(tmp_path / f"{split}.jsonl", [{**r, "score": 10 + 50 * r["score"]}
                                                                   for r in toy_rows("regression", n, seed)]))
             for split, n, seed in (("train", 32, 0), ("validation", 8, 1), ("test", 8, 2))}
    data = {"model": {"encoder": str(tiny_encoder), "max_length": 32},
            "tasks": {"score": {**TASK_SPECS["regression"], **files}},
            "train": {"output_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 8, "lr": 1e-3,
                      "tensorboard": False, "progress": False, "precision": "fp32"}}
    run = polytask.train(polytask.load_config(data=data)).output_dir
    labels = [json.loads(line)["score"] for line in open(files["train"], encoding="utf-8")]
    spec = json.loads((run / "best" / "polytask.json").read_text())["tasks"]["score"]
    assert spec["target_mean"] == pytest.approx(sum(labels) / len(labels))
    predictor = polytask.load(run / "best")
    assert predictor.tasks["score"].target_std == pytest.approx(spec["target_std"])
    rows = [{"text": "fly to paris", "text2": "paris"}, {"text": "a bad trip to rome", "text2": "rome"}]
    first = predictor.predict(rows)
    again = polytask.load(run / "best").predict(rows)
    assert first == again
    values = [p["score"]["value"] for p in first]
    assert all(min(labels) - 50 < v < max(labels) + 50 for v in values)  # in the label's unit, not around 0


def test_training_on_from_a_run_keeps_the_base_heads_unit(tmp_path, tiny_encoder, capsys):
    rows = toy_rows("regression", 32, 0)
    files = {split: str(write_jsonl(tmp_path / f"{split}.jsonl", toy_rows("regression", n, seed)))
             for split, n, seed in (("train", 32, 0), ("validation", 8, 1))}
    data = {"model": {"encoder": str(tiny_encoder), "max_length": 32},
            "tasks": {"score": {**TASK_SPECS["regression"], **files}},
            "train": {"output_dir": str(tmp_path / "base"), "epochs": 1, "batch_size": 8, "lr": 1e-3,
                      "tensorboard": False, "progress": False, "precision": "fp32"}}
    polytask.train(polytask.load_config(data=data))
    base = polytask.load(tmp_path / "base" / "best").tasks["score"]
    shifted = write_jsonl(tmp_path / "new.jsonl", [{**r, "score": r["score"] + 100.0} for r in rows])
    assert main(["update", str(tmp_path / "base"), "--task", "score", "--data", str(shifted),
                 "--method", "none", "--output", str(tmp_path / "updated")]) == 0
    updated = polytask.load(tmp_path / "updated" / "best").tasks["score"]
    assert (updated.target_mean, updated.target_std) == (base.target_mean, base.target_std)


def test_standardize_is_a_regression_key(build_config):
    data = {"model": {"encoder": "x"}, "tasks": {"t": {"type": "classification", "train": "a.jsonl",
                                                       "standardize": False}}}
    with pytest.raises(UserError, match=r"tasks\.t\.standardize' is only for regression tasks"):
        build_config(data)
    data["tasks"]["t"] = {"type": "regression", "train": "a.jsonl", "standardize": "yes"}
    with pytest.raises(UserError, match=r"tasks\.t\.standardize"):
        build_config(data)


def strip_standardisation(folder):
    """Make a checkpoint look as one written before `standardize` existed: no key in the config, no unit in the
    task spec."""
    meta_path = folder / "polytask.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["tasks"]["score"].pop("standardize")
    for k in ("target_mean", "target_std"):
        meta["tasks"]["score"].pop(k)
    meta_path.write_text(json.dumps(meta))


def test_a_run_from_before_standardisation_loads_and_resumes_in_raw_units(tmp_path, tiny_encoder):
    files = {split: str(write_jsonl(tmp_path / f"{split}.jsonl", toy_rows("regression", n, seed)))
             for split, n, seed in (("train", 32, 0), ("validation", 8, 1))}
    data = {"model": {"encoder": str(tiny_encoder), "max_length": 32},
            "tasks": {"score": {**TASK_SPECS["regression"], **files, "standardize": False}},
            "train": {"output_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 8, "lr": 1e-3,
                      "tensorboard": False, "progress": False, "precision": "fp32"}}
    run = polytask.train(polytask.load_config(data=data)).output_dir
    rows = [{"text": "fly to paris", "text2": "paris"}]
    before = polytask.load(run / "best").predict(rows)
    for sub in ("best", "last"):
        strip_standardisation(run / sub)
    loaded = polytask.load(run / "best")
    assert (loaded.tasks["score"].target_mean, loaded.tasks["score"].target_std) == (0.0, 1.0)
    assert not loaded.config.tasks["score"].standardize and loaded.predict(rows) == before
    # resuming under today's default (standardised) would put a unit under weights trained without one: refused
    data["tasks"]["score"].pop("standardize")
    data["train"]["epochs"] = 2
    with pytest.raises(UserError, match=r"cannot resume: config section 'tasks' differs .*at tasks.score"):
        polytask.train(polytask.load_config(data=data), resume=True)
    data["tasks"]["score"]["standardize"] = False  # the run's own setting: it resumes
    assert polytask.train(polytask.load_config(data=data), resume=True).global_step >= 4


def test_resume_after_the_training_file_changed_is_refused(tmp_path, tiny_encoder):
    rows = toy_rows("regression", 32, 0)
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    data = {"model": {"encoder": str(tiny_encoder), "max_length": 32},
            "tasks": {"score": {**TASK_SPECS["regression"], "train": str(train_file),
                                "validation": str(write_jsonl(tmp_path / "val.jsonl", toy_rows("regression", 8, 1)))}},
            "train": {"output_dir": str(tmp_path / "run"), "epochs": 1, "batch_size": 8, "lr": 1e-3,
                      "tensorboard": False, "progress": False, "precision": "fp32"}}
    polytask.train(polytask.load_config(data=data))
    write_jsonl(train_file, [{**r, "score": r["score"] * 3} for r in rows])  # same rows, other targets
    data["train"]["epochs"] = 2
    with pytest.raises(UserError, match=r"cannot resume: task 'score' fitted other target_mean, target_std on its "
                                        r"training data"):
        polytask.train(polytask.load_config(data=data), resume=True)
