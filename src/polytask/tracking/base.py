"""The tracker protocol, the registry of trackers and what they share."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any, Protocol

from polytask.errors import UserError
from polytask.registry import Registry

TRACKERS: Registry[type] = Registry("tracker (train.report_to)")

RUN_IDS = "tracking.json"  # in the run folder: how to find each tracked run again (--resume, evaluate)


class Tracker(Protocol):
    """One experiment tracker for one training run (main process only).

    ``__init__(output_dir, config, resume, resume_step)`` starts a tracked run, or continues the one described
    by ``resume`` (what its ``resume`` attribute held before: the run id and, for MLflow, the store), and logs the
    resolved config; ``resume_step`` is the step a resumed training continues from (else None). ``resume`` is
    None for trackers that cannot be continued by id (TensorBoard). ``package``: the library it imports (checked
    when the config is loaded). ``log(kind, step, values)`` records scalars (``kind``: ``train``, ``eval``,
    ``test``, ...); ``summary(values, files)`` records the final figures and the report files; ``close(failed)``
    ends it (``failed``: the training stopped on an error)."""

    package: str | None
    resume: dict[str, str] | None

    def log(self, kind: str, step: int, values: dict[str, float]) -> None: ...

    def summary(self, values: dict[str, Any], files: list[Path]) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def check_installed(names: list[str]) -> None:
    """Refuse, when the config is loaded, a tracker whose library is missing (exit code 2)."""
    for name in names:
        package = TRACKERS.get(name, where="config key 'train.report_to'").package
        try:
            found = package is None or importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):  # a module blocked or broken in sys.modules
            found = False
        if not found:
            raise UserError(f"config key 'train.report_to' names {name}, but the {package} package is not "
                            f"installed; pip install 'polytask[{name}]'")


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
    """Start (or, with a ``resume_step``, continue) the named trackers for the run in ``output_dir``; how to find
    their runs again is kept in ``output_dir/tracking.json``."""
    path = output_dir / RUN_IDS
    kept = _kept(output_dir) if resume_step is not None else {}
    trackers = [TRACKERS.get(n, where="config key 'train.report_to'")(output_dir, config, kept.get(n), resume_step)
                for n in names]
    kept = {n: t.resume for n, t in zip(names, trackers) if t.resume is not None}
    if kept:
        path.write_text(json.dumps(kept, indent=2) + "\n", encoding="utf-8")
    return trackers


def log_evaluation(run_dir: Path, config: Any, split: str, values: dict[str, float], files: list[Path]) -> list[str]:
    """Add an evaluation (``polytask evaluate``: the split's figures and its report files) to the tracked runs of
    the training in ``run_dir`` that can be continued (W&B, MLflow), at the training's last step. Returns the
    trackers written to."""
    kept = _kept(run_dir)
    names = [n for n in config.train.report_to if n in kept]
    state = run_dir / "last" / "training_state" / "trainer_state.json"
    step = int(json.loads(state.read_text(encoding="utf-8")).get("global_step", 0)) if state.is_file() else 0
    for n in names:
        t = TRACKERS.get(n)(run_dir, config, kept[n], None)
        t.log(split, step, values)
        t.summary({f"{split}.{k}": v for k, v in values.items()}, [f for f in files if f.is_file()])
        t.close()
    return names


def _kept(run_dir: Path) -> dict[str, dict[str, str]]:
    path = run_dir / RUN_IDS
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))
