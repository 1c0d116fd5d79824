"""The embedding neck: features of any trunk → the embedding (linear + batch norm)."""

from __future__ import annotations

import os

from torch import Tensor, nn

from marginkit._validation import check_positive_int
from marginkit.models.backbones._pretrained import load_pretrained


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        check_positive_int(name, value)


def _check_dropout(dropout: float) -> float:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout}")
    return float(dropout)


class EmbeddingNeck(nn.Module):
    """``BatchNorm1d(Linear(Dropout(x.flatten(1))))``: features → ``embedding_dim`` embedding.

    The "BN-neck" of face recognition (insightface's ``fc`` + ``features``): the batch norm
    keeps embedding norms comparable across samples before a margin head normalises them.

    Args:
        in_features: size of the (flattened) input features.
        embedding_dim: size of the embedding.
        dropout: dropout probability before the linear layer.
        bias: give the linear layer a bias.

    Example:
        >>> import torch
        >>> EmbeddingNeck(32, 8, dropout=0.1)(torch.randn(4, 32)).shape
        torch.Size([4, 8])
    """

    def __init__(
        self, in_features: int, embedding_dim: int = 512, dropout: float = 0.0, bias: bool = True
    ) -> None:
        super().__init__()
        _check_sizes(in_features=in_features, embedding_dim=embedding_dim)
        self.dropout = nn.Dropout(_check_dropout(dropout))
        self.linear = nn.Linear(in_features, embedding_dim, bias=bias)
        self.batch_norm = nn.BatchNorm1d(embedding_dim)
        self.in_features = in_features
        self.embedding_dim = embedding_dim

    def forward(self, features: Tensor) -> Tensor:
        """Return (N, embedding_dim) embeddings of (N, …) features (flattened)."""
        return self.batch_norm(self.linear(self.dropout(features.flatten(1))))


class Embedder(nn.Module):
    """Any trunk (timm, torchvision, your own) followed by an :class:`EmbeddingNeck`.

    ``neck(pool(trunk(x)))``: the trunk's output is global-average-pooled when it is a
    (N, C, H, W) feature map, then the neck maps its ``trunk_features`` values to the
    embedding. With Hydra the trunk is a nested ``_target_`` (see ``docs/backbones.md``)::

        backbone:
          _target_: marginkit.models.backbones.Embedder
          trunk: {_target_: timm.create_model, model_name: resnet50, num_classes: 0}
          trunk_features: 2048
          embedding_dim: 512

    Args:
        trunk: maps inputs to (N, trunk_features) features or (N, trunk_features, H, W) maps.
        trunk_features: the size of the trunk's features.
        embedding_dim: the size of the embedding.
        dropout: dropout before the neck's linear layer.
        pretrained: a local file with this module's weights (see :func:`load_pretrained`).

    Example:
        >>> import torch
        >>> trunk = torch.nn.Conv2d(3, 16, 3)
        >>> Embedder(trunk, 16, 8)(torch.randn(2, 3, 10, 10)).shape
        torch.Size([2, 8])
    """

    def __init__(
        self,
        trunk: nn.Module,
        trunk_features: int,
        embedding_dim: int = 512,
        dropout: float = 0.0,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(trunk, nn.Module):
            raise TypeError(f"`trunk` must be an nn.Module, got {type(trunk).__name__}")
        self.trunk = trunk
        self.neck = EmbeddingNeck(trunk_features, embedding_dim, dropout)
        self.embedding_dim = embedding_dim
        if pretrained is not None:
            load_pretrained(self, pretrained)

    def forward(self, x: Tensor) -> Tensor:
        """Return (N, embedding_dim) embeddings."""
        features = self.trunk(x)
        if features.ndim == 4:
            features = features.mean((2, 3))
        return self.neck(features)
