"""Multi-task vs single-task vs frozen-probe comparison over seeds (``polytask compare``)."""

from polytask.compare.runner import CompareResult, compare

__all__ = ["compare", "CompareResult"]
