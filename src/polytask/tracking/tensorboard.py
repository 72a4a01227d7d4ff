"""TensorBoard: event files in ``<run>/tensorboard`` (the default tracker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polytask.tracking.base import TRACKERS, flatten, scalars


@TRACKERS.register("tensorboard")
class TensorBoardTracker:
    """Scalars as ``<kind>/<name>`` (``train/loss/intent``, ``eval/intent.accuracy``), the resolved config as
    text, the final summary as scalars at the last step. On resume, events after the resumed step are purged
    (they are redone). ``tensorboard --logdir runs/`` shows every run."""

    package = "tensorboard"
    resume = None  # event files are continued by folder, not by id

    def __init__(self, output_dir: Path, config: Any, resume: dict | None, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=purge)
        self.step = resume_step or 0
        if resume_step is None:
            table = "\n".join(f"    {k}: {v}" for k, v in flatten(config.to_dict()).items())
            self.writer.add_text("config", table)

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        for key, value in scalars(values).items():
            self.writer.add_scalar(f"{kind}/{key}", value, step)
        self.step = max(self.step, step)
        self.writer.flush()

    def summary(self, values: dict[str, Any], files: list[Path]) -> None:
        for key, value in scalars(values).items():
            self.writer.add_scalar(f"summary/{key}", value, self.step)
        for f in files:
            if f.suffix == ".md":
                self.writer.add_text(f"report/{f.name}", f.read_text(encoding="utf-8"), self.step)
            elif f.suffix == ".json":
                self.writer.add_text(f"report/{f.name}", "    " + json.dumps(json.loads(f.read_text(
                    encoding="utf-8")), indent=2, ensure_ascii=False).replace("\n", "\n    "), self.step)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()
