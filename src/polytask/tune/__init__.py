"""``polytask tune``: hyperparameter search over a config's ``tune.space`` with Optuna (one objective or a
Pareto front over the tasks), each trial an ordinary run; see ``runner.tune``."""

from polytask.tune.runner import TuneResult, tune
from polytask.tune.space import Param, parse_space

__all__ = ["Param", "TuneResult", "parse_space", "tune"]
