"""COCO loss: congenerous cosine, normalised features against normalised centroids (Liu et al., 2017)."""

from __future__ import annotations

from marginkit.losses.angular_margin import resolve_scale
from marginkit.losses.normface import NormFaceLoss


class COCOLoss(NormFaceLoss):
    r"""Congenerous cosine loss: softmax over :math:`\alpha\,\hat c_k\cdot\hat x_i` (NormFace, ``s = alpha``).

    .. math::
        \ell_i = -\log \frac{e^{\alpha\, \hat c_{y_i}\cdot \hat x_i}}
        {\sum_k e^{\alpha\, \hat c_k \cdot \hat x_i}}, \qquad
        \hat x = \frac{x}{\lVert x\rVert}, \quad \hat c = \frac{c}{\lVert c\rVert}

    Liu, Li & Wang, "Rethinking Feature Discrimination and Polymerization for Large-scale
    Recognition" (NeurIPS 2017 workshop; first as "Learning Deep Features via Congenerous Cosine
    Loss for Person Recognition"): features are L2-normalised and scaled by :math:`\alpha`,
    centroids :math:`c_k` are L2-normalised. The maths is NormFace's with :math:`s = \alpha`, and
    so is the class (:class:`~marginkit.losses.NormFaceLoss`, ``alpha`` is ``s``); it exists for
    users porting gluon-face or COCO code.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes; the centroids ``weight`` have shape
            ``(num_classes, in_features)`` like ``nn.Linear``.
        alpha: feature scale :math:`\alpha > 0` (``s``), or ``"auto"`` (AdaCos's
            :math:`\sqrt{2}\log(C-1)`). Default 6.25 (common
            re-implementations' value; larger for many classes, as NormFace's ``s``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        memory_efficient: as :class:`~marginkit.losses.AngularMarginLoss`.

    Example:
        >>> import torch
        >>> head = COCOLoss(in_features=8, num_classes=3, alpha=6.25)
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).shape, head.s
        (torch.Size([]), 6.25)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        alpha: float | str = 6.25,
        reduction: str = "mean",
        memory_efficient: bool | str = "auto",
    ) -> None:
        super().__init__(
            in_features,
            num_classes,
            s=resolve_scale(alpha, num_classes, name="alpha") if alpha != "auto" else "auto",
            reduction=reduction,
            memory_efficient=memory_efficient,
        )

    @property
    def alpha(self) -> float:
        """The feature scale :math:`\\alpha` (the same number as ``s``)."""
        return self.s
