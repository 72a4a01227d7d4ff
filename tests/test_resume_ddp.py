"""Resuming a SIGKILLed run ends exactly where an uninterrupted run ends; 2-process DDP on CPU (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def write_config(tmp_path: Path, data: dict, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def final_eval(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    return {k: v for k, v in evals[-1].items() if k != "time"}


def interrupt_and_resume(cfg, stop_at: int, monkeypatch):
    """Train ``cfg`` in process, stop it (KeyboardInterrupt) when step ``stop_at`` is about to run, then
    ``--resume`` it to the end; returns the resumed run's result."""
    import importlib

    import polytask

    loop = importlib.import_module("polytask.train.loop")  # (polytask.train is also the train() function)
    real_step = loop.train_step

    def interrupted(accelerator, model, run, window, step, epoch=0):
        if step == stop_at:
            raise KeyboardInterrupt
        return real_step(accelerator, model, run, window, step, epoch)

    monkeypatch.setattr(loop, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        polytask.train(cfg)
    monkeypatch.setattr(loop, "train_step", real_step)
    return polytask.train(cfg, resume=True)


def train_two_processes(cfg: Path) -> subprocess.CompletedProcess:
    """``polytask train cfg`` as a 2-process ``accelerate launch`` on CPU (gloo)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "polytask", "train", str(cfg)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)


def polytask_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "polytask", *args]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, toy_config):
    train = {"epochs": 3, "save_steps": 3, "logging_steps": 1}
    data = toy_config(["classification", "token"], n_train=96, n_eval=16, train=train)
    data["train"]["output_dir"] = str(tmp_path / "straight")
    straight = write_config(tmp_path, data, "straight")
    data["train"]["output_dir"] = str(tmp_path / "killed")
    killed = write_config(tmp_path, data, "killed")

    subprocess.run(polytask_cmd("train", str(straight)), check=True, env=ENV, capture_output=True)

    proc = subprocess.Popen(polytask_cmd("train", str(killed)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state_file = tmp_path / "killed" / "last" / "training_state" / "trainer_state.json"
    deadline = time.time() + 120
    step = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            step = json.loads(state_file.read_text())["global_step"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            step = 0
        if step >= 6:  # past the first epoch's validation and a mid-epoch save
            break
        time.sleep(0.01)
    assert proc.poll() is None, "run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    total = 3 * 24  # 3 epochs x (96/8 + 96/8) batches
    saved = json.loads(state_file.read_text())
    assert not saved["finished"] and 6 <= saved["global_step"] < total

    r = subprocess.run(polytask_cmd("train", str(killed), "--resume"), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = final_eval(tmp_path / "straight"), final_eval(tmp_path / "killed")
    assert a["step"] == b["step"] == total
    assert a == b  # every validation metric identical

    # the metrics log has no duplicate steps from the interrupted attempt
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert steps == sorted(set(steps))


def test_two_process_ddp_on_cpu(tmp_path, toy_config):
    data = toy_config(["classification", "token"], n_train=32, n_eval=8, train={"epochs": 2})
    cfg = write_config(tmp_path, data, "ddp")
    r = train_two_processes(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    # global batch = 2 processes x 8: 32/16 = 2 batches per task, 4 per epoch, 8 steps in 2 epochs
    # (a single process would take 16 steps)
    state = json.loads((Path(data["train"]["output_dir"]) / "last" / "training_state" /
                        "trainer_state.json").read_text())
    assert state["global_step"] == 8 and state["finished"]
    assert r.stdout.count("trained 8 steps") == 1  # only the main process reports
    rng = json.loads((Path(data["train"]["output_dir"]) / "last" / "training_state" / "rng.json").read_text())
    assert len(rng) == 2  # both processes' RNG states are saved for resume
    # the checkpoint loads and predicts in a plain single process
    r = subprocess.run(polytask_cmd("evaluate", data["train"]["output_dir"], "--split", "test", "--json"),
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "classification" in json.loads(r.stdout)


def test_retrieval_under_two_process_ddp(tmp_path, toy_config):
    """In-batch negatives are each process's own batch (not gathered); validation ranks each process's share of
    the queries against the whole corpus and merges them: every query is scored once."""
    data = toy_config(["retrieval", "classification"], n_train=32, n_eval=8, train={"epochs": 1})
    r = train_two_processes(write_config(tmp_path, data, "ddp-retrieval"))
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (Path(data["train"]["output_dir"]) / "metrics.jsonl").read_text()
               .splitlines()]
    evals = [x for x in records if x["type"] == "eval"]
    assert evals and evals[-1]["retrieval.queries"] == 8 and 0.0 < evals[-1]["retrieval.ndcg@10"] <= 1.0
    state = json.loads((Path(data["train"]["output_dir"]) / "last" / "training_state" /
                        "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["finished"]  # 32 rows / (2 processes x 8) = 2 batches per task
