"""Adversarial training methods. Each module registers one method; all are imported here explicitly."""

from polytask.adversarial import fgm, freelb, pgd, smart  # noqa: F401
from polytask.adversarial.base import ADVERSARIAL, Adversarial, Perturbable

__all__ = ["ADVERSARIAL", "Adversarial", "Perturbable"]
