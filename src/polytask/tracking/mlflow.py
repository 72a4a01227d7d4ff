"""MLflow: a local store in ``mlruns/`` by default (no server)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from polytask.tracking.base import TRACKERS, flatten, require, scalars

PARAM_LIMIT = 6000  # MLflow refuses longer parameter values


def default_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else an SQLite store in ``./mlruns/mlflow.db`` with the artifacts beside
    it (MLflow 3 keeps its plain-file store in maintenance mode and refuses it by default)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    Path("mlruns").mkdir(exist_ok=True)
    return "sqlite:///" + str(Path("mlruns/mlflow.db").resolve())


@TRACKERS.register("mlflow")
class MlflowTracker:
    """An MLflow run in experiment ``train.tracking.project`` at ``train.tracking.mlflow_uri`` (default
    ``./mlruns``: ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` shows it). The resolved config as
    parameters (dotted keys) and as ``config.json``, scalars as ``<kind>/<name>`` metrics, the final summary as
    ``summary/<name>`` metrics and the report files as artifacts. ``--resume`` and ``polytask evaluate``
    continue the same run."""

    package = "mlflow"

    def __init__(self, output_dir: Path, config: Any, resume: dict | None, resume_step: int | None):
        require("mlflow", "mlflow")
        from mlflow import MlflowClient

        tc = config.train.tracking
        # a continued run is looked up where it was made (./mlruns is relative to where training ran)
        uri = resume["uri"] if resume and resume.get("uri") else tc.mlflow_uri or default_uri()
        self.client = MlflowClient(tracking_uri=uri)
        run_id = resume["id"] if resume else None
        if run_id is None:
            exp = self.client.get_experiment_by_name(tc.project)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                tc.project, artifact_location=artifact_location(uri, tc.project))
            run = self.client.create_run(exp_id, run_name=tc.run_name or output_dir.resolve().name,
                                         tags={"polytask.output_dir": str(output_dir.resolve())})
            self.run_id = run.info.run_id
            params = {k: str(v)[:PARAM_LIMIT] for k, v in flatten(config.to_dict()).items()}
            items = list(params.items())
            from mlflow.entities import Param

            for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
            self.client.log_dict(self.run_id, config.to_dict(), "config.json")
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        self.resume = {"id": self.run_id, "uri": uri}
        self.step = resume_step or 0

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        self.step = max(self.step, step)
        now = _now_ms()
        metrics = [Metric(_key(f"{kind}/{k}"), v, now, step) for k, v in scalars(values).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def summary(self, values: dict[str, Any], files: list[Path]) -> None:
        self.log("summary", self.step, values)
        for f in files:
            self.client.log_artifact(self.run_id, str(f))

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def artifact_location(uri: str, experiment: str) -> str | None:
    """Beside an SQLite store's file (MLflow would put them under the current directory's ``mlruns/``,
    wherever the store is); other stores keep MLflow's own choice."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri[len("sqlite:///"):]).resolve().parent
    return (folder / "".join(c if c.isalnum() or c in "-_" else "_" for c in experiment)).as_uri()


def _key(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / space``; anything else (a Chinese task name's
    characters are allowed) becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
