"""Backbones: ``nn.Module`` s mapping inputs to (N, embedding_dim) embeddings.

Every backbone exposes ``embedding_dim`` (what ``conf/loss`` reads as
``${backbone.embedding_dim}``) and takes ``pretrained``, a local weights file. Your own network is
one ``_target_`` away: any ``nn.Module`` with an ``embedding_dim`` attribute, or any trunk wrapped
in :class:`Embedder` (see ``docs/backbones.md``).
"""

from marginkit.models.backbones._pretrained import load_pretrained
from marginkit.models.backbones.iresnet import (
    IRESNET_LAYERS,
    IBasicBlock,
    IResNet,
    iresnet18,
    iresnet34,
    iresnet50,
    iresnet100,
)
from marginkit.models.backbones.mlp import MLP
from marginkit.models.backbones.mobilefacenet import MobileFaceNet
from marginkit.models.backbones.neck import Embedder, EmbeddingNeck
from marginkit.models.backbones.small_cnn import SmallCNN

__all__ = [
    "IRESNET_LAYERS",
    "MLP",
    "Embedder",
    "EmbeddingNeck",
    "IBasicBlock",
    "IResNet",
    "MobileFaceNet",
    "SmallCNN",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "load_pretrained",
]
