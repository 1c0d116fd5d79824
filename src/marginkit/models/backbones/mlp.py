"""A small multilayer perceptron backbone for vector inputs."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

from torch import Tensor, nn

from marginkit.models.backbones._pretrained import load_pretrained


class MLP(nn.Module):
    """Multilayer perceptron producing ``embedding_dim``-dimensional embeddings.

    ``in_features → hidden[0] → … → embedding_dim``, each hidden layer Linear → BatchNorm → ReLU
    (→ Dropout), the last layer Linear followed by BatchNorm (the "BN-neck" of face-recognition
    backbones, which keeps embedding norms comparable across samples).

    Args:
        in_features: input dimension (64 for the 8×8 digits).
        hidden: sizes of the hidden layers.
        embedding_dim: output dimension; heads read it as their ``in_features``.
        dropout: dropout probability after each hidden layer.
        pretrained: a local file with this module's weights (``torch.load(weights_only=True)``).

    Example:
        >>> import torch
        >>> MLP(64, (128,), 32)(torch.randn(5, 64)).shape
        torch.Size([5, 32])
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: Sequence[int] = (256,),
        embedding_dim: int = 64,
        dropout: float = 0.0,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        if any(size <= 0 for size in [*sizes, embedding_dim]):
            raise ValueError(
                f"`in_features`, `hidden` and `embedding_dim` must be positive, got "
                f"{in_features}, {list(hidden)}, {embedding_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        for size_in, size_out in itertools.pairwise(sizes):
            layers += [nn.Linear(size_in, size_out), nn.BatchNorm1d(size_out), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(sizes[-1], embedding_dim), nn.BatchNorm1d(embedding_dim)]
        self.layers = nn.Sequential(*layers)
        self.in_features = in_features
        self.embedding_dim = embedding_dim
        if pretrained is not None:
            load_pretrained(self, pretrained)

    def forward(self, x: Tensor) -> Tensor:
        """Return (N, embedding_dim) embeddings of (N, in_features) inputs."""
        return self.layers(x.flatten(1))
