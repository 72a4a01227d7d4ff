"""Train -> save -> load -> predict for every task type, exact reload, one encoder pass for all tasks."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

import polytask
from polytask.data.features import collate
from polytask.tasks import TASK_TYPES
from tests.conftest import TASK_SPECS

KIND_OF_TYPE = {spec["type"]: kind for kind, spec in TASK_SPECS.items()}


def test_every_task_type_is_covered_by_the_toy_data():
    assert sorted(KIND_OF_TYPE) == TASK_TYPES.names()


def logits_of(model, tasks, tokenizer, features_by_task):
    model.eval()
    out = {}
    with torch.no_grad():
        for name, feats in features_by_task.items():
            batch = collate(feats, tasks[name], tokenizer.pad_token_id)
            out[name] = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                              tasks=[name])[name]
    return out


@pytest.mark.parametrize("task_type", TASK_TYPES.names())
def test_train_save_load_predicts_identically(task_type, toy_config, build_config):
    kind = KIND_OF_TYPE[task_type]
    cfg = build_config(toy_config([kind], n_train=24, n_eval=8, train={"epochs": 2}))
    result = polytask.train(cfg)
    assert result.global_step == 2 * 3  # 24 examples / batch 8 = 3 batches per epoch
    loaded = polytask.load(result.output_dir / "last")
    from polytask.data.features import prepare_task_data

    data = prepare_task_data(loaded.tasks, loaded.tokenizer, cfg.model.max_length, splits=("validation",),
                             fit_labels=False)
    feats = {n: d.features["validation"] for n, d in data.items()}
    before = logits_of(result.model, loaded.tasks, loaded.tokenizer, feats)
    after = logits_of(loaded.model, loaded.tasks, loaded.tokenizer, feats)
    for name in before:
        assert torch.equal(before[name], after[name]), name  # bit-identical, not merely close

    # the label vocabulary travels with the checkpoint
    meta = json.loads((result.output_dir / "last" / "polytask.json").read_text())
    assert meta["tasks"][kind]["type"] == task_type
    assert meta["polytask_version"] == polytask.__version__

    preds = loaded.predict([{"text": "show me flights boston good", "text2": "boston",
                             "words": ["show", "me", "flights", "boston", "good"]}])
    p = preds[0][kind]
    if task_type == "classification":
        assert p["label"] in ("pos", "neg") and 0.0 <= p["score"] <= 1.0
    elif task_type == "multilabel_classification":
        assert p["labels"] and set(p["labels"]) <= {"city_east", "city_west", "mood"}
    elif task_type == "token_classification":
        assert len(p["tags"]) == 5 and all(isinstance(s["start"], int) for s in p["spans"])
    elif task_type == "retrieval":  # the corpus's 10 documents, best first
        assert len(p["documents"]) == 10 and {d["id"] for d in p["documents"]} >= {"boston", "weather"}
        scores = [d["score"] for d in p["documents"]]
        assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)
    else:
        assert isinstance(p["value"], float)


def test_multitask_model_learns_toy_tasks(toy_config, build_config):
    data = toy_config(["classification", "token"], n_train=160, n_eval=40,
                      train={"epochs": 6, "lr": 3e-3, "early_stopping": {"patience": None}})
    result = polytask.train(build_config(data))
    # chance: 0.5 accuracy; a city tag predicted nowhere gives span F1 0
    assert result.validation["classification.accuracy"] >= 0.9
    assert result.validation["token.f1"] >= 0.9


def test_one_encoder_pass_answers_every_task(toy_config, build_config):
    data = toy_config(["classification", "multilabel", "token"], n_train=16, n_eval=8, train={"epochs": 1})
    result = polytask.train(build_config(data))
    model = polytask.load(result.best_dir)
    calls = []
    hook = model.model.encoder.register_forward_hook(lambda *a: calls.append(1))
    texts = ["show me flights boston good", "cheap miami bad now", "the a to denver good"]
    preds = model.predict(texts, batch_size=8)
    hook.remove()
    assert len(calls) == 1  # one batch, one encoder forward for three tasks
    assert all(set(p) == {"classification", "multilabel", "token"} for p in preds)
    subset = model.predict(texts, tasks=["token"])
    assert all(set(p) == {"token"} for p in subset)
    assert [p["token"] for p in subset] == [p["token"] for p in preds]
    # tasks reading the same column are tokenised once (classification + multilabel share; token differs)
    encodes = []
    for task in model.tasks.values():
        orig = task.encode
        task.encode = lambda *a, _orig=orig, **k: encodes.append(1) or _orig(*a, **k)
    assert model.predict(texts, batch_size=8) == preds
    assert len(encodes) == 2


def test_best_checkpoint_and_logs(toy_config, build_config):
    data = toy_config(["classification"], n_train=16, n_eval=8, train={"epochs": 2, "tensorboard": True})
    result = polytask.train(build_config(data))
    records = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]  # once per epoch
    assert all("classification.accuracy" in r and "mean" in r for r in evals)
    assert any(r["type"] == "train" and "loss/classification" in r for r in records)
    assert list((result.output_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (result.best_dir / "model.safetensors").is_file()
    assert not list(result.output_dir.glob(".*tmp*"))  # no temp folder left behind


def test_early_stopping_stops(toy_config, build_config):
    # lr so small nothing changes: the metric never improves after the first validation
    data = toy_config(["classification"], n_train=16, n_eval=8,
                      train={"epochs": 10, "lr": 1e-12, "head_lr": 1e-12, "early_stopping": {"patience": 2}})
    result = polytask.train(build_config(data))
    assert result.stopped_early
    assert result.global_step == 3 * 2  # epoch 1 best, epochs 2 and 3 without improvement -> stop


def test_grad_accum_matches_larger_batch(toy_config, build_config):
    """Two accumulated micro-batches of 4 give the gradient of one batch of 8 (dropout off)."""
    from polytask.train.setup import build_run

    cfg = build_config(toy_config(["classification"], n_train=16, n_eval=8))
    assert_accumulation_matches(build_run(cfg), "classification")


def assert_accumulation_matches(run, task: str) -> None:
    """Two accumulated micro-batches of 4 rows of ``task`` give the gradient of one batch of those 8 rows."""
    from accelerate import Accelerator

    from polytask.train.loop import train_step

    run.model.eval()  # no dropout: both paths see the same function
    acc = Accelerator(cpu=True)
    idx = list(range(8))

    def grads(window):
        run.model.zero_grad()
        train_step(acc, run.model, run, window, step=0)
        return [p.grad.clone() for p in run.model.parameters() if p.grad is not None]

    one = grads([(task, idx)])
    two = grads([(task, idx[:4]), (task, idx[4:])])
    assert len(one) == len(two) > 0
    for g1, g2 in zip(one, two):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_bf16_with_grad_accum_trains_and_reloads(toy_config, build_config):
    data = toy_config(["classification", "token"], n_train=16, n_eval=8,
                      train={"epochs": 1, "precision": "bf16", "grad_accum": 2})
    result = polytask.train(build_config(data))
    assert result.global_step == 2  # 4 micro-batches / 2 accumulated
    model = polytask.load(result.best_dir)
    preds = model.predict(["show me boston good"])
    assert set(preds[0]) == {"classification", "token"}


def test_all_tasks_sampling_runs_one_model_call_per_step(toy_config, build_config):
    """Under sampling: all_tasks a step runs one batch of every task in ONE model call (one DDP forward): batches
    of similar length stacked into one encoder pass, the longer sentence pairs in a segment of their own."""
    data = toy_config(["classification", "token", "regression"], n_train=24, n_eval=8,
                      train={"epochs": 2, "sampling": "all_tasks", "grad_accum": 1})
    cfg = build_config(data)
    from polytask.train.setup import build_run

    run = build_run(cfg)
    assert run.steps_per_epoch == 3  # ceil(24 / 8) batches of each task, all three in every step
    calls, model_calls = [], []
    run.model.encoder.register_forward_hook(lambda *a: calls.append(1))
    run.model.register_forward_hook(lambda *a: model_calls.append(1))
    from accelerate import Accelerator

    from polytask.train.loop import train_step

    window = run.plan.epoch(0)[:3]
    losses = train_step(Accelerator(cpu=True), run.model, run, window, step=0)
    assert set(losses) == {"classification", "token", "regression"}
    # one model call; inside it, the two single-sentence tasks share a pass and the pair task has its own
    assert len(calls) == 2 and len(model_calls) == 1
    result = polytask.train(cfg)
    assert result.global_step == 6
    pred = polytask.load(result.best_dir).predict([{"text": "show me boston good", "text2": "boston"}])
    assert set(pred[0]) == set(losses)


def test_stacked_tasks_get_the_gradient_of_separate_batches(toy_config, build_config):
    """Stacking pads to a common length; with dropout off the gradient equals that of separate passes."""
    from accelerate import Accelerator

    from polytask.train.loop import train_step
    from polytask.train.setup import build_run

    cfg = build_config(toy_config(["classification", "token"], n_train=16, n_eval=8,
                                  train={"sampling": "all_tasks"}))
    run = build_run(cfg)
    run.model.eval()
    acc = Accelerator(cpu=True)

    def grads(window, per_step):
        run.model.zero_grad()
        run.plan.tasks_per_step = per_step
        train_step(acc, run.model, run, window, step=0)
        return [p.grad.clone() for p in run.model.parameters() if p.grad is not None]

    window = [("classification", list(range(8))), ("token", list(range(8)))]
    stacked = grads(window, 2)
    separate = [g * 2 for g in grads(window, 1)]  # two groups of one: each backward was halved
    for g1, g2 in zip(stacked, separate):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


def test_encoder_dropout_is_on_from_the_first_step(toy_config, build_config):
    """from_pretrained returns the encoder in eval mode; training must switch it (and every head) to train."""
    import polytask.model.encoder as enc

    modes = []
    real = enc.load_encoder

    def spying_load(folder, from_config_only=False):
        model = real(folder, from_config_only)
        model.register_forward_pre_hook(lambda m, args: modes.append(m.training))
        return model

    setup = importlib.import_module("polytask.train.setup")  # (polytask.train is also the train() function)
    setup.load_encoder, saved = spying_load, setup.load_encoder
    try:
        polytask.train(build_config(toy_config(["classification"], n_train=16, n_eval=8, train={"epochs": 1})))
    finally:
        setup.load_encoder = saved
    assert modes[0] is True  # the first training forward, before any validation
