"""The run folder and the device: what ``train`` checks and writes before its first step."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from polytask.config import Config
from polytask.errors import UserError
from polytask.model.io import write_json
from polytask.precision import PrecisionChoice


def device_type() -> str:
    """The device type the Accelerator will pick (cuda, mps, xpu or cpu)."""
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps and mps.is_available():
        return "mps"
    xpu = getattr(torch, "xpu", None)
    return "xpu" if xpu and xpu.is_available() else "cpu"


def has_accelerator() -> bool:
    return device_type() != "cpu"


def check_output_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: a folder holding a run needs --resume (continue) or --overwrite (start over)."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    has_run = (out / "last").exists() or (out / "best").exists() or (out / "metrics.jsonl").exists()
    if resume and not (out / "last").exists() and not (out / ".last.old").exists():
        raise UserError(f"cannot resume: {out} holds no run (no last/ checkpoint)")
    if has_run and not resume and not overwrite:
        raise UserError(f"{out} already holds a run; add --resume to continue it or --overwrite to start over "
                        "(or set train.output_dir)")


def start_output_dir(out: Path, overwrite: bool, config: Config, precision: PrecisionChoice) -> None:
    """Called only once every input has been read and checked: clear an old run (with --overwrite)."""
    if overwrite:
        for name in ("best", "last", "tensorboard", "wandb", "tracking.json", "metrics.jsonl", "config.json",
                     "report.json", "report.md"):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    resolved = config.to_dict()
    resolved["train"]["precision"] = precision.precision  # what ran; the reason beside it
    resolved["precision_choice"] = {"requested": precision.requested, "reason": precision.reason}
    write_json(out / "config.json", resolved)
