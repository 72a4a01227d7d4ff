"""Joint batches: tasks that read the same inputs share one encoder pass per input (data/joint.py)."""

from __future__ import annotations

import json
import random

import pytest
import torch

import polytask
from tests.conftest import CITIES, toy_utterance, write_jsonl
from tests.test_resume_ddp import final_eval, interrupt_and_resume, train_two_processes, write_config


def joint_rows(n: int, seed: int, unlabelled_every: int = 0) -> list[dict]:
    """One utterance per row with a sentence label (mood), a multi-label set and word tags (the city)."""
    rng = random.Random(f"joint-{seed}")
    rows = []
    for i in range(n):
        words, city, pos, mood = toy_utterance(rng)
        tags = ["O"] * len(words)
        tags[pos] = "B-city"
        row = {"text": " ".join(words), "words": words, "label": "pos" if mood == "good" else "neg",
               "labels": ["east" if city in CITIES[:4] else "west"], "tags": tags}
        if unlabelled_every and i % unlabelled_every == 1:
            row["label"] = None  # this row has no sentence label: only the tagging task learns from it
        rows.append(row)
    return rows


@pytest.fixture
def joint_config(tmp_path, tiny_encoder):
    def make(n_train=24, unlabelled_every=0, train=None, tasks=("mood", "city")) -> dict:
        files = {split: str(write_jsonl(tmp_path / "data" / f"{split}.jsonl",
                                        joint_rows(n, seed, unlabelled_every if split == "train" else 0)))
                 for split, n, seed in (("train", n_train, 0), ("validation", 8, 1), ("test", 8, 2))}
        specs = {"mood": {"type": "classification", "text": "text", "label": "label"},
                 "city": {"type": "token_classification", "text": "words", "label": "tags"},
                 "region": {"type": "multilabel_classification", "text": "text", "label": "labels"}}
        return {"model": {"encoder": str(tiny_encoder), "max_length": 32},
                "tasks": {t: {**specs[t], **files} for t in tasks},
                "train": {"output_dir": str(tmp_path / "run"), "epochs": 2, "batch_size": 8, "lr": 1e-3,
                          "tensorboard": False, "progress": False, "logging_steps": 2, "precision": "fp32",
                          **(train or {})}}
    return make


def count_encoder_rows(model) -> list[int]:
    seen: list[int] = []

    def hook(module, args, kwargs):
        if module.training:
            x = kwargs.get("input_ids")
            x = kwargs.get("inputs_embeds") if x is None else x
            seen.append(x.shape[0])
    model.encoder.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_tasks_reading_the_same_file_form_one_source(joint_config, build_config, capsys):
    from polytask.train.setup import build_run

    run = build_run(build_config(joint_config(tasks=("mood", "city", "region"))))
    assert list(run.sources) == ["mood+city+region"]
    src = run.sources["mood+city+region"]
    assert len(src) == 24 and all(i >= 0 for t in src.tasks for i in src.index[t])
    assert run.steps_per_epoch == 3  # 24 inputs / batch 8, not 3 x 3 one-task batches
    assert "mood + city + region share one encoder pass" in capsys.readouterr().err


def test_joint_batches_off_trains_one_task_per_batch(joint_config, build_config):
    from polytask.train.setup import build_run

    run = build_run(build_config(joint_config(train={"joint_batches": "off"})))
    assert list(run.sources) == ["mood", "city"] and run.steps_per_epoch == 6


@pytest.fixture
def encoder_rows(monkeypatch) -> list[list[int]]:
    """Per model that ``train`` builds, the row count of every training-mode encoder pass."""
    import importlib

    setup = importlib.import_module("polytask.train.setup")  # (polytask.train is also the train() function)
    multitask = importlib.import_module("polytask.model.multitask")  # build_model's MultiTaskModel
    real = setup.MultiTaskModel
    counts: list[list[int]] = []

    def spying(*a, **kw):
        m = real(*a, **kw)
        counts.append(count_encoder_rows(m))
        return m

    monkeypatch.setattr(setup, "MultiTaskModel", spying)
    monkeypatch.setattr(multitask, "MultiTaskModel", spying)
    return counts


