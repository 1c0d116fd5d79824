"""Retrieval and verification metrics (torchmetrics classes), their functional twins, and
:func:`plot_retrieval` (queries and their nearest items)."""

from marginkit.metrics import functional
from marginkit.metrics.retrieval import RetrievalMetrics
from marginkit.metrics.retrieval_plot import nearest_items, plot_retrieval
from marginkit.metrics.verification import VerificationMetrics

__all__ = [
    "RetrievalMetrics",
    "VerificationMetrics",
    "functional",
    "nearest_items",
    "plot_retrieval",
]
