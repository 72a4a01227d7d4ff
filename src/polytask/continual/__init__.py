"""Continual learning: train on from a trained run — a new task (``polytask add-task``) or fresh data for one
(``polytask update``) — while protecting the old tasks, and measure what they lost (forgetting report)."""

from polytask.continual.base import Continual, start_from_base
from polytask.continual.replay import replay_rows

__all__ = ["Continual", "replay_rows", "start_from_base"]
