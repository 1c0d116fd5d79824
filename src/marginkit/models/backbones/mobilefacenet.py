"""MobileFaceNet (Chen et al., 2018) as insightface's arcface_torch builds it (``mbf``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import Tensor, nn

from marginkit.models.backbones._face_layout import (
    check_square_images,
    check_stage_sizes,
    side_after_halvings,
)
from marginkit.models.backbones._pretrained import load_pretrained
from marginkit.models.backbones.neck import _check_sizes


class ConvBlock(nn.Module):
    """Conv (no bias) → BatchNorm → PReLU; ``linear=True`` leaves out the PReLU."""

    def __init__(
        self,
        size_in: int,
        size_out: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        linear: bool = False,
    ) -> None:
        super().__init__()
        modules: list[nn.Module] = [
            nn.Conv2d(size_in, size_out, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(size_out),
        ]
        if not linear:
            modules.append(nn.PReLU(size_out))
        self.layers = nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """The inverted-residual bottleneck: 1×1 expand → 3×3 depthwise (stride) → 1×1 linear project.

    ``groups`` is the expanded width; with ``residual`` the input is added to the output.
    """

    def __init__(
        self, size_in: int, size_out: int, groups: int, stride: int = 1, residual: bool = False
    ) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(size_in, groups),
            ConvBlock(groups, groups, kernel=3, stride=stride, padding=1, groups=groups),
            ConvBlock(groups, size_out, linear=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` residual :class:`DepthWise` bottlenecks of constant width."""

    def __init__(self, channels: int, num_block: int, groups: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(channels, channels, groups, residual=True) for _ in range(num_block)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """MobileFaceNet for 112×112 faces: depthwise bottlenecks and a global depthwise conv head.

    As arcface_torch's ``get_mbf`` (``scale=2``, ``blocks=(1, 4, 6, 2)`` by default; 64·scale
    and 128·scale channels): Conv3×3/2 → [depthwise Conv3×3 or ``blocks[0]`` bottlenecks] →
    bottleneck/2 → ``blocks[1]`` bottlenecks → bottleneck/2 (to 128·scale) → ``blocks[2]``
    bottlenecks → bottleneck/2 → ``blocks[3]`` bottlenecks → Conv1×1 (512) → the GDC output:
    a 7×7 global depthwise conv (linear) → Linear(512 → ``embedding_dim``, no bias) →
    BatchNorm1d. 112 → 56 → 28 → 14 → 7. Module names follow arcface_torch (``layers``,
    ``conv_sep``, ``features``).

    Args:
        embedding_dim: size of the embedding.
        blocks: bottlenecks of the four residual groups (the first: 1 = a plain depthwise conv).
        scale: width multiplier of the 64 / 128 channel stages.
        input_size: side of the square input images; the global depthwise kernel is
            ``⌈input_size / 16⌉``.
        in_channels: image channels.
        pretrained: a local file with this module's weights (``torch.load(weights_only=True)``).

    Example:
        >>> import torch
        >>> net = MobileFaceNet(embedding_dim=16, blocks=(1, 1, 1, 1), scale=1, input_size=32)
        >>> net.eval()(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 16])
    """

    def __init__(
        self,
        embedding_dim: int = 512,
        blocks: Sequence[int] = (1, 4, 6, 2),
        scale: int = 2,
        input_size: int = 112,
        in_channels: int = 3,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        blocks = check_stage_sizes("blocks", blocks, "4 residual groups")
        _check_sizes(
            embedding_dim=embedding_dim, scale=scale, input_size=input_size, in_channels=in_channels
        )
        narrow, wide = 64 * scale, 128 * scale
        first: nn.Module
        if blocks[0] == 1:
            first = ConvBlock(narrow, narrow, kernel=3, padding=1, groups=64)
        else:
            first = Residual(narrow, blocks[0], groups=128)
        self.layers = nn.ModuleList(
            [
                ConvBlock(in_channels, narrow, kernel=3, stride=2, padding=1),
                first,
                DepthWise(narrow, narrow, groups=128, stride=2),
                Residual(narrow, blocks[1], groups=128),
                DepthWise(narrow, wide, groups=256, stride=2),
                Residual(wide, blocks[2], groups=256),
                DepthWise(wide, wide, groups=512, stride=2),
                Residual(wide, blocks[3], groups=256),
            ]
        )
        self.conv_sep = ConvBlock(wide, 512)
        side = side_after_halvings(input_size)
        self.features = nn.Sequential(
            ConvBlock(512, 512, kernel=side, groups=512, linear=True),
            nn.Flatten(),
            nn.Linear(512, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )
        self._init_weights()
        self.input_size = input_size
        self.in_channels = in_channels
        self.embedding_dim = embedding_dim
        if pretrained is not None:
            load_pretrained(self, pretrained)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.constant_(module.weight, 1.0)
                nn.init.constant_(module.bias, 0.0)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Return (N, embedding_dim) embeddings of (N, in_channels, input_size, input_size) images."""
        check_square_images(x, self.in_channels, self.input_size, "MobileFaceNet")
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))
