"""Meta-learning (train.meta) and few-shot adaptation (polytask adapt): the outer updates against a hand-written
inner loop, episode sampling, end-to-end runs, resume, and bad input."""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

import polytask
from polytask.cli import main as cli
from polytask.data.features import collate
from polytask.meta.base import episode_labels
from polytask.meta.fomaml import FOMAML
from polytask.meta.reptile import Reptile
from tests.conftest import write_jsonl
from tests.test_resume_ddp import final_eval

META = {"ways": 2, "shots": 2, "query_shots": 2, "inner_steps": 2, "eval_episodes": 2, "episodes_per_epoch": 8}


def meta_config(toy_config, method="reptile", kinds=("classification", "multilabel", "token"), **options):
    return toy_config(list(kinds), n_train=32, n_eval=16, train={"meta": {"method": method, **META, **options}})


def built_run(toy_config, build_config, method, kinds=("classification",), **options):
    from polytask.train.setup import build_run

    return build_run(build_config(meta_config(toy_config, method, kinds, **options)))


def hand_inner_loop(model, task, features, episode, lr, head_lr, steps):
    """The inner loop written out: plain SGD steps (θ <- θ - lr ∇L) on a copy of the encoder and a zero head."""
    m = copy.deepcopy(model)
    params = [p for p in m.encoder.parameters() if p.requires_grad]
    width = len(episode.classes) if episode.classes is not None else task.num_outputs
    w = torch.zeros(width, m.encoder.config.hidden_size, requires_grad=True)
    b = torch.zeros(width, requires_grad=True)

    def loss_of(rows):
        batch = collate([features[i] for i in rows], task, 0)
        labels = episode_labels(task, batch["labels"], episode.classes)
        hidden = m.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        x = hidden if task.level == "token" else m.pool(hidden, batch["attention_mask"])
        return task.loss(x @ w.T + b, labels)

    for _ in range(steps):
        grads = torch.autograd.grad(loss_of(episode.support), params + [w, b], allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads[:-2]):
                if g is not None:
                    p -= lr * g
            w -= head_lr * grads[-2]
            b -= head_lr * grads[-1]
    query = torch.autograd.grad(loss_of(episode.query), params, allow_unused=True) if episode.query else None
    return [p.detach() for p in params], query


@pytest.mark.parametrize("method", ["reptile", "fomaml"])
@pytest.mark.parametrize("kind", ["classification", "multilabel", "token"])
def test_meta_gradient_matches_a_hand_computed_inner_loop(method, kind, toy_config, build_config):
    run = built_run(toy_config, build_config, method, kinds=(kind,), inner_optimizer="sgd", inner_lr=0.05,
                    inner_head_lr=0.5, inner_steps=3)
    model = run.model.eval()  # no dropout: both computations see the same function
    learner, task = run.meta, run.tasks[kind]
    start = [p.detach().clone() for p in model.encoder.parameters()]
    grads, losses = learner.step(model, [(kind, [7])], torch.device("cpu"), contextlib.nullcontext)
    # the model is back at its starting point
    assert all(torch.equal(a, p) for a, p in zip(start, model.encoder.parameters()))
    episode = learner.episode(kind, 7)
    adapted, query = hand_inner_loop(model, task, run.data[kind].features["train"], episode, 0.05, 0.5, 3)
    if method == "reptile":
        expected = [s - a for s, a in zip(start, adapted)]  # θ - θ'
        assert not episode.query  # Reptile reads no query set
    else:
        expected = [torch.zeros_like(s) if g is None else g for s, g in zip(start, query)]  # ∇L_query(θ')
        assert f"{kind}_query" in losses
    assert sum(float(e.abs().sum()) for e in expected) > 0  # the inner loop moved the encoder
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, atol=1e-6, rtol=1e-4)


def test_outer_update_rules_and_their_average_over_episodes(toy_config, build_config):
    assert [t.tolist() for t in Reptile().gradient([torch.tensor([1.0, 2.0])], [torch.tensor([0.5, 3.0])], None)] \
        == [[0.5, -1.0]]
    g = FOMAML().gradient([torch.zeros(2), torch.zeros(1)], [torch.ones(2), torch.ones(1)], [torch.tensor([0.3, 0.1]),
                                                                                               None])
    assert [t.tolist() for t in g] == [pytest.approx([0.3, 0.1]), [0.0]]
    run = built_run(toy_config, build_config, "reptile", inner_optimizer="sgd", inner_lr=0.05, inner_head_lr=0.5)
    model, cpu = run.model.eval(), torch.device("cpu")
    one = [run.meta.step(model, [("classification", [p])], cpu, contextlib.nullcontext)[0] for p in (1, 2)]
    both, _ = run.meta.step(model, [("classification", [1]), ("classification", [2])], cpu, contextlib.nullcontext)
    for a, b, m in zip(*one, both):
        assert torch.allclose((a + b) / 2, m, atol=1e-7)


