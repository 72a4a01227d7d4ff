"""Task types. Each module registers one type in ``TASK_TYPES``; all are imported here explicitly."""

from polytask.tasks import classification, multilabel, regression, retrieval, token_classification  # noqa: F401
from polytask.tasks.base import TASK_TYPES, Example, TaskType

__all__ = ["TASK_TYPES", "Example", "TaskType"]


def build_task(name, cfg, labels=None) -> TaskType:
    """Instantiate the task type named by ``cfg.type`` for task ``name``."""
    return TASK_TYPES.get(cfg.type, where=f"config key 'tasks.{name}.type'")(name, cfg, labels)
