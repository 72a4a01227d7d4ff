"""Run logging: a JSONL metrics log (appended, so a resumed run continues it) and TensorBoard scalars."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class RunLogger:
    """Writes ``metrics.jsonl`` (one JSON object per line) and, optionally, TensorBoard event files.

    Only the main process logs; other processes get a logger with ``enabled=False``.
    """

    def __init__(self, output_dir: Path, tensorboard: bool = True, enabled: bool = True,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None:
            self._trim_after(resume_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None
            self.tb = SummaryWriter(str(output_dir / "tensorboard"), purge_step=purge)

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
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{kind}/{key}", value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
