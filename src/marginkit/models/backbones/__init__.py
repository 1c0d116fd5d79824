"""Backbones: ``nn.Module`` s mapping inputs to (N, embedding_dim) embeddings."""

from marginkit.models.backbones.mlp import MLP

__all__ = ["MLP"]
