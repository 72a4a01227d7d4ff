"""Mutual learning: the objective per peer, stale peers, best peer, resume, DDP and refused combinations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import polytask
from polytask.errors import UserError
from polytask.mutual import PeerModel
from tests.test_resume_ddp import final_eval, interrupt_and_resume, train_two_processes, write_config
from tests.test_train_cycle import logits_of


def mutual_config(toy_config, kinds=("classification", "token"), **mutual):
    return toy_config(list(kinds), n_train=32, n_eval=8,
                      train={"mutual": {"peers": 2, "sharing_weight": 1.0, **mutual}})


def test_two_peers_train_and_the_best_peer_is_an_ordinary_checkpoint(toy_config, build_config):
    data = mutual_config(toy_config, kinds=("classification", "multilabel", "token", "regression"), save_peers=True)
    result = polytask.train(build_config(data))
    out = result.output_dir
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    last = evals[-1]
    assert {"peer0.mean", "peer1.mean", "ensemble.mean", "best_peer"} <= set(last)
    best = int(last["best_peer"])
    assert last["mean"] == max(last["peer0.mean"], last["peer1.mean"]) == last[f"peer{best}.mean"]
    # last/ holds the best peer as a plain multi-task checkpoint, bit-identical to the returned model
    loaded = polytask.load(out / "last")
    assert type(loaded.model).__name__ == "MultiTaskModel"
    from polytask.data.features import prepare_task_data

    data_v = prepare_task_data(loaded.tasks, loaded.tokenizer, 32, splits=("validation",), fit_labels=False)
    feats = {n: d.features["validation"] for n, d in data_v.items()}
    before = logits_of(result.model, loaded.tasks, loaded.tokenizer, feats)
    after = logits_of(loaded.model, loaded.tasks, loaded.tokenizer, feats)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    # the peers differ (their own heads and dropout) and each is saved
    p0, p1 = (polytask.load(out / "peers" / f"peer{i}").model for i in range(2))
    assert not torch.equal(p0.heads["classification"][1].weight, p1.heads["classification"][1].weight)
    assert (out / "best" / "model.safetensors").is_file()


def tiny_peers(toy_config, build_config):
    from polytask.train.setup import build_run

    cfg = build_config(mutual_config(toy_config, kinds=("classification",)))
    run = build_run(cfg)
    batch = run.collate("classification", list(range(8)))
    pos, labels = batch["parts"]["classification"]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    return run, inputs, pos, labels


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_each_peer_gets_its_label_loss_plus_the_divergence_to_the_other(weight, toy_config, build_config):
    run, inputs, pos, labels = tiny_peers(toy_config, build_config)
    model: PeerModel = run.model.eval()  # no dropout: the two computations see the same outputs
    task = run.tasks["classification"]
    run.mutual.cfg.sharing_weight = weight
    logits = model(**inputs, tasks=["classification"])
    objective, logged = run.mutual.objective(logits, {"classification": (pos, labels)}, [], model, 0)
    objective["classification"].backward()
    got = [None if p.grad is None else p.grad.clone() for p in model.peers[0].parameters()]
    assert sum(g is not None for g in got) > 10
    model.zero_grad()
    # by hand: peer 0 trains on its loss + w * D(f0, f1) with f1 a fixed target
    f0 = model.peers[0](**inputs, tasks=["classification"])["classification"]
    f1 = model.peers[1](**inputs, tasks=["classification"])["classification"].detach()
    (task.loss(f0, labels) + weight * task.divergence(f0, f1, labels)).backward()
    for g, p in zip(got, model.peers[0].parameters()):
        assert (g is None) == (p.grad is None)
        assert g is None or torch.allclose(g, p.grad, atol=1e-6)
    assert torch.isclose(logged["classification"], (task.loss(f0, labels) + task.loss(f1, labels)) / 2)


def test_stale_peers_are_copies_refreshed_every_sync_every_steps(toy_config, build_config):
    run, inputs, pos, labels = tiny_peers(toy_config, build_config)
    run.mutual.cfg.sync_every = 3
    model = run.model
    segments = [(inputs, {"classification": None})]
    parts = {"classification": (pos, labels)}
    logits = model(**inputs, tasks=["classification"])
    run.mutual.objective(logits, parts, segments, model, step=0)
    copy_weight = run.mutual.copies.peers[1].heads["classification"][1].weight
    with torch.no_grad():
        model.peers[1].heads["classification"][1].weight.add_(1.0)  # a training step happened
    for step in (1, 2):  # not refreshed yet: the copies lag behind
        run.mutual.objective(logits, parts, segments, model, step=step)
        assert not torch.equal(copy_weight, model.peers[1].heads["classification"][1].weight)
    run.mutual.objective(logits, parts, segments, model, step=3)
    assert torch.equal(run.mutual.copies.peers[1].heads["classification"][1].weight,
                       model.peers[1].heads["classification"][1].weight)
    assert run.mutual.refreshed_at == 3


@pytest.mark.parametrize("sync_every", [1, 2])
def test_resume_of_mutual_learning_matches_the_uninterrupted_run(sync_every, toy_config, build_config, tmp_path,
                                                                 monkeypatch):
    data = mutual_config(toy_config, sync_every=sync_every)
    straight = polytask.train(build_config(data))
    data["train"]["output_dir"] = str(tmp_path / "resumed")
    resumed = interrupt_and_resume(build_config(data), stop_at=11, monkeypatch=monkeypatch)
    assert final_eval(straight.output_dir) == final_eval(resumed.output_dir)


def test_mutual_learning_under_two_processes(toy_config, tmp_path):
    data = mutual_config(toy_config)
    proc = train_two_processes(write_config(tmp_path, data, "mutual"))
    assert proc.returncode == 0, proc.stderr[-3000:]  # check_processes_agree: every peer the same everywhere
    assert "mutual learning: 2 peers" in proc.stderr
    assert (Path(data["train"]["output_dir"]) / "last" / "training_state" / "peers.safetensors").is_file()


@pytest.mark.parametrize("mutual, extra, message", [
    ({"peers": 0}, {}, "train.mutual.peers"),
    ({"peers": 2, "sync_every": 0}, {}, "train.mutual.sync_every"),
    ({"peers": 2, "sharing_weight": -1}, {}, "train.mutual.sharing_weight"),
    ({"peers": 2}, {"weighting": {"method": "pcgrad"}, "sampling": "all_tasks"}, "is not supported"),
    ({"peers": 2}, {"adversarial": {"method": "fgm"}}, "train.mutual with train.adversarial"),
])
def test_bad_mutual_settings_name_the_key(mutual, extra, message, toy_config, build_config):
    data = toy_config(["classification"], train={"mutual": mutual, **extra})
    with pytest.raises(UserError, match=message):
        build_config(data)


def test_one_peer_is_plain_training_and_is_left_out_of_saved_configs(toy_config, build_config):
    cfg = build_config(toy_config(["classification"], train={"mutual": {"peers": 1}}))
    assert not cfg.train.mutual.enabled and "mutual" not in cfg.to_dict()["train"]
    from polytask.train.setup import build_run

    assert not isinstance(build_run(cfg).model, PeerModel)


def test_each_peer_is_clipped_alone_and_a_nan_in_any_peer_is_seen(toy_config, build_config):
    from accelerate import Accelerator

    from polytask.train.loop import clip_gradients

    run, *_ = tiny_peers(toy_config, build_config)
    peers = run.model.peers
    for k, peer in enumerate(peers):
        for p in peer.parameters():
            p.grad = torch.full_like(p, 10.0 * (k + 1))
    norms = [torch.cat([p.grad.flatten() for p in peer.parameters()]).norm() for peer in peers]
    got = clip_gradients(Accelerator(cpu=True), run.model, run, max_norm=1.0)
    torch.testing.assert_close(got, max(norms))
    for peer in peers:  # each peer scaled to norm 1 on its own (a joint clip would leave peer 0 below 1)
        torch.testing.assert_close(torch.cat([p.grad.flatten() for p in peer.parameters()]).norm(),
                                   torch.tensor(1.0), rtol=1e-3, atol=1e-3)
    next(peers[1].parameters()).grad[0] = float("nan")
    assert torch.isnan(clip_gradients(Accelerator(cpu=True), run.model, run, max_norm=1.0))


def test_affinity_refuses_mutual_learning(toy_config, tmp_path, capsys):
    import yaml

    from polytask.cli import main

    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump(mutual_config(toy_config)), encoding="utf-8")
    assert main(["affinity", str(cfg), "--steps", "2", "--output", str(tmp_path / "aff")]) == 2
    assert "polytask affinity with train.mutual is not supported" in capsys.readouterr().err
    assert not (tmp_path / "aff").exists()
