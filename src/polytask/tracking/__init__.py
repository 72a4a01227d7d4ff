"""Experiment tracking: where a run's config, metrics and final summary go besides ``metrics.jsonl``.

``train.report_to`` names the trackers (``tensorboard`` by default; ``wandb``, ``mlflow``). Each is one file here,
registered where it is defined and imported below, so that naming one never depends on import side effects. A
tracker's own library is imported only when the tracker is chosen.
"""

from polytask.tracking import mlflow as _mlflow  # noqa: F401  (registers "mlflow")
from polytask.tracking import tensorboard as _tensorboard  # noqa: F401  (registers "tensorboard")
from polytask.tracking import wandb as _wandb  # noqa: F401  (registers "wandb")
from polytask.tracking.base import TRACKERS, Tracker, check_installed, flatten, log_evaluation, open_trackers

__all__ = ["TRACKERS", "Tracker", "check_installed", "flatten", "log_evaluation", "open_trackers"]
