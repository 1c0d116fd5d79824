"""MagFace: a magnitude-aware margin and a regulariser on the feature norm (Meng et al., CVPR 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marginkit.losses._head import detached
from marginkit.losses.angular_margin import AngularMarginLoss, check_margin
from marginkit.ops import combined_margin_logit
from marginkit.ops._dtypes import accumulation_dtype


class MagFaceLoss(AngularMarginLoss):
    r"""ArcFace with a margin that grows with the feature magnitude, plus a magnitude regulariser.

    With :math:`a_i = \operatorname{clamp}(\lVert x_i\rVert, l_a, u_a)` (differentiable),

    .. math::
        m(a) = \frac{u_m - l_m}{u_a - l_a}(a - l_a) + l_m, \qquad
        g(a) = \frac{1}{a} + \frac{a}{u_a^2},

    .. math::
        \ell_i = -\log\frac{e^{s\cos(\theta_{iy_i} + m(a_i))}}
        {e^{s\cos(\theta_{iy_i} + m(a_i))} + \sum_{j\ne y_i} e^{s\cos\theta_{ij}}}
        + \lambda_g\, g(a_i).

    The margin's gradient reaches the norm, so high-quality samples are pulled to larger
    magnitudes and the norm becomes a quality score; :math:`g` keeps the norms from collapsing.
    The target logit uses the easy margin by default (the margin only where
    :math:`\cos\theta > 0`, elsewhere :math:`\cos\theta`): the official ``MagLinear``
    defaults to ``easy_margin=True`` and its model builders never pass it. ``easy_margin=False``
    gives ArcFace's continuation :math:`\cos\theta - m\sin m` past :math:`\theta + m = \pi`. ``last_logs`` holds the batch's mean regulariser and mean magnitude.

    Note the magnitudes are those of the embeddings the head receives; the defaults are the
    paper's (iResNet-100 features with norms 10–110). A small backbone whose norms sit below
    ``l_a`` gets the constant margin ``l_m`` and no regulariser gradient: lower ``l_a``/``u_a``.

    Paper: Q. Meng, S. Zhao, Z. Huang, F. Zhou, "MagFace: A Universal Representation for Face
    Recognition and Quality Assessment", CVPR 2021.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        s: logit scale, or ``"auto"`` (AdaCos's :math:`\sqrt{2}\log(C-1)`). Default 64.
        l_a, u_a: magnitude range, ``0 < l_a < u_a``. Default 10, 110.
        l_m, u_m: margin range in radians, ``0 <= l_m <= u_m < pi``. Default 0.45, 0.8.
        lambda_g: weight of the regulariser, ``>= 0``. Default 35.
        easy_margin: apply the margin only to positive target cosines. Default ``True`` (the
            official code's).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        memory_efficient: ``True`` / ``False`` / ``"auto"``: run the N×C step on the
            fused normalised-linear op (see :class:`~marginkit.losses.AngularMarginLoss`).

    Example:
        >>> import torch
        >>> head = MagFaceLoss(in_features=8, num_classes=3, s=16.0, l_a=1.0, u_a=10.0)
        >>> loss = head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
        >>> loss.ndim, sorted(head.last_logs)
        (0, ['magface_magnitude', 'magface_regularizer'])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        s: float | str = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        easy_margin: bool = True,
        reduction: str = "mean",
        memory_efficient: bool | str = "auto",
    ) -> None:
        super().__init__(
            in_features, num_classes, s=s, reduction=reduction, memory_efficient=memory_efficient
        )
        self.l_a = check_margin("l_a", l_a)
        if self.l_a == 0:
            raise ValueError("`l_a` must be > 0, got 0.0")
        self.u_a = check_margin("u_a", u_a)
        if self.u_a <= self.l_a:
            raise ValueError(f"`u_a` must be > `l_a` ({self.l_a}), got {self.u_a}")
        self.l_m = check_margin("l_m", l_m, upper=math.pi)
        self.u_m = check_margin("u_m", u_m, upper=math.pi)
        if self.u_m < self.l_m:
            raise ValueError(f"`u_m` must be >= `l_m` ({self.l_m}), got {self.u_m}")
        self.lambda_g = check_margin("lambda_g", lambda_g)
        if not isinstance(easy_margin, bool):
            raise TypeError(f"`easy_margin` must be a bool, got {type(easy_margin).__name__}")
        self.easy_margin = easy_margin

    def magnitude(self, embeddings: Tensor) -> Tensor:
        r""":math:`a_i = \operatorname{clamp}(\lVert x_i\rVert, l_a, u_a)`, ``(N,)``, differentiable."""
        norms = torch.linalg.vector_norm(
            embeddings.to(accumulation_dtype(self.weight.dtype)), dim=1
        )
        return norms.clamp(self.l_a, self.u_a)

    def margin(self, magnitude: Tensor) -> Tensor:
        """The per-sample margin :math:`m(a)`, linear from ``l_m`` at ``l_a`` to ``u_m`` at ``u_a``."""
        slope = (self.u_m - self.l_m) / (self.u_a - self.l_a)
        return slope * (magnitude - self.l_a) + self.l_m

    def regularizer(self, magnitude: Tensor) -> Tensor:
        r""":math:`g(a) = 1/a + a/u_a^2`, ``(N,)``."""
        return 1.0 / magnitude + magnitude / self.u_a**2

    def target_logit(
        self, cos: Tensor, theta: Tensor, embeddings: Tensor, labels: Tensor
    ) -> Tensor:
        margin = self.margin(self.magnitude(embeddings))
        fallback = "easy" if self.easy_margin else "arcface"
        return combined_margin_logit(cos, theta, 1.0, margin, 0.0, fallback)

    def per_row_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        magnitude = self.magnitude(embeddings)
        regularizer = self.regularizer(magnitude)
        if self.training:
            self.last_logs = {
                "magface_regularizer": detached(regularizer.mean()),
                "magface_magnitude": detached(magnitude.mean()),
            }
        loss = super().per_row_loss(embeddings, labels)
        return loss + self.lambda_g * regularizer.to(loss.dtype)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, l_a={self.l_a:g}, u_a={self.u_a:g}, l_m={self.l_m:g}, "
            f"u_m={self.u_m:g}, lambda_g={self.lambda_g:g}"
        )
