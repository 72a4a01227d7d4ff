"""Loss-weighting methods. Each module registers one method; all are imported here explicitly."""

from polytask.weighting import (  # noqa: F401
    cagrad,
    dwa,
    famo,
    gradnorm,
    pcgrad,
    rlw,
    static,
    uncertainty,
)
from polytask.weighting.base import WEIGHTINGS, StepContext, Weighting

__all__ = ["WEIGHTINGS", "StepContext", "Weighting"]
