"""Early stopping on a named validation metric; remembers the best score and when it was reached."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from polytask.config import EarlyStoppingConfig
from polytask.tasks.base import LOWER_IS_BETTER


def lower_is_better(metric: str) -> bool:
    last = metric.split(".")[-1]
    return last in LOWER_IS_BETTER or last.endswith("_loss")  # e.g. meta-learning's <task>.episode_loss


@dataclass
class EarlyStopping:
    """Call ``update(score)`` after each validation; it returns True when the score is a new best.
    ``should_stop`` turns True after ``patience`` validations without improvement (never if patience is None).
    """

    metric: str
    patience: int | None
    min_delta: float = 0.0
    best: float | None = None
    best_step: int = -1
    bad_evals: int = 0

    @classmethod
    def from_config(cls, cfg: EarlyStoppingConfig) -> EarlyStopping:
        return cls(metric=cfg.metric, patience=cfg.patience, min_delta=cfg.min_delta)

    def update(self, score: float, step: int) -> bool:
        if math.isnan(score):
            improved = False
        elif self.best is None:
            improved = True
        elif lower_is_better(self.metric):
            improved = score < self.best - self.min_delta
        else:
            improved = score > self.best + self.min_delta
        if improved:
            self.best, self.best_step, self.bad_evals = score, step, 0
        else:
            self.bad_evals += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