@pytest.mark.parametrize("kind", ["classification", "multilabel", "token"])
def test_episodes_have_ways_and_shots_per_label_are_seeded_and_use_training_rows_only(kind, toy_config,
                                                                                      build_config):
    run = built_run(toy_config, build_config, "fomaml", kinds=(kind,))
    learner = run.meta
    feats = run.data[kind].features["train"]
    a, again, other = learner.episode(kind, 3), learner.episode(kind, 3), learner.episode(kind, 4)
    assert (a.support, a.query, a.classes) == (again.support, again.query, again.classes)  # seeded by position
    assert (a.support, a.query) != (other.support, other.query)
    for p in range(40):  # no row twice: support and query disjoint (multi-label rows carry several labels)
        e = learner.episode(kind, p)
        assert len(set(e.support + e.query)) == len(e.support + e.query)
    assert all(0 <= i < len(feats) for i in a.support + a.query)  # indices into the training features
    if kind == "token":
        assert a.classes is None and len(a.support) == len(a.query) == 2 * 2
        return
    assert len(a.classes) == 2
    for rows in (a.support, a.query):
        for c in a.classes:  # every picked label has its shots among the rows
            carrying = [i for i in rows if c in (feats[i]["labels"] if kind == "multilabel" else [feats[i]["labels"]])]
            assert len(carrying) >= 2
        if kind == "classification":
            assert Counter(feats[i]["labels"] for i in rows) == {c: 2 for c in a.classes}
    # validation episodes index the validation split's rows, with the labels they were drawn for
    val = run.data[kind].features["validation"]
    assert learner.validation[kind] and all(len(e.query) for e in learner.validation[kind])
    for e in learner.validation[kind]:
        assert all(0 <= i < len(val) for i in e.support + e.query)
        for i in e.support + e.query:
            carried = val[i]["labels"] if kind == "multilabel" else [val[i]["labels"]]
            assert set(carried) & set(e.classes)


def test_meta_training_end_to_end_writes_episode_validation_and_a_loadable_encoder(toy_config, tmp_path):
    data = meta_config(toy_config, "fomaml")
    cfg = tmp_path / "meta.yaml"
    cfg.write_text(yaml.safe_dump(data))
    assert cli(["train", str(cfg)]) == 0
    out = Path(data["train"]["output_dir"])
    last = final_eval(out)
    assert {"classification.episode_accuracy", "multilabel.episode_accuracy", "token.episode_accuracy",
            "mean", "loss"} <= set(last)
    assert 0.0 <= last["mean"] <= 1.0
    # the encoder moved away from the pretrained one (the outer updates were applied)
    trained = polytask.load(out / "best").model.encoder
    from polytask.model.encoder import load_encoder

    fresh = load_encoder(Path(data["model"]["encoder"]))
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), fresh.state_dict().values()))


