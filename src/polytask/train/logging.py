"""Run logging: a JSONL metrics log (appended, so a resumed run continues it) and the trackers of
``train.report_to`` (TensorBoard by default; W&B, MLflow — see ``polytask.tracking``)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class RunLogger:
    """Writes ``metrics.jsonl`` (one JSON object per line) and passes the same figures to the trackers of
    ``config.train.report_to`` (with ``config`` None: the JSONL log only).

    Only the main process logs; other processes get a logger with ``enabled=False``.
    """

    def __init__(self, output_dir: Path, config: Any = None, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.trackers: list[Any] = []
        if not enabled:
            return
        if resume_step is not None:
            self._trim_after(resume_step)
        if config is not None and config.train.trackers:
            from polytask.tracking import open_trackers

            self.trackers = open_trackers(output_dir, config, config.train.trackers, resume_step)

    def _trim_after(self, step: int) -> None:
        """On resume, drop lines an interrupted run logged after its last saved state (they are redone)."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut by the interruption
                continue
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def log(self, kind: str, step: int, values: dict[str, Any], epoch: float | None = None) -> None:
        if not self.enabled:
            return
        record = {"type": kind, "step": step, **({"epoch": round(epoch, 4)} if epoch is not None else {}),
                  "time": round(time.time(), 3), **values}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        for tracker in self.trackers:
            tracker.log(kind, step, values)

    def summary(self, values: dict[str, Any], files: list[Path]) -> None:
        """The run's final figures and report files, to every tracker (the JSONL log has the figures already)."""
        for tracker in self.trackers:
            tracker.summary(values, [f for f in files if f.is_file()])

    def close(self, failed: bool = False) -> None:
        """End the trackers' runs (``failed``: the training stopped on an error); a second call does nothing."""
        for tracker in self.trackers:
            tracker.close(failed)
        self.trackers = []
