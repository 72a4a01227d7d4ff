"""Weights & Biases: offline by default, so a run needs no network and no account."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Any

from polytask.tracking.base import TRACKERS, require, scalars


@TRACKERS.register("wandb")
class WandbTracker:
    """A W&B run in ``<run>/wandb/`` — ``train.tracking.wandb_mode: offline`` (the default) writes it there
    only; ``wandb sync <run>/wandb/offline-run-*`` uploads it later; ``online`` logs live (needs ``wandb login``).
    Project ``train.tracking.project``, name ``train.tracking.run_name`` (default: the run folder's name), the
    resolved config as the run's config, scalars as ``<kind>/<name>``, the final summary in the run's summary and
    the report files saved with the run. ``--resume`` and ``polytask evaluate`` continue the same run id."""

    package = "wandb"

    def __init__(self, output_dir: Path, config: Any, resume: dict | None, resume_step: int | None):
        wandb = require("wandb", "wandb")
        tc = config.train.tracking
        run_id = resume["id"] if resume else secrets.token_hex(4)
        self.resume = {"id": run_id}
        self.run = wandb.init(project=tc.project, name=tc.run_name or output_dir.resolve().name, dir=str(output_dir),
                              mode=tc.wandb_mode, id=run_id, resume="allow",
                              config=config.to_dict() if resume is None else None,
                              settings=wandb.Settings(silent=True, console="off"))

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        self.run.log({f"{kind}/{k}": v for k, v in scalars(values).items()}, step=step)

    def summary(self, values: dict[str, Any], files: list[Path]) -> None:
        self.run.summary.update(scalars(values))
        for f in files:  # copied into the run's own files/ (a later write to the run folder leaves it as it was)
            kept = Path(self.run.dir) / f.name
            shutil.copyfile(f, kept)
            self.run.save(str(kept), base_path=self.run.dir, policy="now")

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)