def test_meta_run_resumed_mid_run_matches_the_uninterrupted_run(toy_config, build_config, monkeypatch):
    data = meta_config(toy_config, "reptile", kinds=("classification", "token"), episodes_per_epoch=6)
    data["train"].update(epochs=2, save_steps=2, logging_steps=1)
    data["train"]["output_dir"] = str(Path(data["train"]["output_dir"]).parent / "straight")
    straight = polytask.train(build_config(data))
    data["train"]["output_dir"] = str(Path(data["train"]["output_dir"]).parent / "resumed")
    loop = importlib.import_module("polytask.train.loop")
    real = loop.meta_step

    def interrupted(accelerator, model, run, window, step, epoch=0):
        if step == 5:  # mid-epoch (6 steps an epoch): resumed from the state saved at step 4
            raise KeyboardInterrupt
        return real(accelerator, model, run, window, step, epoch)

    monkeypatch.setattr(loop, "meta_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        polytask.train(build_config(data))
    monkeypatch.setattr(loop, "meta_step", real)
    resumed = polytask.train(build_config(data), resume=True)
    assert straight.global_step == resumed.global_step == 12
    assert final_eval(straight.output_dir) == final_eval(resumed.output_dir)
    a, b = polytask.load(straight.output_dir / "last").model, polytask.load(resumed.output_dir / "last").model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("change, message", [
    ({"kinds": ("classification", "regression")}, "meta-learning episodes are built for"),
    ({"meta": {"ways_": 3}}, "unknown config key 'train.meta.ways_'"),
    ({"meta": {"method": "maml"}}, "train.meta.method"),
    ({"meta": {"shots": 30}}, "fewer than two labels with shots = 30 training rows"),  # reptile: no query set
    ({"meta": {"ways": 1}}, "train.meta.ways"),
    ({"one_label": True}, "has a single label ('pos')"),
])
def test_bad_meta_input_exits_2_with_one_message(change, message, toy_config, tmp_path, capsys):
    data = meta_config(toy_config, "reptile", kinds=change.get("kinds", ("classification",)))
    data["train"]["meta"].update(change.get("meta", {}))
    if change.get("one_label"):
        rows = [{"text": f"good words {i}", "label": "pos"} for i in range(20)]
        for split in ("train", "validation", "test"):
            data["tasks"]["classification"][split] = str(write_jsonl(tmp_path / "one.jsonl", rows))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(data))
    assert cli(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("polytask: error:") == 1 and "Traceback" not in err
    assert not (Path(data["train"]["output_dir"]) / "best").exists()


def adapt_task(tmp_path, toy_config, name="newtask", **extra) -> Path:
    data = toy_config(["classification"], n_train=40, n_eval=16)
    spec = {**data["tasks"]["classification"], **extra}
    path = tmp_path / "adapt.yaml"
    train = {"epochs": 3, "precision": "fp32", "progress": False, "tensorboard": False}
    path.write_text(yaml.safe_dump({"tasks": {name: spec}, "train": train}))
    return path


def test_adapt_from_a_meta_run_and_from_the_encoder_over_seeds(toy_config, build_config, tmp_path, capsys):
    meta = polytask.train(build_config(meta_config(toy_config, "reptile", kinds=("multilabel", "token"))))
    task_file = adapt_task(tmp_path, toy_config)
    train_file = Path(yaml.safe_load(task_file.read_text())["tasks"]["newtask"]["train"])
    train_rows = {json.loads(x)["text"] for x in train_file.read_text().splitlines()}
    for start, out in ((str(meta.output_dir), tmp_path / "from-meta"),
                       (meta_config(toy_config)["model"]["encoder"], tmp_path / "from-encoder")):
        assert cli(["adapt", start, str(task_file), "--shots", "4", "--seeds", "2", "--output", str(out)]) == 0
        summary = json.loads((out / "adapt.json").read_text())
        assert summary["shots"] == 4 and summary["seeds"] == [42, 43] and len(summary["runs"]) == 2
        assert summary["mean"] == pytest.approx(sum(r["score"] for r in summary["runs"]) / 2)
        draws = []
        for r in summary["runs"]:
            fit = [json.loads(x) for x in (out / "data" / f"seed{r['seed']}" / "train.jsonl").read_text().splitlines()]
            held = [json.loads(x) for x in (out / "data" / f"seed{r['seed']}" / "validation.jsonl").read_text()
                    .splitlines()]
            # K = 4 per class: 3 train + 1 held out of each of the two labels, all from the training file
            assert Counter(x["label"] for x in fit) == {"pos": 3, "neg": 3}
            assert Counter(x["label"] for x in held) == {"pos": 1, "neg": 1}
            assert {x["text"] for x in fit + held} <= train_rows
            assert (Path(r["run"]) / "best" / "model.safetensors").is_file()
            draws.append(sorted(x["text"] for x in fit))
        assert draws[0] != draws[1]  # each seed draws its own K
    assert "Few-shot adaptation: newtask" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("shots", "of task 'newtask' has only 15 row(s)"),
    ("one_label", "has a single label ('pos')"),
    ("clash", "task 'multilabel' already exists in"),
    ("no_test", "has no test split"),
])
def test_bad_adapt_input_exits_2(case, message, toy_config, build_config, tmp_path, capsys):
    start = toy_config()["model"]["encoder"]
    name, extra = "newtask", {}
    if case == "one_label":
        rows = [{"text": f"w {i}", "label": "pos"} for i in range(9)]
        extra["train"] = str(write_jsonl(tmp_path / "one.jsonl", rows))
    if case == "clash":
        start, name = str(polytask.train(build_config(meta_config(toy_config, kinds=("multilabel",)))).output_dir), \
            "multilabel"
    task_file = adapt_task(tmp_path, toy_config, name=name, **extra)
    if case == "no_test":
        data = yaml.safe_load(task_file.read_text())
        del data["tasks"][name]["test"]
        task_file.write_text(yaml.safe_dump(data))
    shots = "40" if case == "shots" else "2"
    assert cli(["adapt", start, str(task_file), "--shots", shots, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("polytask: error:") == 1
    assert not (tmp_path / "out" / "seed42").exists()


def test_add_task_from_a_meta_run_does_not_inherit_meta_learning(toy_config, build_config):
    from polytask.continual.runner import base_config

    meta = polytask.train(build_config(meta_config(toy_config, kinds=("classification",))))
    _, data = base_config(meta.output_dir)
    assert "meta" not in data["train"]


def test_meta_learning_under_two_processes_averages_the_outer_update(toy_config, tmp_path):
    from tests.test_resume_ddp import train_two_processes, write_config

    data = meta_config(toy_config, "fomaml", kinds=("classification", "token"))
    proc = train_two_processes(write_config(tmp_path, data, "meta-ddp"))
    # check_processes_agree at the end: both processes hold the same encoder after every averaged outer update
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((Path(data["train"]["output_dir"]) / "last" / "training_state" / "trainer_state.json")
                       .read_text())
    assert state["finished"] and state["global_step"] == 2 * 8 // 2  # 8 episodes per epoch split over 2 processes


def test_meta_learning_with_lora_adapts_only_the_adapter(toy_config, build_config):
    data = meta_config(toy_config, "reptile", kinds=("classification",), inner_optimizer="sgd", inner_lr=0.05,
                       inner_head_lr=0.5)
    data["model"]["peft"] = {"method": "lora", "r": 2}
    from polytask.train.setup import build_run

    run = build_run(build_config(data))
    model = run.model.eval()
    names = [n for n, p in model.encoder.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    grads, _ = run.meta.step(model, [("classification", [0])], torch.device("cpu"), contextlib.nullcontext)
    assert len(grads) == len(names) and sum(float(g.abs().sum()) for g in grads) > 0
    result = polytask.train(build_config(data))  # and the whole run, saved as a PEFT checkpoint
    assert "episode_accuracy" in " ".join(final_eval(result.output_dir))


@pytest.mark.parametrize("kind, label", [("multilabel", "labels"), ("token", "tags")])
def test_adapt_multilabel_and_token_tasks_keeps_every_class_in_training(kind, label, toy_config, tmp_path):
    data = toy_config([kind], n_train=40, n_eval=16)
    task_file = tmp_path / "adapt.yaml"
    task_file.write_text(yaml.safe_dump({"tasks": {"new": data["tasks"][kind]}, "train": {
        "epochs": 2, "precision": "fp32", "progress": False, "tensorboard": False}}))
    out = tmp_path / "out"
    assert cli(["adapt", data["model"]["encoder"], str(task_file), "--shots", "4", "--seeds", "3",
                "--output", str(out)]) == 0
    summary = json.loads((out / "adapt.json").read_text())
    assert len(summary["runs"]) == 3
    for r in summary["runs"]:
        fit = [json.loads(x) for x in (out / "data" / f"seed{r['seed']}" / "train.jsonl").read_text().splitlines()]
        held = (out / "data" / f"seed{r['seed']}" / "validation.jsonl").read_text().splitlines()
        assert held  # a quarter held out ...
        everything = set().union(*(set(json.loads(x)[label]) for x in held), *(set(x[label]) for x in fit))
        assert everything - {"O"} <= set().union(*(set(x[label]) for x in fit))  # ... but every class still trains
        if kind == "token":
            assert r["metric"] == "f1"


def test_loading_a_meta_run_for_prediction_warns_that_its_heads_are_untrained(toy_config, build_config, capsys):
    meta = polytask.train(build_config(meta_config(toy_config, kinds=("classification",))))
    capsys.readouterr()
    polytask.load(meta.output_dir)
    assert "its task heads were not trained" in capsys.readouterr().err
