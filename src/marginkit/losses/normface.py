"""NormFace: the normalised softmax (Wang et al., ACM MM 2017)."""

from __future__ import annotations

from marginkit.losses.angular_margin import AngularMarginLoss


class NormFaceLoss(AngularMarginLoss):
    r"""Normalised softmax: logits :math:`s\cos\theta_{ij}`, no margin.

    .. math::
        \ell_i = -\log\frac{e^{s\cos\theta_{iy_i}}}{\sum_j e^{s\cos\theta_{ij}}},
        \qquad \cos\theta_{ij} = \frac{W_j\cdot x_i}{\lVert W_j\rVert\,\lVert x_i\rVert}

    Without the scale the loss cannot go below a large bound (the paper's Proposition 2); ``s``
    fixes that. pytorch-metric-learning's ``NormalizedSoftmaxLoss(temperature=0.05)`` is
    ``s = 20``.

    Paper: F. Wang, X. Xiang, J. Cheng, A. L. Yuille, "NormFace: L2 Hypersphere Embedding for
    Face Verification", ACM MM 2017.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        s: logit scale, or ``"auto"`` (AdaCos's :math:`\sqrt{2}\log(C-1)`). Default 20.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        memory_efficient: ``True`` / ``False`` / ``"auto"``: run the N×C step on the
            fused normalised-linear op (see :class:`~marginkit.losses.AngularMarginLoss`).

    Example:
        >>> import torch
        >>> head = NormFaceLoss(in_features=8, num_classes=3, s=20.0)
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).ndim
        0
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        s: float | str = 20.0,
        reduction: str = "mean",
        memory_efficient: bool | str = "auto",
    ) -> None:
        super().__init__(
            in_features, num_classes, s=s, reduction=reduction, memory_efficient=memory_efficient
        )

    def combined_margin(self) -> tuple[float, float, float, str]:
        """This head's target logit as insightface's combined margin ``(m1, m2, m3, fallback)``.

        ``s·(cos(m1·θ + m2) − m3)`` with ``fallback`` the ``margin_fallback`` of
        :func:`marginkit.ops.combined_margin_logit`: what a class-sharded
        :class:`~marginkit.losses.ShardedMarginHead` needs to compute the same loss.
        """
        return (1.0, 0.0, 0.0, "none")
