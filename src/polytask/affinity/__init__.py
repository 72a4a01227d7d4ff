"""``polytask affinity``: which tasks help or hurt each other, measured during a short training run."""

from polytask.affinity.measure import measure_affinity
from polytask.affinity.report import recommend, write_report

__all__ = ["measure_affinity", "recommend", "write_report"]
