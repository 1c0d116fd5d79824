"""Loss heads (``forward(embeddings, labels) -> loss``; heads own their class weights), pair and
triplet losses, regularisers, and the registry (:func:`get_loss`, :func:`get_loss_list`).

Classes are imported on first access (``marginkit.losses.ArcFaceLoss``), so importing the
package costs nothing until a loss is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from marginkit.losses.registry import get_loss, get_loss_list

# public name -> module (relative to marginkit.losses)
_EXPORTS: dict[str, str] = {
    "AngularMarginLoss": "angular_margin",
    "SoftmaxLoss": "softmax",
    "NormFaceLoss": "normface",
    "L2SoftmaxLoss": "l2softmax",
    "ArcFaceLoss": "arcface",
    "ArcFaceLossWithMLP": "arcface",
    "CosFaceLoss": "cosface",
    "SphereFaceLoss": "sphereface",
    "CombinedMarginHead": "combined_margin",
    "CombinedMarginLoss": "combined_margin",
    "SubCenterArcFaceLoss": "subcenter_arcface",
    "CurricularFaceLoss": "curricularface",
    "AdaFaceLoss": "adaface",
    "MagFaceLoss": "magface",
    "SVXSoftmaxLoss": "svx_softmax",
    "AdaCosLoss": "adacos",
    "COCOLoss": "coco",
    "LGMLoss": "lgm",
    "MPSLoss": "mps",
    "CenterLoss": "center",
    "RingLoss": "ring",
    "GitLoss": "git_loss",
    "Combined": "combined",
    "ShardedMarginHead": "sharded",
    "TripletLoss": "triplet",
    "TripletLossPlain": "triplet",
    "TripletLossWithMiner": "triplet",
    "ContrastiveLoss": "contrastive",
    "SurrogatePrecision": "surrogate_precision",
    "MultiSimilarityLoss": "multi_similarity",
    "CircleLoss": "circle",
    "SupConLoss": "supcon",
    "NTXentLoss": "supcon",
    "ProxyAnchorLoss": "proxy",
    "ProxyNCALoss": "proxy",
    "LiftedStructureLoss": "lifted",
    "GeneralizedLiftedStructureLoss": "lifted",
    "NPairsLoss": "npairs",
    "FastAPLoss": "fastap",
    "CrossBatchMemory": "cross_batch_memory",
}

__all__ = [*sorted(_EXPORTS), "get_loss", "get_loss_list"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"marginkit.losses.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'marginkit.losses' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
