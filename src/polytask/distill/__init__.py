"""Knowledge distillation: a student learns every task from trained teachers (``polytask distill``)."""

from polytask.distill.base import Distiller
from polytask.distill.soft_targets import SoftTargets
from polytask.distill.teacher import Ensemble, Teachers

__all__ = ["Distiller", "Ensemble", "SoftTargets", "Teachers"]
