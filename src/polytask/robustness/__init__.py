"""Robustness to noisy input: a deterministic noise suite and the ``polytask robustness`` report."""

from polytask.robustness.noise import CHINESE, ENGLISH, NOISES
from polytask.robustness.runner import robustness, write_outputs

__all__ = ["CHINESE", "ENGLISH", "NOISES", "robustness", "write_outputs"]
