"""The shared encoder, the task heads, the multi-task model, and checkpoint save/load."""

from polytask.model.multitask import MultiTaskModel

__all__ = ["MultiTaskModel"]
