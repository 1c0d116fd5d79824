"""Retrieval and verification metrics (torchmetrics classes) and their functional twins."""

from marginkit.metrics import functional
from marginkit.metrics.retrieval import RetrievalMetrics
from marginkit.metrics.verification import VerificationMetrics

__all__ = ["RetrievalMetrics", "VerificationMetrics", "functional"]
