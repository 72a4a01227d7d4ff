"""Meta-learning (``train.meta``): episodic training of the shared encoder so that a new task is learnt from a
few examples (``polytask adapt``). One file per outer update rule, registered in ``META``."""

from polytask.meta import fomaml, reptile  # noqa: F401  (register the methods)
from polytask.meta.base import META, MetaLearner, OuterUpdate
from polytask.meta.episodes import Episode, EpisodePlan, draw_episode

__all__ = ["META", "Episode", "EpisodePlan", "MetaLearner", "OuterUpdate", "draw_episode"]
