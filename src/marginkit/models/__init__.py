"""LightningModules, backbones and schedules."""

from marginkit.models.embedding_module import EmbeddingModule, metric_mode
from marginkit.models.schedulers import cosine_with_warmup

__all__ = ["EmbeddingModule", "cosine_with_warmup", "metric_mode"]
