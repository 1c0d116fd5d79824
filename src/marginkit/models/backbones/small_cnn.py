"""A small convolutional backbone for small images (8×8 digits, 32×32 thumbnails)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import Tensor, nn

from marginkit.models.backbones._pretrained import load_pretrained
from marginkit.models.backbones.neck import EmbeddingNeck, _check_dropout, _check_sizes


class SmallCNN(nn.Module):
    """Stages of two (Conv3×3 → BatchNorm → ReLU), 2×2 max-pooling between stages, global
    average pooling, then an :class:`EmbeddingNeck`.

    Flat inputs (N, in_channels · image_size²), like the digits' 64-vectors, are reshaped to
    (N, in_channels, image_size, image_size); (N, C, H, W) inputs are used as they are (any size:
    the pooling is global; the 2×2 pooling rounds up, so a 1×1 map stays 1×1).

    Args:
        in_channels: image channels.
        image_size: side of square images given flat (None: inputs must be (N, C, H, W)).
        channels: output channels of each stage.
        embedding_dim: size of the embedding.
        dropout: dropout before the neck's linear layer.
        pretrained: a local file with this module's weights (``torch.load(weights_only=True)``).

    Example:
        >>> import torch
        >>> SmallCNN(in_channels=1, image_size=8, channels=(8, 16), embedding_dim=4)(
        ...     torch.randn(3, 64)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int | None = 8,
        channels: Sequence[int] = (32, 64),
        embedding_dim: int = 64,
        dropout: float = 0.0,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        channels = list(channels)
        if not channels:
            raise ValueError("`channels` must list at least one stage")
        _check_sizes(in_channels=in_channels, embedding_dim=embedding_dim)
        for value in channels:
            _check_sizes(channels=value)
        if image_size is not None:
            _check_sizes(image_size=image_size)
        _check_dropout(dropout)
        layers: list[nn.Module] = []
        size_in = in_channels
        for stage, size_out in enumerate(channels):
            if stage > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            for _ in range(2):
                layers += [
                    nn.Conv2d(size_in, size_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(size_out),
                    nn.ReLU(inplace=True),
                ]
                size_in = size_out
        self.features = nn.Sequential(*layers)
        self.neck = EmbeddingNeck(channels[-1], embedding_dim, dropout)
        self.in_channels = in_channels
        self.image_size = image_size
        self.embedding_dim = embedding_dim
        if pretrained is not None:
            load_pretrained(self, pretrained)

    def forward(self, x: Tensor) -> Tensor:
        """Return (N, embedding_dim) embeddings of flat or (N, C, H, W) images."""
        if x.ndim == 2:
            if self.image_size is None or x.shape[1] != self.in_channels * self.image_size**2:
                side = "?" if self.image_size is None else self.image_size
                raise ValueError(
                    f"flat inputs must have in_channels × image_size² = {self.in_channels} × "
                    f"{side}² values, got {x.shape[1]} (image_size={self.image_size})"
                )
            x = x.view(len(x), self.in_channels, self.image_size, self.image_size)
        maps = self.features(x)
        return self.neck(maps.mean((2, 3)))
