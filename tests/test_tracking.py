"""Experiment tracking (train.report_to): W&B offline and MLflow's local store get the config, the per-task
metrics, the learned task weights and the final summary; --resume and evaluate continue the same tracked run."""

from __future__ import annotations

import importlib
import json
import struct

import pytest

import polytask
from polytask.cli import main
from polytask.errors import UserError
from tests.test_resume_ddp import interrupt_and_resume


def wandb_records(run_dir):
    """Every record of the offline W&B runs under ``run_dir/wandb`` (the .wandb file: W&B's record log — 32 KiB
    blocks of chunks with a 7-byte header — of protobuf ``Record``s), in file order."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        data, pos, buf = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:  # a block's tail too short for a header is padding
                pos += left
                continue
            _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
            chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
            if kind == 0:
                continue
            buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
            if kind in (1, 4):
                rec = pb.Record()
                rec.ParseFromString(buf)
                out.append(rec)
    return out


def wait_finished(run_dir, runs: int, timeout: float = 60.0) -> None:
    """Until the offline run files under ``run_dir`` hold ``runs`` exit records (the last record a finished run
    writes): W&B's service process writes them on its own, possibly after ``finish()`` has returned."""
    import time

    deadline = time.monotonic() + timeout
    while sum(r.WhichOneof("record_type") == "exit" for r in wandb_records(run_dir)) < runs:
        assert time.monotonic() < deadline, f"W&B did not finish writing {runs} run(s) in {run_dir} in {timeout} s"
        time.sleep(0.5)


