"""The loss registry: ``get_loss(name, **kwargs)`` and ``get_loss_list()`` (gluon-face's interface).

Names are the file names of ``conf/loss/`` (``python train.py loss=<name>``). Classes are
imported on first use, so ``import marginkit.losses`` stays cheap.
"""

from __future__ import annotations

import importlib

from torch import nn

# name -> "module:Class" (module relative to marginkit.losses). Keep in sync with conf/loss/.
_REGISTRY: dict[str, str] = {
    # softmax heads (class weights)
    "softmax": "softmax:SoftmaxLoss",
    "normface": "normface:NormFaceLoss",
    "l2softmax": "l2softmax:L2SoftmaxLoss",
    "arcface": "arcface:ArcFaceLoss",
    "arcface_mlp": "arcface:ArcFaceLossWithMLP",
    "cosface": "cosface:CosFaceLoss",
    "sphereface": "sphereface:SphereFaceLoss",
    "combined_margin": "combined_margin:CombinedMarginHead",
    "subcenter_arcface": "subcenter_arcface:SubCenterArcFaceLoss",
    "curricularface": "curricularface:CurricularFaceLoss",
    "adaface": "adaface:AdaFaceLoss",
    "magface": "magface:MagFaceLoss",
    "svx_softmax": "svx_softmax:SVXSoftmaxLoss",
    "adacos": "adacos:AdaCosLoss",
    "coco": "coco:COCOLoss",
    "lgm": "lgm:LGMLoss",
    "mps": "mps:MPSLoss",
    # regularisers (combine with a head through Combined)
    "center": "center:CenterLoss",
    "ring": "ring:RingLoss",
    "git": "git_loss:GitLoss",
    # pair and triplet losses
    "triplet": "triplet:TripletLossWithMiner",
    "contrastive": "contrastive:ContrastiveLoss",
    "surrogate_precision": "surrogate_precision:SurrogatePrecision",
    # similarity pair and proxy losses (pytorch-metric-learning's), on the masked-similarity op
    "multi_similarity": "multi_similarity:MultiSimilarityLoss",
    "circle": "circle:CircleLoss",
    "supcon": "supcon:SupConLoss",
    "ntxent": "supcon:NTXentLoss",
    "proxy_anchor": "proxy:ProxyAnchorLoss",
    "proxy_nca": "proxy:ProxyNCALoss",
    "lifted_structure": "lifted:LiftedStructureLoss",
    "generalized_lifted_structure": "lifted:GeneralizedLiftedStructureLoss",
    "npairs": "npairs:NPairsLoss",
    "fastap": "fastap:FastAPLoss",
}


def _resolve(name: str) -> type[nn.Module]:
    module_name, class_name = _REGISTRY[name].split(":")
    module = importlib.import_module(f"marginkit.losses.{module_name}")
    return getattr(module, class_name)


def registered_name(cls: type) -> str | None:
    """Return the registry name of loss class ``cls``, or ``None`` if it is not registered.

    Example:
        >>> from marginkit.losses import CenterLoss
        >>> registered_name(CenterLoss)
        'center'
    """
    prefix = "marginkit.losses."
    if not cls.__module__.startswith(prefix):
        return None
    entry = f"{cls.__module__[len(prefix) :]}:{cls.__name__}"
    return next((name for name, value in _REGISTRY.items() if value == entry), None)


def get_loss_list() -> list[str]:
    """Return the registered loss names, sorted (the ``conf/loss/`` file names).

    Example:
        >>> "arcface" in get_loss_list()
        True
    """
    return sorted(_REGISTRY)


def get_loss(name: str, **kwargs: object) -> nn.Module:
    """Build the loss registered as ``name`` with ``kwargs`` passed to its constructor.

    ``name`` is matched case-insensitively (gluon-face's ``get_loss`` lower-cases it too).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: for an unknown ``name``; the message lists the available ones.

    Example:
        >>> head = get_loss("cosface", in_features=8, num_classes=3)
        >>> type(head).__name__
        'CosFaceLoss'
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str, got {type(name).__name__}")
    key = name.lower()
    if key not in _REGISTRY:
        raise ValueError(f"`name` must be one of {get_loss_list()}, got {name!r}")
    return _resolve(key)(**kwargs)
