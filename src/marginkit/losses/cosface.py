"""CosFace / AM-Softmax: additive cosine margin (Wang et al., CVPR 2018)."""

from __future__ import annotations

from marginkit.losses.angular_margin import AngularMarginLoss, check_margin


class CosFaceLoss(AngularMarginLoss):
    r"""CosFace head: target logit :math:`s(\cos\theta_{y} - m)`, other logits :math:`s\cos\theta_j`.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        m: additive cosine margin, ``m >= 0``. Default 0.35 (the paper's).
        s: logit scale. Default 64.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> head = CosFaceLoss(in_features=8, num_classes=3, m=0.35, s=16.0)
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).ndim
        0
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m: float = 0.35,
        s: float = 64.0,
        reduction: str = "mean",
    ) -> None:
        self.m = check_margin("m", m)
        super().__init__(in_features, num_classes, s=s, reduction=reduction)

    def margins(self) -> tuple[float, float, float]:
        return 1.0, 0.0, self.m
