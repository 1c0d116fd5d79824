"""Functional twins of the metrics: one call on all the data, no state."""

from marginkit.metrics.functional.retrieval import retrieval_metrics
from marginkit.metrics.functional.verification import verification_metrics

__all__ = ["retrieval_metrics", "verification_metrics"]
