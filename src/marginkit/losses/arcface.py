"""ArcFace: additive angular margin (Deng et al., CVPR 2019)."""

from __future__ import annotations

import math

from marginkit.losses.angular_margin import AngularMarginLoss, check_margin


class ArcFaceLoss(AngularMarginLoss):
    r"""ArcFace head: target logit :math:`s\cos(\theta_{y} + m)`, other logits :math:`s\cos\theta_j`.

    Where :math:`\theta_y + m > \pi` the target logit uses the monotonic continuation
    :math:`\cos\theta_y - m \sin m` (insightface's ``easy_margin=False`` rule), so the loss keeps
    decreasing as the target angle shrinks. With ``easy_margin=True`` the margin is applied only
    where :math:`\cos\theta_y > 0`.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        m: additive angular margin in radians, ``0 <= m < pi``. Default 0.5 (the paper's).
        s: logit scale. Default 64 (the paper's, for ~10^4–10^6 classes).
        easy_margin: apply the margin only to positive target cosines.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        grad_mode: ``"exact"`` (gradient through arccos) or ``"straight_through"``.

    Example:
        >>> import torch
        >>> head = ArcFaceLoss(in_features=8, num_classes=3, m=0.5, s=16.0)
        >>> loss = head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m: float = 0.5,
        s: float = 64.0,
        easy_margin: bool = False,
        reduction: str = "mean",
        grad_mode: str = "exact",
    ) -> None:
        self.m = check_margin("m", m, upper=math.pi)
        self.easy_margin = bool(easy_margin)
        self.margin_fallback = "easy" if self.easy_margin else "arcface"
        super().__init__(in_features, num_classes, s=s, reduction=reduction, grad_mode=grad_mode)

    def margins(self) -> tuple[float, float, float]:
        return 1.0, self.m, 0.0
