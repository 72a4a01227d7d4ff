"""Every registered weighting method: trains, logs and saves its weights, resumes exactly, accumulates
gradients correctly, and runs under 2-process DDP with every process in step. Plus method-specific checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import polytask
from polytask.errors import UserError
from polytask.weighting import WEIGHTINGS, StepContext

from .test_resume_ddp import final_eval, interrupt_and_resume, train_two_processes, write_config

METHODS = sorted(WEIGHTINGS)


def method_train(method: str, **extra) -> dict:
    sampling = "all_tasks" if WEIGHTINGS.get(method).needs_all_tasks else "proportional"
    return {"sampling": sampling, "weighting": {"method": method}, **extra}


def test_registry_holds_every_method_of_the_issue():
    assert set(METHODS) == {"static", "uw", "dwa", "rlw", "famo", "gradnorm", "pcgrad", "cagrad"}
    for name in METHODS:
        doc = WEIGHTINGS.get(name).__doc__ or ""
        assert "20" in doc and "Example::" in doc, f"{name}: docstring must cite its paper and show a config"


@pytest.mark.parametrize("method", METHODS)
def test_method_trains_logs_weights_and_resumes_exactly(method, toy_config, build_config, tmp_path, monkeypatch):
    train = method_train(method, epochs=3, save_steps=1, logging_steps=1)
    data = toy_config(["classification", "token"], n_train=24, n_eval=8, train=train)
    data["train"]["output_dir"] = str(tmp_path / "straight")
    straight = polytask.train(build_config(data))
    records = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if r["type"] == "train"]
    assert len(logged) == straight.global_step  # logging_steps=1: one line per step, each with the weights
    assert all("weight/classification" in r and "weight/token" in r for r in logged)
    learned = {"uw", "dwa", "famo", "gradnorm"}
    assert bool(straight_state(tmp_path / "straight")) == (method in learned)  # their state is saved

    # the same run, interrupted after a few steps and resumed, ends identically
    data["train"]["output_dir"] = str(tmp_path / "resumed")
    cfg = build_config(data)
    stop_at = straight.global_step // 2
    resumed = interrupt_and_resume(cfg, stop_at, monkeypatch)
    assert resumed.global_step == straight.global_step
    assert final_eval(tmp_path / "straight") == final_eval(tmp_path / "resumed")
    a = polytask.load(tmp_path / "straight" / "last").model.state_dict()
    b = polytask.load(tmp_path / "resumed" / "last").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight_state(tmp_path / "resumed") == straight_state(tmp_path / "straight")


def straight_state(run_dir: Path) -> dict:
    return json.loads((run_dir / "last" / "training_state" / "trainer_state.json").read_text())["weighting"]


@pytest.mark.parametrize("method", METHODS)
def test_gradient_accumulation_adds_the_groups_gradients(method, toy_config, build_config):
    """A step of two accumulated groups has the mean of the two groups' gradients (dropout off)."""
    from accelerate import Accelerator

    from polytask.train.loop import train_step
    from polytask.train.setup import build_run

    cfg = build_config(toy_config(["classification", "token"], n_train=16, n_eval=8,
                                  train=method_train(method, grad_accum=2)))
    run = build_run(cfg)
    run.model.eval()
    acc = Accelerator(cpu=True)
    k = run.plan.tasks_per_step
    window = run.plan.epoch(0)[:2 * k]

    def grads(w):
        run.model.zero_grad(set_to_none=True)
        train_step(acc, run.model, run, w, step=0)
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in run.model.parameters()]

    both = grads(window)
    first, second = grads(window[:k]), grads(window[k:])
    for g, g1, g2 in zip(both, first, second):
        torch.testing.assert_close(g, (g1 + g2) / 2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_under_two_process_ddp(method, tmp_path, toy_config):
    """The loop checks at the end that both processes hold the same model and weighting state."""
    data = toy_config(["classification", "token"], n_train=32, n_eval=8,
                      train=method_train(method, epochs=1, grad_accum=2, batch_size=4))
    cfg = write_config(tmp_path, data, "ddp")
    r = train_two_processes(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((Path(data["train"]["output_dir"]) / "last" / "training_state" /
                        "trainer_state.json").read_text())
    assert state["finished"] and state["global_step"] >= 2


def test_methods_that_need_every_task_refuse_other_sampling(toy_config, build_config):
    for method in METHODS:
        data = toy_config(["classification", "token"], train={"weighting": {"method": method}})
        if WEIGHTINGS.get(method).needs_all_tasks:
            with pytest.raises(UserError, match="set train.sampling: all_tasks"):
                build_config(data)
        else:
            build_config(data)


def test_unknown_and_bad_options_are_refused(toy_config, build_config):
    with pytest.raises(UserError, match="unknown config key 'train.weighting.tau'"):
        build_config(toy_config(["classification"], train={"weighting": {"method": "dwa", "tau": 1}}))
    with pytest.raises(UserError, match="'train.weighting.temperature' has bad value 'hot'"):
        build_config(toy_config(["classification"], train={"weighting": {"method": "dwa", "temperature": "hot"}}))


# -- method-specific behaviour on hand-made gradients ----------------------------------------------------------
def fake_ctx(step=0):
    return StepContext(backward=lambda loss, **kw: None, shared_parameters=list, step=step)


def test_pcgrad_removes_the_conflicting_component():
    pc = WEIGHTINGS.get("pcgrad")({"a": 1.0, "b": 1.0})
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # conflicting: dot = -1
    out = pc.combine(g, {}, fake_ctx())
    # a projected on b's normal: [1,0] - (-1/2)[-1,1] = [0.5, 0.5]; b on a's: [-1,1] - (-1)[1,0] = [0, 1]
    torch.testing.assert_close(out, torch.tensor([0.5, 1.5]))
    agree = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(pc.combine(agree, {}, fake_ctx()), agree.sum(0))


def test_cagrad_with_c_zero_is_the_summed_gradient_and_helps_the_worst_task():
    g = torch.tensor([[1.0, 0.0], [-0.9, 0.2]])
    plain = WEIGHTINGS.get("cagrad")({"a": 1.0, "b": 1.0}, {"c": 0.0}).combine(g, {}, fake_ctx())
    torch.testing.assert_close(plain, g.sum(0), rtol=1e-4, atol=1e-5)
    averse = WEIGHTINGS.get("cagrad")({"a": 1.0, "b": 1.0}, {"c": 0.4}).combine(g, {}, fake_ctx())
    worst = lambda d: min(float(d @ g[0]), float(d @ g[1]))  # noqa: E731
    assert worst(averse / averse.norm()) > worst(plain / plain.norm())


def test_rlw_weights_are_random_per_step_reproducible_and_sum_to_k():
    rlw = WEIGHTINGS.get("rlw")({"a": 1.0, "b": 1.0, "c": 1.0})
    w0, w0_again, w1 = rlw.draw(0), rlw.draw(0), rlw.draw(1)
    assert w0 == w0_again and w0 != w1
    assert sum(w0.values()) == pytest.approx(3.0)


def test_dwa_gives_more_weight_to_the_task_whose_loss_stopped_falling():
    dwa = WEIGHTINGS.get("dwa")({"fast": 1.0, "stuck": 1.0})
    ident = lambda t: t  # noqa: E731
    for epoch, (fast, stuck) in enumerate([(1.0, 1.0), (0.5, 1.0), (0.25, 1.0)]):
        ctx = StepContext(backward=lambda loss, **kw: None, shared_parameters=list, step=epoch, epoch=epoch)
        dwa.backward({"fast": torch.tensor(fast), "stuck": torch.tensor(stuck)}, ctx)
        dwa.end_step(ident)
    w = dwa.weights()
    assert w["stuck"] > 1.0 > w["fast"] and sum(w.values()) == pytest.approx(2.0)


def test_uncertainty_weighting_down_weights_the_noisy_task():
    uw = WEIGHTINGS.get("uw")({"clean": 1.0, "noisy": 1.0}, {"lr": 0.1})
    for step in range(50):
        loss = uw.backward({"clean": torch.tensor(0.1), "noisy": torch.tensor(3.0)},
                           StepContext(backward=lambda loss, **kw: loss.backward(), shared_parameters=list,
                                       step=step))
        assert torch.isfinite(loss)
        uw.end_step(lambda t: t)
    w = uw.weights()
    assert w["noisy"] < 1.0 < w["clean"]


def test_famo_raises_the_weight_of_the_task_that_is_not_improving():
    famo = WEIGHTINGS.get("famo")({"improving": 1.0, "flat": 1.0}, {"lr": 0.1})
    for step in range(20):
        losses = {"improving": torch.tensor(2.0 * 0.9 ** step), "flat": torch.tensor(2.0)}
        famo.backward(losses, StepContext(backward=lambda loss, **kw: None, shared_parameters=list, step=step))
        famo.end_step(lambda t: t)
    w = famo.weights()
    assert w["flat"] > w["improving"] and sum(w.values()) == pytest.approx(2.0)
