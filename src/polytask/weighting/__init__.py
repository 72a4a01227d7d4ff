"""Loss-weighting methods. Each module registers one method; all are imported here explicitly."""

from polytask.weighting import static  # noqa: F401
from polytask.weighting.base import WEIGHTINGS, StepContext, Weighting

__all__ = ["WEIGHTINGS", "StepContext", "Weighting"]
