"""Every registered adversarial method: trains every task type, saves → loads, resumes exactly, accumulates
gradients correctly, composes with the weighting methods and bf16, and runs under 2-process DDP. Plus checks
of the perturbation itself on a hand-made batch."""

from __future__ import annotations

import json

import pytest
import torch

import polytask
from polytask.adversarial import ADVERSARIAL
from polytask.errors import UserError

from .test_resume_ddp import final_eval, interrupt_and_resume, train_two_processes, write_config

METHODS = sorted(ADVERSARIAL.names())
KINDS = ["classification", "multilabel", "token", "regression"]


def adv(method: str, **options) -> dict:
    small = {"pgd": {"steps": 2}, "freelb": {"steps": 2}, "smart": {"steps": 1}}.get(method, {})
    return {"method": method, **small, **options}


def test_registry_holds_every_method_of_the_issue():
    assert set(METHODS) == {"fgm", "pgd", "freelb", "smart"}
    for name in METHODS:
        doc = ADVERSARIAL.get(name).__doc__ or ""
        assert "20" in doc and "Example::" in doc, f"{name}: docstring must cite its paper and show a config"


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_every_task_type_saves_loads_and_resumes_exactly(method, toy_config, build_config, tmp_path,
                                                                        monkeypatch):
    train = {"epochs": 2, "save_steps": 1, "logging_steps": 1, "adversarial": adv(method)}
    data = toy_config(KINDS, n_train=16, n_eval=8, train=train)
    data["train"]["output_dir"] = str(tmp_path / "straight")
    straight = polytask.train(build_config(data))
    # the objective was really different from plain training: the same run without it ends elsewhere
    plain = {**data, "train": {**data["train"], "adversarial": {"method": "none"},
                               "output_dir": str(tmp_path / "plain")}}
    polytask.train(build_config(plain))
    a = polytask.load(tmp_path / "straight" / "last").model.state_dict()
    p = polytask.load(tmp_path / "plain" / "last").model.state_dict()
    assert any(not torch.equal(a[k], p[k]) for k in a)
    # the checkpoint keeps the config, and a loaded model predicts every task
    model = polytask.load(tmp_path / "straight" / "best")
    assert model.config.train.adversarial.method == method
    out = model.predict([{"text": "boston good", "words": ["boston", "good"], "text2": "boston"}])
    assert set(out[0]) == set(KINDS)

    data["train"]["output_dir"] = str(tmp_path / "resumed")
    cfg = build_config(data)
    stop_at = straight.global_step // 2
    resumed = interrupt_and_resume(cfg, stop_at, monkeypatch)
    assert resumed.global_step == straight.global_step
    assert final_eval(tmp_path / "straight") == final_eval(tmp_path / "resumed")
    b = polytask.load(tmp_path / "resumed" / "last").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_accumulation_adds_the_groups_gradients(method, toy_config, build_config):
    """Two accumulated micro-batches give the mean of their gradients (dropout off; FreeLB's and SMART's
    random starts drawn from the same seed each time)."""
    from accelerate import Accelerator

    from polytask.train.loop import train_step
    from polytask.train.setup import build_run

    cfg = build_config(toy_config(["classification", "token"], n_train=16, n_eval=8,
                                  train={"grad_accum": 2, "adversarial": adv(method)}))
    run = build_run(cfg)
    run.model.eval()
    acc = Accelerator(cpu=True)
    window = run.plan.epoch(0)[:2]

    def grads(w, seeds):
        run.model.zero_grad(set_to_none=True)
        gen = iter(seeds)
        real = run.adversarial.objective

        def seeded(p):  # reseed before each micro-batch so the random starts match between the two ways
            torch.manual_seed(next(gen))
            return real(p)

        run.adversarial.objective = seeded
        try:
            train_step(acc, run.model, run, w, step=0)
        finally:
            run.adversarial.objective = real
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in run.model.parameters()]

    both = grads(window, [1, 2])
    first, second = grads(window[:1], [1]), grads(window[1:], [2])
    for g, g1, g2 in zip(both, first, second):
        torch.testing.assert_close(g, (g1 + g2) / 2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_under_two_process_ddp(method, tmp_path, toy_config):
    """Both processes must end with the same model (the loop checks it) — with a gradient method on top."""
    train = {"epochs": 1, "grad_accum": 2, "batch_size": 4, "sampling": "all_tasks",
             "weighting": {"method": "pcgrad"}, "adversarial": adv(method, tasks=["token"])}
    data = toy_config(["classification", "token"], n_train=32, n_eval=8, train=train)
    r = train_two_processes(write_config(tmp_path, data, "ddp"))
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "last" / "training_state" / "trainer_state.json").read_text())
    assert state["finished"] and state["global_step"] >= 2


@pytest.mark.parametrize("weighting", ["uw", "famo", "cagrad"])
def test_adversarial_composes_with_weighting_and_bf16(weighting, toy_config, build_config, tmp_path):
    train = {"epochs": 1, "sampling": "all_tasks", "precision": "bf16", "weighting": {"method": weighting},
             "adversarial": adv("pgd", tasks=["classification"])}
    res = polytask.train(build_config(toy_config(["classification", "token"], n_train=16, n_eval=8, train=train)))
    assert res.global_step == 2
    assert all(torch.isfinite(p).all() for p in res.model.parameters())


