"""Evaluation: running a model over a split, per-task metrics, reports."""
