"""insightface's IResNet (arcface_torch's ``iresnet18/34/50/100``) for 112×112 face crops."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from marginkit.models.backbones._face_layout import (
    check_square_images,
    check_stage_sizes,
    side_after_halvings,
)
from marginkit.models.backbones._pretrained import load_pretrained
from marginkit.models.backbones.neck import _check_dropout, _check_sizes

#: Blocks per stage of the usual depths (Deng et al., ArcFace; insightface's arcface_torch).
IRESNET_LAYERS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
_STAGE_CHANNELS = (64, 128, 256, 512)


def _conv3x3(size_in: int, size_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(size_in, size_out, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """The improved residual block: ``x + BN(Conv(PReLU(BN(Conv(BN(x))))))``.

    BN → Conv3×3 → BN → PReLU → Conv3×3 (stride) → BN, plus the shortcut (a strided Conv1×1 →
    BN when the shape changes). No activation after the addition.

    Example:
        >>> IBasicBlock(8, 16, stride=2)(torch.randn(1, 8, 6, 6)).shape
        torch.Size([1, 16, 3, 3])
    """

    def __init__(self, size_in: int, size_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(size_in, eps=1e-5)
        self.conv1 = _conv3x3(size_in, size_out)
        self.bn2 = nn.BatchNorm2d(size_out, eps=1e-5)
        self.prelu = nn.PReLU(size_out)
        self.conv2 = _conv3x3(size_out, size_out, stride)
        self.bn3 = nn.BatchNorm2d(size_out, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or size_in != size_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(size_in, size_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(size_out, eps=1e-5),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """insightface's IResNet: the ResNet of ArcFace for aligned 112×112 faces.

    Stem Conv3×3 (64, stride 1) → BN → PReLU; four stages of :class:`IBasicBlock` with 64, 128,
    256, 512 channels, ``layers[i]`` blocks each, the first block of every stage with stride 2
    (112 → 56 → 28 → 14 → 7); then the output layer BN2d → Dropout → flatten →
    Linear(512·7·7 → ``embedding_dim``) → BatchNorm1d (its scale fixed at 1, as in
    arcface_torch). Convolutions are initialised from N(0, 0.1²), batch norms to (1, 0).

    The module names follow arcface_torch (``conv1``, ``layer1.0.bn1``, ``fc``, ``features``…),
    so one of its state dicts saved with ``torch.save`` can be given as ``pretrained``.
    ``layers`` (2,2,2,2), (3,4,6,3), (3,4,14,3), (3,13,30,3) are iresnet18/34/50/100
    (:data:`IRESNET_LAYERS`; :func:`iresnet50` etc. build them).

    Args:
        layers: blocks in each of the four stages.
        embedding_dim: size of the embedding (insightface: 512).
        dropout: dropout before the output linear layer.
        input_size: side of the square input images (112 for insightface's aligned faces); the
            output linear layer has ``512 · ⌈input_size / 16⌉²`` inputs.
        in_channels: image channels.
        zero_init_residual: start every block as the identity (its last BN scale at 0).
        pretrained: a local file with this module's weights (``torch.load(weights_only=True)``).

    Example:
        >>> net = IResNet((1, 1, 1, 1), embedding_dim=8, input_size=16)
        >>> net(torch.randn(2, 3, 16, 16)).shape, net.embedding_dim
        (torch.Size([2, 8]), 8)
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        embedding_dim: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
        in_channels: int = 3,
        zero_init_residual: bool = False,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        layers = check_stage_sizes("layers", layers, "the blocks of 4 stages")
        _check_sizes(embedding_dim=embedding_dim, input_size=input_size, in_channels=in_channels)
        _check_dropout(dropout)
        self.conv1 = _conv3x3(in_channels, _STAGE_CHANNELS[0])
        self.bn1 = nn.BatchNorm2d(_STAGE_CHANNELS[0], eps=1e-5)
        self.prelu = nn.PReLU(_STAGE_CHANNELS[0])
        size_in = _STAGE_CHANNELS[0]
        for stage, (blocks, size_out) in enumerate(zip(layers, _STAGE_CHANNELS, strict=True)):
            stage_blocks = [IBasicBlock(size_in, size_out, stride=2)]
            stage_blocks += [IBasicBlock(size_out, size_out) for _ in range(blocks - 1)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*stage_blocks))
            size_in = size_out
        side = side_after_halvings(input_size)
        self.bn2 = nn.BatchNorm2d(size_in, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(size_in * side * side, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1.0)
                nn.init.constant_(module.bias, 0.0)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, IBasicBlock):
                    nn.init.constant_(module.bn3.weight, 0.0)
        self.layers = layers
        self.input_size = input_size
        self.in_channels = in_channels
        self.embedding_dim = embedding_dim
        if pretrained is not None:
            load_pretrained(self, pretrained)

    def forward(self, x: Tensor) -> Tensor:
        """Return (N, embedding_dim) embeddings of (N, in_channels, input_size, input_size) images."""
        check_square_images(x, self.in_channels, self.input_size, "IResNet")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def _factory(name: str):
    def build(
        embedding_dim: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
        pretrained: str | os.PathLike | None = None,
    ) -> IResNet:
        return IResNet(
            IRESNET_LAYERS[name],
            embedding_dim=embedding_dim,
            dropout=dropout,
            input_size=input_size,
            pretrained=pretrained,
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"{name}: :class:`IResNet` with layers {IRESNET_LAYERS[name]} (no example: it is large)."
    )
    return build


iresnet18 = _factory("iresnet18")
iresnet34 = _factory("iresnet34")
iresnet50 = _factory("iresnet50")
iresnet100 = _factory("iresnet100")