def test_an_epoch_runs_each_input_through_the_encoder_once(joint_config, build_config, encoder_rows):
    counts = encoder_rows
    result = polytask.train(build_config(joint_config(n_train=24, train={"epochs": 1})))
    assert sum(counts[0]) == 24  # 24 utterances, each once, for both tasks
    assert result.global_step == 3
    logged = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/mood", "loss/city"} <= set(next(r for r in logged if r["type"] == "train"))


def test_joint_gradient_equals_the_sum_of_per_task_gradients(joint_config, build_config):
    """One pass with both heads = the sum of each task's own gradient on the same rows (dropout off)."""
    from accelerate import Accelerator

    from polytask.train.loop import train_step
    from polytask.train.setup import build_run

    run = build_run(build_config(joint_config(tasks=("mood", "city", "region"))))
    run.model.eval()
    acc = Accelerator(cpu=True)
    rows = list(range(8))
    run.model.zero_grad()
    train_step(acc, run.model, run, [("mood+city+region", rows)], step=0)
    joint = {n: p.grad.clone() for n, p in run.model.named_parameters() if p.grad is not None}
    total: dict[str, torch.Tensor] = {}
    for t in ("mood", "city", "region"):
        run.model.zero_grad()
        batch = run.collate("mood+city+region", rows)
        logits = run.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], tasks=[t])
        pos, labels = batch["parts"][t]
        run.tasks[t].loss(logits[t][pos], labels).backward()
        for n, p in run.model.named_parameters():
            if p.grad is not None:
                total[n] = total.get(n, 0) + p.grad
    assert set(joint) == set(total)
    for n in joint:
        torch.testing.assert_close(joint[n], total[n], rtol=1e-4, atol=1e-6, msg=n)


def test_rows_without_a_label_are_masked_out_of_that_task(joint_config, build_config):
    from polytask.train.setup import build_run

    run = build_run(build_config(joint_config(n_train=24, unlabelled_every=3)))
    src = run.sources["mood+city"]
    assert len(src) == 24  # every utterance still trains the tagging task
    assert sum(i >= 0 for i in src.index["mood"]) == 16 and sum(i >= 0 for i in src.index["city"]) == 24
    rows = list(range(4, 24, 2))  # a batch mixing rows with and without a mood label
    batch = run.collate("mood+city", rows)
    pos, labels = batch["parts"]["mood"]
    has_mood = [k for k, r in enumerate(rows) if src.index["mood"][r] >= 0]
    assert pos.tolist() == has_mood and labels.shape == (len(has_mood),) and 0 < len(has_mood) < len(rows)
    assert batch["parts"]["city"][0].tolist() == list(range(len(rows)))
    result = polytask.train(build_config(joint_config(n_train=24, unlabelled_every=3, train={"epochs": 1})))
    assert result.global_step == 3


def test_a_lone_task_with_an_empty_label_is_still_an_error(joint_config, build_config):
    from polytask.errors import UserError

    with pytest.raises(UserError, match="train.jsonl:2"):
        polytask.train(build_config(joint_config(unlabelled_every=3, tasks=("mood",))))


def test_different_inputs_on_the_same_file_are_not_grouped(joint_config, build_config, capsys):
    from polytask.train.setup import build_run

    data = joint_config()
    data["tasks"]["mood"]["text_pair"] = "text"  # a pair task: another encoder input than the tagging task's
    run = build_run(build_config(data))
    assert list(run.sources) == ["mood", "city"]
    assert "tokenise" in capsys.readouterr().err


def test_needs_all_tasks_methods_work_with_any_sampling_when_tasks_share_inputs(joint_config, build_config):
    result = polytask.train(build_config(joint_config(train={"epochs": 1, "weighting": {"method": "pcgrad"}})))
    assert result.global_step == 3


