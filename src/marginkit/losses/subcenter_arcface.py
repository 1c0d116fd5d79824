"""Sub-center ArcFace: K sub-centres per class, robust to noisy labels (Deng et al., ECCV 2020)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from marginkit._validation import check_embeddings, check_labels, check_positive_int
from marginkit.losses.angular_margin import check_margin
from marginkit.losses.arcface import ArcFaceLoss


class SubCenterArcFaceLoss(ArcFaceLoss):
    r"""ArcFace where each class has ``K`` sub-centres and a sample matches its closest one.

    .. math::
        \cos\theta_{ij} = \max_{k < K} \hat W_{jk}\cdot\hat x_i, \qquad
        \ell_i = -\log\frac{e^{s\cos(\theta_{iy_i} + m)}}
        {e^{s\cos(\theta_{iy_i} + m)} + \sum_{j\ne y_i} e^{s\cos\theta_{ij}}}

    Clean samples gather around a dominant sub-centre of their class while noisy (mislabelled)
    ones can sit at a non-dominant one instead of pulling the class apart.
    :meth:`find_outliers` then lists the samples farther than ``threshold`` from their class's
    dominant sub-centre (the paper's cleaning step; pytorch-metric-learning's
    ``get_outliers``), and :meth:`dominant_weight` gives the ``(num_classes, in_features)``
    weight of one centre per class, to drop the others after cleaning.

    ``weight`` has shape ``(num_classes * sub_centers, in_features)``; row ``j * K + k`` is
    sub-centre ``k`` of class ``j`` (``weight.view(num_classes, K, in_features)``). The
    cosines go through an ``(N, num_classes * K)`` matrix before the max, so the N×C work is
    ``K`` times that of ArcFace. The target angle is taken exactly against the closest
    sub-centre of the label.

    Paper: J. Deng, J. Guo, T. Liu, M. Gong, S. Zafeiriou, "Sub-center ArcFace: Boosting Face
    Recognition by Large-scale Noisy Web Faces", ECCV 2020.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        sub_centers: ``K >= 1`` (the paper's 3; ``K = 1`` is ArcFace).
        m: additive angular margin in radians, ``[0, pi)``.
        s: logit scale, or ``"auto"`` (AdaCos's :math:`\sqrt{2}\log(C-1)`).
        easy_margin: apply the margin only to positive target cosines.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        grad_mode: ``"exact"`` or ``"straight_through"``.

    Example:
        >>> import torch
        >>> head = SubCenterArcFaceLoss(in_features=8, num_classes=3, sub_centers=2, s=16.0)
        >>> tuple(head.weight.shape)
        (6, 8)
        >>> x, y = torch.randn(6, 8), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> head(x, y).ndim, head.logits(x).shape
        (0, torch.Size([6, 3]))
        >>> outliers, dominant = head.find_outliers(x, y, threshold=math.radians(75))
        >>> dominant.shape
        torch.Size([3])
    """

    # Its cosines are not one normalised product per class: no fused normalised-linear path.
    supports_memory_efficient = False

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        sub_centers: int = 3,
        m: float = 0.5,
        s: float | str = 64.0,
        easy_margin: bool = False,
        reduction: str = "mean",
        grad_mode: str = "exact",
    ) -> None:
        self.sub_centers = check_positive_int("sub_centers", sub_centers)
        super().__init__(
            in_features,
            num_classes,
            m=m,
            s=s,
            easy_margin=easy_margin,
            reduction=reduction,
            grad_mode=grad_mode,
        )

    def num_weight_rows(self) -> int:
        return self.num_classes * self.sub_centers

    def _sub_center_cosines(self, embeddings: Tensor) -> Tensor:
        """``(N, num_classes, K)`` cosines to every sub-centre."""
        cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))
        return cos.view(embeddings.shape[0], self.num_classes, self.sub_centers)

    def cosine(self, embeddings: Tensor) -> Tensor:
        """``(N, num_classes)``: the cosine to the closest sub-centre of each class."""
        return self._sub_center_cosines(embeddings).amax(dim=2)

    def _class_centers(self, labels: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(N, K, D)`` unit sub-centres of each row's label (in ``dtype``)."""
        centers = self.weight.view(self.num_classes, self.sub_centers, self.in_features)
        return F.normalize(centers[labels].to(dtype or self.weight.dtype), dim=2)

    def _closest(self, unit_embeddings: Tensor, centers: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.einsum("nkd,nd->nk", centers, unit_embeddings).argmax(dim=1)

    def closest_sub_centers(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """``(N,)`` index ``k`` of the sub-centre of its own class each sample is closest to."""
        with torch.no_grad():
            unit = F.normalize(embeddings.to(self.weight.dtype), dim=1)
            return self._closest(unit, self._class_centers(labels))

    def unit_target_weights(self, unit_embeddings: Tensor, labels: Tensor) -> Tensor:
        centers = self._class_centers(labels, unit_embeddings.dtype)
        closest = self._closest(unit_embeddings, centers)
        rows = torch.arange(labels.shape[0], device=labels.device)
        return centers[rows, closest]

    def dominant_sub_centers(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """``(num_classes,)`` the sub-centre most samples of each class are closest to.

        A majority vote over the given samples (ties: the lowest index); ``-1`` for a class
        without samples. Call it on the whole training set (or sum the votes yourself).
        """
        embeddings, labels = self.validate(embeddings, labels)
        closest = self.closest_sub_centers(embeddings, labels)
        votes = torch.zeros(
            self.num_classes, self.sub_centers, dtype=torch.long, device=labels.device
        )
        votes.index_put_((labels, closest), torch.ones_like(labels), accumulate=True)
        return torch.where(votes.sum(1) > 0, votes.argmax(dim=1), -1)

    def find_outliers(
        self,
        embeddings: Tensor,
        labels: Tensor,
        threshold: float = math.radians(75),
        dominant: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""Indices of the samples whose angle to their class's dominant sub-centre exceeds ``threshold``.

        Args:
            embeddings: ``(N, in_features)``.
            labels: ``(N,)`` class ids.
            threshold: angle in radians, ``(0, pi)``; the paper's and pytorch-metric-learning's
                75° by default.
            dominant: ``(num_classes,)`` dominant sub-centres (from
                :meth:`dominant_sub_centers` on the whole set), or ``None`` to vote on these
                samples.

        Returns:
            ``(outlier_indices, dominant)``: int64 indices into the rows, sorted, and the
            dominant sub-centre of each class.
        """
        check_embeddings(embeddings, self.in_features)
        labels = check_labels(labels, embeddings.shape[0])
        threshold = check_margin("threshold", threshold, upper=math.pi)
        if dominant is None:
            dominant = self.dominant_sub_centers(embeddings, labels)
        with torch.no_grad():
            centers = self._class_centers(labels)
            rows = torch.arange(labels.shape[0], device=labels.device)
            chosen = centers[rows, dominant[labels].clamp(min=0)]
            unit = F.normalize(embeddings.to(self.weight.dtype), dim=1)
            cos = (unit * chosen).sum(dim=1)
            outliers = torch.nonzero(cos < math.cos(threshold)).flatten()
        return outliers, dominant

    def dominant_weight(self, dominant: Tensor) -> Tensor:
        """``(num_classes, in_features)`` the dominant sub-centre of each class (a copy).

        For the paper's last step: after dropping the outliers, keep one centre per class, e.g.
        ``ArcFaceLoss(...).weight.data.copy_(head.dominant_weight(dominant))``.
        """
        centers = self.weight.detach().view(self.num_classes, self.sub_centers, self.in_features)
        rows = torch.arange(self.num_classes, device=centers.device)
        return centers[rows, dominant.clamp(min=0)].clone()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sub_centers={self.sub_centers}"