def test_only_the_listed_tasks_are_perturbed(toy_config, build_config):
    """A group of a task not listed trains exactly as without adversarial training."""
    from accelerate import Accelerator

    from polytask.train.loop import train_step
    from polytask.train.setup import build_run

    def grads(adversarial):
        cfg = build_config(toy_config(["classification", "token"], n_train=16, n_eval=8,
                                      train={"adversarial": adversarial}))
        torch.manual_seed(0)  # the same heads each time
        run = build_run(cfg)
        run.model.eval()
        window = [w for w in run.plan.epoch(0) if w[0] == "token"][:1]
        train_step(Accelerator(cpu=True), run.model, run, window, step=0)
        return [p.grad.clone() for p in run.model.parameters() if p.grad is not None]

    plain = grads({"method": "none"})
    other = grads(adv("fgm", tasks=["classification"]))
    mine = grads(adv("fgm", tasks=["token"]))
    assert all(torch.equal(a, b) for a, b in zip(plain, other))
    assert any(not torch.equal(a, b) for a, b in zip(plain, mine))


def test_fgm_perturbation_has_norm_epsilon_and_raises_the_loss(toy_config, build_config):
    from accelerate import Accelerator

    from polytask.adversarial.base import Adversarial
    from polytask.train.loop import perturbable
    from polytask.train.setup import build_run

    cfg = build_config(toy_config(["classification"], n_train=16, n_eval=8))
    run = build_run(cfg)
    run.model.eval()
    task, idx = run.plan.epoch(0)[0]
    batch = run.collate(task, idx)
    p = perturbable(Accelerator(cpu=True), run.model, run, batch, batch["parts"], [task])
    g = Adversarial.ascend(p, p.zeros())
    r = 0.5 * p.normalize(g)
    torch.testing.assert_close(p.norm(r).flatten(), torch.full((len(idx),), 0.5), rtol=1e-4, atol=1e-5)
    assert torch.all(r[p.mask == 0] == 0)  # padding is never perturbed
    with torch.no_grad():
        clean = p.adversarial_sum(p.ascent([None])[0])
        attacked = p.adversarial_sum(p.ascent([r])[0])
        rand = p.adversarial_sum(p.ascent([0.5 * p.normalize(torch.randn_like(r))])[0])
    assert attacked > clean and attacked > rand  # the gradient direction hurts more than a random one
    projected = p.project(3.0 * r, 0.5)
    torch.testing.assert_close(p.norm(projected), p.norm(r), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_is_zero_for_equal_outputs_and_positive_otherwise(kind, toy_config, build_config):
    from polytask.train.setup import build_run

    run = build_run(build_config(toy_config([kind], n_train=8, n_eval=4)))
    task = run.tasks[kind]
    shape = (3, 5, task.num_outputs) if task.level == "token" else (3, task.num_outputs)
    labels = torch.zeros(3, 5, dtype=torch.long) if task.level == "token" else torch.zeros(3)
    a = torch.randn(shape, requires_grad=True)
    assert float(task.divergence(a, a.detach().clone(), labels)) == pytest.approx(0.0, abs=1e-6)
    d = task.divergence(a, torch.randn(shape), labels)
    assert float(d) > 0
    d.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_config_errors_name_the_key(toy_config, build_config):
    with pytest.raises(UserError, match="unknown adversarial method 'vat'"):
        build_config(toy_config(["classification"], train={"adversarial": {"method": "vat"}}))
    with pytest.raises(UserError, match="unknown config key 'train.adversarial.alpha'"):
        build_config(toy_config(["classification"], train={"adversarial": {"method": "fgm", "alpha": 1}}))
    with pytest.raises(UserError, match="'train.adversarial.steps' has bad value 0"):
        build_config(toy_config(["classification"], train={"adversarial": {"method": "pgd", "steps": 0}}))
    with pytest.raises(UserError, match="'train.adversarial.epsilon' has bad value 'big'"):
        build_config(toy_config(["classification"], train={"adversarial": {"method": "fgm", "epsilon": "big"}}))
    with pytest.raises(UserError, match="'train.adversarial.tasks'"):
        build_config(toy_config(["classification"], train={"adversarial": {"method": "fgm", "tasks": ["nope"]}}))
    with pytest.raises(UserError, match="has options but no method"):
        build_config(toy_config(["classification"], train={"adversarial": {"epsilon": 1.0}}))


def test_compare_variants_keep_adversarial_training_only_for_their_task(toy_config, build_config, tmp_path):
    from polytask.compare.runner import variant_config

    cfg = build_config(toy_config(["classification", "token"], train={"adversarial": adv("fgm", tasks=["token"])}))
    single_token = variant_config(cfg, "single", "token", 1, tmp_path / "a")
    single_cls = variant_config(cfg, "single", "classification", 1, tmp_path / "b")
    multi = variant_config(cfg, "multi", None, 1, tmp_path / "c")
    assert single_token.train.adversarial.method == "fgm" and single_token.train.adversarial.tasks == ["token"]
    assert single_cls.train.adversarial.method == "none"
    assert multi.train.adversarial.tasks == ["token"]