@pytest.mark.parametrize("extra", [{}, {"adversarial": {"method": "fgm"}}, {"grad_accum": 2},
                                   {"weighting": {"method": "uw"}}])
def test_joint_resume_equals_a_straight_run(extra, joint_config, build_config, monkeypatch, tmp_path):
    data = joint_config(train={"epochs": 2, **extra})
    straight = polytask.train(build_config(data))
    data["train"]["output_dir"] = str(tmp_path / "resumed")
    stop = 3 if "grad_accum" in extra else 4  # mid epoch 2 (2 or 3 optimizer steps per epoch)
    resumed = interrupt_and_resume(build_config(data), stop_at=stop, monkeypatch=monkeypatch)
    assert final_eval(straight.output_dir) == final_eval(resumed.output_dir)


def test_joint_batches_under_two_processes(joint_config, tmp_path):
    data = joint_config(train={"epochs": 1})
    proc = train_two_processes(write_config(tmp_path, data, "joint"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # (the YAML file lists the tasks sorted: city first) the processes ended with the same model, or the run
    # would have failed in check_processes_agree
    assert "city + mood share one encoder pass" in proc.stderr


def test_a_nan_loss_stops_cleanly_and_resume_continues(joint_config, tmp_path, monkeypatch, capsys):
    """A NaN loss at step 5 (mid epoch 2): exit 2 naming task/step/example; last/ stays the step-3 state."""
    import hashlib

    import yaml

    from polytask.cli import main
    from polytask.tasks.classification import Classification

    data = joint_config(train={"epochs": 3})
    cfg = tmp_path / "nan.yaml"
    cfg.write_text(yaml.safe_dump(data), encoding="utf-8")
    real, calls = Classification.loss, []

    def poisoned(self, logits, labels):
        calls.extend([1] if logits.requires_grad else [])  # training steps only, not validation
        loss = real(self, logits, labels)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(Classification, "loss", poisoned)
    run_dir = tmp_path / "run"
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "training stopped at optimizer step 5" in err and "the loss of task 'mood' is nan" in err
    assert "train.jsonl:" in err  # the batch's first example, file:line
    state = json.loads((run_dir / "last" / "training_state" / "trainer_state.json").read_text())
    assert state["global_step"] == 3  # the end of epoch 1: the last good save
    digest = hashlib.sha256((run_dir / "last" / "model.safetensors").read_bytes()).hexdigest()

    monkeypatch.setattr(Classification, "loss", real)
    assert main(["train", str(cfg), "--resume"]) == 0
    state = json.loads((run_dir / "last" / "training_state" / "trainer_state.json").read_text())
    assert state["global_step"] == 9 and state["finished"]
    assert hashlib.sha256((run_dir / "last" / "model.safetensors").read_bytes()).hexdigest() != digest


def test_all_tasks_runs_inputs_of_very_different_lengths_as_separate_segments(toy_config, build_config, tmp_path):
    """sampling: all_tasks pads short and long tasks separately, in ONE model call, same gradient as stacked."""
    from accelerate import Accelerator

    from polytask.data.joint import segment_sources, stack_sources
    from polytask.train.loop import train_step
    from polytask.train.setup import build_run

    data = toy_config(["classification", "token"], n_train=16, n_eval=8, train={"sampling": "all_tasks"})
    data["model"]["max_length"] = 64
    long_rows = [json.loads(x) for x in open(data["tasks"]["classification"]["train"])]
    for r in long_rows:
        r["text"] = " ".join([r["text"]] * 8)  # ~50 tokens against the tagging task's ~8
    write_jsonl(tmp_path / "long.jsonl", long_rows)
    data["tasks"]["classification"]["train"] = str(tmp_path / "long.jsonl")
    run = build_run(build_config(data))
    run.model.eval()
    window = [("classification", list(range(8))), ("token", list(range(8)))]
    batches = [run.collate(s, r) for s, r in window]
    segments = segment_sources(batches, run.pad_id, run.tasks)
    assert [seg[0]["input_ids"].shape[1] for seg in segments] == sorted(b["input_ids"].shape[1] for b in batches)
    lengths: list[int] = []
    run.model.encoder.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["input_ids"].shape[1]),
                                                with_kwargs=True)
    calls: list[int] = []
    run.model.register_forward_pre_hook(lambda m, a, kw: calls.append(1) if "segments" in kw else None,
                                        with_kwargs=True)
    run.model.zero_grad()
    train_step(Accelerator(cpu=True), run.model, run, window, step=0)
    segmented = [p.grad.clone() for p in run.model.parameters() if p.grad is not None]
    assert calls == [1] and sorted(lengths) == sorted(b["input_ids"].shape[1] for b in batches)  # one model call
    # the same gradient as one stacked pass padded to the longest
    inputs, parts = stack_sources(batches, run.pad_id, run.tasks)
    run.model.zero_grad()
    logits = run.model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], tasks=list(parts))
    sum(run.tasks[t].loss(logits[t][pos], lab) for t, (pos, lab) in parts.items()).backward()
    stacked = [p.grad.clone() for p in run.model.parameters() if p.grad is not None]
    for a, b in zip(segmented, stacked):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("raw, expected", [("off", "off"), ("'off'", "off"), ("auto", "auto"), ("on", "auto")])
