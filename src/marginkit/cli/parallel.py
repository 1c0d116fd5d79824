"""The ``parallel`` config group: the loss head replicated (``data``) or class-sharded (``model``).

``parallel=model`` replaces a combined-margin head (one with a ``combined_margin()`` method:
ArcFace, CosFace, NormFace, :class:`~marginkit.losses.CombinedMarginHead`) by the
:class:`~marginkit.losses.ShardedMarginHead` of the same margins, scale and reduction, with
Partial FC sampling ``parallel.sample_rate`` of the classes per step.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from marginkit.cli.config import ConfigError

MODES = ("data", "model")
SHARDED_HEAD = "marginkit.losses.ShardedMarginHead"


def parallel_mode(cfg: DictConfig) -> tuple[str, float]:
    """``(parallel.mode, parallel.sample_rate)``; ``("data", 1.0)`` without a parallel group.

    Example:
        >>> parallel_mode(OmegaConf.create({"parallel": {"mode": "model", "sample_rate": 0.1}}))
        ('model', 0.1)
    """
    node = cfg.get("parallel") or {}
    mode = node.get("mode", "data")
    if mode not in MODES:
        raise ConfigError(f"`parallel.mode` must be one of {MODES}, got {mode!r}")
    sample_rate = node.get("sample_rate", 1.0)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)):
        raise ConfigError(f"`parallel.sample_rate` must be a number in (0, 1], got {sample_rate!r}")
    if mode == "data" and sample_rate != 1.0:
        raise ConfigError("`parallel.sample_rate` < 1 (Partial FC) needs `parallel=model`")
    return mode, float(sample_rate)


def sharded_head_config(head: Any, num_classes: int, sample_rate: float) -> dict[str, Any]:
    """The :class:`~marginkit.losses.ShardedMarginHead` config that computes ``head``'s loss.

    ``head`` is any instance of the head (its class count does not matter: ``num_classes`` is
    the real one); its ``combined_margin()`` gives ``(m1, m2, m3, margin_fallback)``.

    Raises:
        ConfigError: a head without a combined margin, or with options the sharded head does
            not have (label smoothing, straight-through gradients).

    Example:
        >>> from marginkit.losses import CosFaceLoss
        >>> config = sharded_head_config(CosFaceLoss(8, 2, m=0.35, s=30.0), 10, 0.5)
        >>> config["m1"], config["m2"], config["m3"], config["s"], config["num_classes"]
        (1.0, 0.0, 0.35, 30.0, 10)
    """
    combined_margin = getattr(head, "combined_margin", None)
    if not callable(combined_margin):
        raise ConfigError(
            "`parallel=model` needs a combined-margin head (ArcFaceLoss, CosFaceLoss, "
            f"NormFaceLoss, CombinedMarginHead), got {type(head).__name__}"
        )
    if getattr(head, "smoothing_epsilon", 0.0) or getattr(head, "label2category", None):
        raise ConfigError("`parallel=model` does not support label smoothing")
    if getattr(head, "grad_mode", "exact") != "exact":
        raise ConfigError("`parallel=model` supports `loss.grad_mode=exact` only")
    m1, m2, m3, fallback = combined_margin()
    return {
        "_target_": SHARDED_HEAD,
        "in_features": int(head.in_features),
        "num_classes": int(num_classes),
        "m1": float(m1),
        "m2": float(m2),
        "m3": float(m3),
        "s": float(head.s),
        "sample_rate": float(sample_rate),
        "margin_fallback": fallback,
        "reduction": head.reduction,
        "memory_efficient": getattr(head, "memory_efficient", "auto"),
    }


def loss_config(cfg: DictConfig, num_classes: int | None, probe: Any) -> dict[str, Any] | None:
    """The loss config the module is built from (a new dict; ``cfg`` is left as it is).

    ``loss.num_classes`` left as ``???`` is filled in with the data's ``num_classes``; under
    ``parallel=model`` the head becomes its :func:`sharded_head_config`. ``probe`` is an
    instance of ``cfg.loss`` built with a stand-in class count (the preflight check), or None.
    """
    if not cfg.get("loss"):
        return None
    mode, sample_rate = parallel_mode(cfg)
    plain = OmegaConf.to_container(cfg.loss, resolve=True)  # a ??? stays "???"
    if "num_classes" in plain:
        if OmegaConf.is_missing(cfg.loss, "num_classes"):
            if num_classes is None:
                raise ConfigError(
                    "`loss.num_classes` is ??? and the datamodule has no `num_classes`"
                )
            plain["num_classes"] = num_classes
        elif num_classes is not None and cfg.loss.num_classes != num_classes:
            raise ConfigError(
                f"`loss.num_classes` is {cfg.loss.num_classes} but the data has {num_classes} "
                "training classes (leave it as ??? to fill it in)"
            )
    if mode == "model":
        if probe is None:
            raise ConfigError(
                f"`parallel=model` needs a combined-margin head, got {plain.get('_target_')}"
            )
        return sharded_head_config(probe, plain["num_classes"], sample_rate)
    return plain
