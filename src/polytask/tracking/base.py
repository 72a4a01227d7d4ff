"""The tracker protocol, the registry of trackers and what they share."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Protocol

from polytask.errors import UserError
from polytask.registry import Registry

TRACKERS: Registry[type] = Registry("tracker (train.report_to)")

RUN_IDS = "tracking.json"  # in the run folder: each tracker's run id, so --resume and evaluate log to the same run


class Tracker(Protocol):
    """One experiment tracker for one training run (main process only).

    ``__init__(output_dir, config, run_id, resume_step)`` starts or, given the ``run_id`` it returned before,
    resumes the tracked run (``resume_step``: the step a resumed training continues from, else None) and logs
    the resolved config; ``run_id`` is what a later call needs to log to the same run
    (``None`` when the tracker has no such id). ``log(kind, step, values)`` records scalars (``kind`` is
    ``train``, ``eval`` or ``test``); ``summary(values, files)`` records the final figures and the report files;
    ``close()`` ends it."""

    run_id: str | None

    def log(self, kind: str, step: int, values: dict[str, float]) -> None: ...

    def summary(self, values: dict[str, Any], files: list[Path]) -> None: ...

    def close(self) -> None: ...


def require(module: str, tracker: str) -> Any:
    """Import a tracker's library, or say how to install it (exit code 2)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"train.report_to names {tracker}, but the {module} package is not installed; "
                        f"pip install 'polytask[{tracker}]'") from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}`` (lists and None as their JSON text)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = json.dumps(v, ensure_ascii=False)
    return out


def scalars(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def open_trackers(output_dir: Path, config: Any, names: list[str], resume_step: int | None) -> list[Any]:
    """Start (or, with a ``resume_step``, continue) the named trackers for the run in ``output_dir``; their run
    ids are kept in ``output_dir/tracking.json``."""
    path = output_dir / RUN_IDS
    ids = json.loads(path.read_text(encoding="utf-8")) if resume_step is not None and path.is_file() else {}
    trackers = [TRACKERS.get(n, where="config key 'train.report_to'")(output_dir, config, ids.get(n), resume_step)
                for n in names]
    ids = {n: t.run_id for n, t in zip(names, trackers) if t.run_id is not None}
    if ids:
        path.write_text(json.dumps(ids, indent=2) + "\n", encoding="utf-8")
    return trackers


def reopen_trackers(run_dir: Path, config: Any) -> list[Any]:
    """The trackers of a finished run (its config's ``report_to``), continuing the same tracked runs — for
    ``polytask evaluate`` to add the test figures where the training's are. Trackers whose run id was not kept
    (tensorboard) are skipped."""
    ids = _ids(run_dir)
    return [TRACKERS.get(n)(run_dir, config, ids[n], None) for n in config.train.report_to if n in ids]


def log_evaluation(run_dir: Path, config: Any, split: str, values: dict[str, float], files: list[Path]) -> list[str]:
    """Add an evaluation (``polytask evaluate``: the split's figures and its report files) to the tracked runs of
    the training in ``run_dir``, at the training's last step. Returns the trackers written to."""
    trackers = reopen_trackers(run_dir, config)
    state = run_dir / "last" / "training_state" / "trainer_state.json"
    step = int(json.loads(state.read_text(encoding="utf-8")).get("global_step", 0)) if state.is_file() else 0
    for t in trackers:
        t.log(split, step, values)
        t.summary({f"{split}.{k}": v for k, v in values.items()}, [f for f in files if f.is_file()])
        t.close()
    return [n for n in config.train.report_to if n in _ids(run_dir)]


def _ids(run_dir: Path) -> dict[str, str]:
    path = run_dir / RUN_IDS
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