def test_joint_batches_reads_a_bare_yaml_off(raw, expected, joint_config, build_config):
    assert build_config(joint_config(), [f"train.joint_batches={raw}"]).train.joint_batches == expected


def test_resume_takes_the_configs_learning_rate(joint_config, build_config, tmp_path):
    """After a NaN the advice is --resume with a lower lr: the resumed optimizer must use it."""
    data = joint_config(train={"epochs": 1})
    polytask.train(build_config(data))
    from polytask.train.checkpoint import load_last
    from polytask.train.early_stopping import EarlyStopping
    from polytask.train.setup import build_run

    lower = build_config(data, ["train.lr=1e-5", "train.head_lr=1e-5"])
    run = build_run(lower)
    load_last(tmp_path / "run" / "last", run, EarlyStopping.from_config(lower.train.early_stopping), 0, 1)
    assert all(g["initial_lr"] == 1e-5 for g in run.optimizer.param_groups)
    assert all(g["lr"] <= 1e-5 for g in run.optimizer.param_groups)
    assert run.scheduler.get_last_lr() == [g["lr"] for g in run.optimizer.param_groups]


def test_resume_refuses_another_batch_plan(joint_config, build_config):
    from polytask.errors import UserError

    data = joint_config(train={"epochs": 2, "save_steps": 1})
    polytask.train(build_config(data))
    with pytest.raises(UserError, match="batch plan differs"):
        polytask.train(build_config(data, ["train.joint_batches=off", "train.epochs=3"]), resume=True)


def test_partially_labelled_joint_batches_refuse_methods_that_need_every_task(joint_config, build_config):
    from polytask.errors import UserError

    data = joint_config(unlabelled_every=3, train={"weighting": {"method": "pcgrad"}})
    with pytest.raises(UserError, match="train.weighting.method"):
        polytask.train(build_config(data))


def test_atis_runs_each_utterance_through_the_encoder_once_per_epoch(tiny_encoder, tmp_path, encoder_rows):
    """examples/atis.yaml (intent reads `text`, slots read `words`): one encoder pass per utterance per epoch."""
    from pathlib import Path

    from polytask.config import load_config

    counts = encoder_rows
    example = Path(__file__).parent.parent / "examples" / "atis.yaml"
    cfg = load_config(example, [f"model.encoder={tiny_encoder}", "train.epochs=1", f"train.output_dir={tmp_path}",
                                "train.progress=false", "train.tensorboard=false", "train.precision=fp32",
                                "tasks.intent.max_eval_samples=16", "tasks.slots.max_eval_samples=16"])
    result = polytask.train(cfg)
    assert sum(counts[0]) == 4123  # the ATIS training utterances, each once (not once per task)
    assert result.global_step == 258  # ceil(4123 / 16) joint batches
