r"""SphereFace / A-Softmax: multiplicative angular margin (Liu et al., CVPR 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit._validation import check_positive_int
from marginkit.losses.angular_margin import AngularMarginLoss, check_margin
from marginkit.ops import combined_margin_logit


class SphereFaceLoss(AngularMarginLoss):
    r"""A-Softmax head: target logit :math:`s\,\psi(\theta_y)`, other logits :math:`s\cos\theta_j`.

    .. math::
        \psi(\theta) = (-1)^k\cos(m\theta) - 2k, \qquad
        \theta \in \Big[\frac{k\pi}{m}, \frac{(k+1)\pi}{m}\Big],\ k \in \{0, \dots, m-1\}

    :math:`\psi` is continuous and decreasing on :math:`[0, \pi]` (the bare
    :math:`\cos(m\theta)` is not, and rewards moving away from the class), from 1 to
    :math:`1 - 2m`. Features and weights are normalised and the logits scaled by ``s``, as in
    gluon-face's ``ASoftmax`` (the paper keeps :math:`\lVert x\rVert` instead of ``s``).

    With ``annealing=True`` the paper's optimisation trick: the target logit is
    :math:`(\lambda\cos\theta_y + \psi(\theta_y))/(1 + \lambda)`, starting near softmax and
    moving to A-Softmax, with
    :math:`\lambda = \max(\lambda_{min}, \lambda_{base}(1 + \gamma\,t)^{-p})` where :math:`t` counts
    the training forwards (buffer ``iteration``, saved in checkpoints; evaluation forwards do
    not count). The defaults are the paper's Caffe values (base 1000, gamma 0.12, power 1,
    min 5).

    Paper: W. Liu, Y. Wen, Z. Yu, M. Li, B. Raj, L. Song, "SphereFace: Deep Hypersphere
    Embedding for Face Recognition", CVPR 2017.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        m: integer angular margin ``>= 1`` (``m = 1``: normalised softmax). Default 4.
        s: logit scale, or ``"auto"`` (AdaCos's :math:`\sqrt{2}\log(C-1)`). Default 30.
        annealing: blend with the plain cosine by the decaying :math:`\lambda`.
        lambda_base, lambda_gamma, lambda_power, lambda_min: the schedule of :math:`\lambda`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        memory_efficient: ``True`` / ``False`` / ``"auto"``: run the N×C step on the
            fused normalised-linear op (see :class:`~marginkit.losses.AngularMarginLoss`).

    Example:
        >>> import torch
        >>> head = SphereFaceLoss(in_features=8, num_classes=3, m=4, s=16.0, annealing=True)
        >>> loss = head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
        >>> int(head.iteration), round(float(head.current_lambda()), 2)  # 1000 / (1 + 0.12)
        (1, 892.86)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m: int = 4,
        s: float | str = 30.0,
        annealing: bool = False,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
        reduction: str = "mean",
        memory_efficient: bool | str = "auto",
    ) -> None:
        super().__init__(
            in_features, num_classes, s=s, reduction=reduction, memory_efficient=memory_efficient
        )
        self.m = check_positive_int("m", m)
        if not isinstance(annealing, bool):
            raise TypeError(f"`annealing` must be a bool, got {type(annealing).__name__}")
        self.annealing = annealing
        self.lambda_base = check_margin("lambda_base", lambda_base)
        self.lambda_gamma = check_margin("lambda_gamma", lambda_gamma)
        self.lambda_power = check_margin("lambda_power", lambda_power)
        self.lambda_min = check_margin("lambda_min", lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> Tensor:
        r""":math:`\lambda` at the current ``iteration`` (a 0-dim tensor; 0 without annealing)."""
        if not self.annealing:
            return torch.zeros((), dtype=torch.float64, device=self.iteration.device)
        steps = self.iteration.to(torch.float64)
        decayed = self.lambda_base * (1.0 + self.lambda_gamma * steps) ** (-self.lambda_power)
        return decayed.clamp(min=self.lambda_min)

    def per_row_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if self.training and self.annealing:
            self.iteration += 1
        return super().per_row_loss(embeddings, labels)

    def target_logit(
        self, cos: Tensor, theta: Tensor, embeddings: Tensor, labels: Tensor
    ) -> Tensor:
        psi = combined_margin_logit(cos, theta, float(self.m), 0.0, 0.0, "monotonic")
        if not self.annealing:
            return psi
        weight = self.current_lambda().to(psi.dtype)
        return (weight * cos + psi) / (1.0 + weight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, annealing={self.annealing}"
