"""COCO loss: congenerous cosine, normalised features against normalised centroids (Liu et al., 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginkit._validation import (
    check_embeddings,
    check_finite_number,
    check_label_range,
    check_labels,
    check_option,
    check_positive_int,
)
from marginkit.losses._loss_utils import reduce_loss
from marginkit.ops import REDUCTIONS, margin_softmax_loss, target_logsumexp


class COCOLoss(nn.Module):
    r"""Congenerous cosine loss: softmax over :math:`\alpha\,\hat c_k\cdot\hat x_i`.

    .. math::
        \ell_i = -\log \frac{e^{\alpha\, \hat c_{y_i}\cdot \hat x_i}}
        {\sum_k e^{\alpha\, \hat c_k \cdot \hat x_i}}, \qquad
        \hat x = \frac{x}{\lVert x\rVert}, \quad \hat c = \frac{c}{\lVert c\rVert}

    Liu, Li & Wang, "Rethinking Feature Discrimination and Polymerization for Large-scale
    Recognition" (NeurIPS 2017 workshop; first as "Learning Deep Features via Congenerous Cosine
    Loss for Person Recognition"): features are L2-normalised and scaled by :math:`\alpha`,
    centroids :math:`c_k` are L2-normalised. The maths is NormFace's with :math:`s = \alpha`;
    the class exists for users porting gluon-face or COCO code. The N×C work runs in the fused
    :func:`~marginkit.ops.target_logsumexp` (one N×C buffer: the gradient of the cosines).

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes; the centroids ``weight`` have shape
            ``(num_classes, in_features)`` like ``nn.Linear``.
        alpha: feature scale :math:`\alpha > 0`. Default 6.25 (common re-implementations' value;
            larger for many classes, as NormFace's ``s``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> head = COCOLoss(in_features=8, num_classes=3, alpha=6.25)
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).shape
        torch.Size([])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        alpha: float = 6.25,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.alpha = check_finite_number("alpha", alpha, positive=True)
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: Tensor) -> Tensor:
        """Return the ``(N, num_classes)`` cosines between embeddings and centroids."""
        unit = F.normalize(embeddings.to(self.weight.dtype), dim=1)
        return F.linear(unit, F.normalize(self.weight, dim=1))

    def logits(self, embeddings: Tensor) -> Tensor:
        """Return the classifier's logits :math:`\\alpha\\cos\\theta_{ik}`, ``(N, num_classes)``."""
        check_embeddings(embeddings, self.in_features)
        return self.alpha * self.cosine(embeddings)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Return the COCO loss of ``embeddings`` (N, in_features) for ``labels`` (N,)."""
        check_embeddings(embeddings, self.in_features)
        labels = check_labels(labels, embeddings.shape[0])
        check_label_range(labels, None, self.num_classes, None, name="labels")
        # The labels' range was checked above: the op need not read them back again.
        lse_rest, cos_target, _ = target_logsumexp(
            self.cosine(embeddings), labels, self.alpha, check_labels=False
        )
        return reduce_loss(margin_softmax_loss(lse_rest, self.alpha * cos_target), self.reduction)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"alpha={self.alpha:g}, reduction={self.reduction!r}"
        )