def wandb_history(run_dir, until=lambda rows: True, timeout: float = 60.0) -> list[dict]:
    """The history rows of the offline runs, once ``until(rows)`` holds: W&B's service process writes the run file
    on its own, and may still be writing when ``finish()`` has returned (seen under load)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        rows = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
                for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "history"]
        if until(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_report_to_is_validated(toy_config, build_config):
    with pytest.raises(UserError, match=r"train.report_to.*unknown tracker.*'wandbb'.*mlflow, tensorboard, wandb"):
        build_config(toy_config(train={"report_to": ["wandbb"]}))
    with pytest.raises(UserError, match=r"train.report_to' has bad value 'wandb'; expected a list"):
        build_config(toy_config(train={"report_to": "wandb"}))
    with pytest.raises(UserError, match=r"train.report_to.*each tracker once"):
        build_config(toy_config(train={"report_to": ["mlflow", "mlflow"]}))
    with pytest.raises(UserError, match=r"train.tracking.wandb_mode.*offline, online, disabled"):
        build_config(toy_config(train={"tracking": {"wandb_mode": "cloud"}}))
    cfg = build_config(toy_config(train={"report_to": ["tensorboard", "mlflow"], "tensorboard": False}))
    assert cfg.train.trackers == ["mlflow"]


def test_missing_package_says_how_to_install(toy_config, build_config, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without wandb does on import
    # refused when the config is loaded, before any model is read or any run folder touched
    with pytest.raises(UserError, match=r"train.report_to' names wandb, but the wandb package is not installed; "
                                        r"pip install 'polytask\[wandb\]'"):
        build_config(toy_config(["classification"], train={"report_to": ["wandb"]}))


def test_wandb_offline_logs_config_metrics_weights_and_summary(toy_config, build_config, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    data = toy_config(["classification", "token"], n_train=16, n_eval=8,
                      train={"report_to": ["wandb"], "weighting": {"method": "uw"}, "epochs": 2})
    result = polytask.train(build_config(data))
    run = result.output_dir
    wait_finished(run, 1)
    ids = json.loads((run / "tracking.json").read_text())
    assert list(ids) == ["wandb"]
    (folder,) = (run / "wandb").glob("offline-run-*")
    assert folder.name.endswith(ids["wandb"]["id"])
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    history = wandb_history(run, until=lambda rows: sum("eval/mean" in h for h in rows) >= 2)
    evals = [h for h in history if "eval/mean" in h]
    assert [h["_step"] for h in evals] == [r["step"] for r in logged if r["type"] == "eval"] == [4, 8]
    assert all("eval/classification.accuracy" in h and "eval/token.f1" in h for h in evals)
    weights = [h for h in history if "train/weight/token" in h]
    assert weights and len({round(h["train/weight/token"], 6) for h in weights}) > 1  # uw learns its weights
    kinds = [r.WhichOneof("record_type") for r in wandb_records(run)]
    start = next(r for r in wandb_records(run) if r.WhichOneof("record_type") == "run")
    config = {i.key: json.loads(i.value_json) for i in start.run.config.update}
    assert config["train"]["weighting"]["method"] == "uw" and set(config["tasks"]) == {"classification", "token"}
    summary = {i.key: i.value_json for r in wandb_records(run) if r.WhichOneof("record_type") == "summary"
               for i in r.summary.update if i.key}
    assert float(summary["steps"]) == result.global_step and "best.mean" in summary
    assert "files" in kinds and (folder / "files" / "metrics.jsonl").is_file()

    # evaluate adds the test split to the same tracked run
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    wait_finished(run, 2)
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert all(r.name.endswith(ids["wandb"]["id"]) for r in runs) and len(runs) == 2
    history = wandb_history(run, until=lambda rows: any("test/mean" in h for h in rows))
    assert any("test/mean" in h and h["_step"] == result.global_step for h in history)


def test_mlflow_local_store_and_resume(toy_config, build_config, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # nothing may land in the current directory's mlruns/ but what is asked
    from mlflow import MlflowClient

    uri = "sqlite:///" + str(tmp_path / "mlruns" / "mlflow.db")  # what the default (./mlruns) resolves to here
    data = toy_config(["classification", "token"], n_train=16, n_eval=8,
                      train={"report_to": ["mlflow"], "tracking": {"project": "toy"}, "epochs": 1, "save_steps": 2})
    # interrupted before step 3 (state saved at step 2), then resumed to the end: one tracked run throughout
    result = interrupt_and_resume(build_config(data), 3, monkeypatch)
    assert result.global_step == 4
    ids = json.loads((result.output_dir / "tracking.json").read_text())
    run_id = ids["mlflow"]["id"]
    assert ids["mlflow"]["uri"] == uri
    client = MlflowClient(tracking_uri=uri)
    assert len(client.search_runs([client.get_experiment_by_name("toy").experiment_id])) == 1
    info = client.get_run(run_id)
    assert info.data.params["train.report_to"] == '["mlflow"]' and info.data.params["tasks.token.type"] == \
        "token_classification"
    history = client.get_metric_history(run_id, "eval/token.f1")
    assert sorted(m.step for m in history)[-1] == 4
    assert client.get_metric_history(run_id, "train/loss/classification")
    assert client.get_metric_history(run_id, "train/weight/token")[0].value == 1.0
    assert info.info.status == "FINISHED"
    assert "summary/steps" in info.data.metrics and info.data.metrics["summary/steps"] == 4
    assert {a.path for a in client.list_artifacts(run_id)} >= {"config.json", "metrics.jsonl"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # evaluate from another folder finds the store the training used
    assert main(["evaluate", str(result.output_dir), "--split", "test"]) == 0
    assert not (elsewhere / "mlruns").exists()
    after = client.get_run(run_id)
    assert "test/mean" in after.data.metrics and "summary/test.mean" in after.data.metrics
    assert {a.path for a in client.list_artifacts(run_id)} >= {"report.md", "MODEL_CARD.md"}
    assert (tmp_path / "mlruns" / "toy" / run_id / "artifacts" / "report.md").is_file()


def test_a_failed_training_ends_its_tracked_run_as_failed(toy_config, build_config, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    loop = importlib.import_module("polytask.train.loop")
    real_step = loop.train_step

    def broken(accelerator, model, run, window, step, epoch=0):
        if step == 2:
            raise RuntimeError("out of memory")
        return real_step(accelerator, model, run, window, step, epoch)

    monkeypatch.setattr(loop, "train_step", broken)
    data = toy_config(["classification"], n_train=32, train={"report_to": ["mlflow"], "epochs": 1})
    cfg = build_config(data)
    with pytest.raises(RuntimeError, match="out of memory"):
        polytask.train(cfg)
    kept = json.loads((tmp_path / "run" / "tracking.json").read_text())["mlflow"]
    assert MlflowClient(tracking_uri=kept["uri"]).get_run(kept["id"]).info.status == "FAILED"
