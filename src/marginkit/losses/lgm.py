"""Large-margin Gaussian mixture loss (L-GM; Wan, Zhong, Huang & Chang, CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginkit._validation import (
    check_embeddings,
    check_label_range,
    check_labels,
    check_option,
    check_positive_int,
)
from marginkit.losses._loss_utils import check_nonnegative, reduce_loss
from marginkit.ops import REDUCTIONS, margin_softmax_loss, target_logsumexp


class LGMLoss(nn.Module):
    r"""L-GM loss: a Gaussian mixture classifier with a margin on the target's distance.

    With one Gaussian per class, identity covariance and equal priors, the distance of feature
    :math:`x_i` to mean :math:`\mu_k` is :math:`d_{ik} = \tfrac12\lVert x_i - \mu_k\rVert_2^2` and

    .. math::
        \ell_i = \underbrace{-\log\frac{e^{-(1+\alpha)\, d_{i y_i}}}
        {e^{-(1+\alpha)\, d_{i y_i}} + \sum_{k \ne y_i} e^{-d_{ik}}}}_{\text{classification}}
        \; + \; \lambda\, \underbrace{d_{i y_i}}_{\text{likelihood}}

    Wan, Zhong, Huang & Chang, "Rethinking Feature Distribution for Loss Functions in Image
    Classification", CVPR 2018: :math:`\alpha \ge 0` enlarges the target's distance (a margin
    in the Mahalanobis distance), :math:`\lambda \ge 0` weights the likelihood regulariser (the
    negative log-likelihood of :math:`x_i` under its class's Gaussian, up to a constant). With
    identity covariance the covariance terms of the paper cancel.

    The N×C work runs in the fused :func:`~marginkit.ops.target_logsumexp` on the logits
    :math:`z_{ik} = x_i\cdot\mu_k - \tfrac12\lVert\mu_k\rVert^2 = \tfrac12\lVert x_i\rVert^2 -
    d_{ik}` (scale 1); the target distance is computed from the difference vector.

    Args:
        num_classes: number of training classes; the means ``weight`` have shape
            ``(num_classes, embedding_size)`` like ``nn.Linear``.
        embedding_size: embedding dimension (gluon-face's name; ``in_features`` is accepted
            instead, keyword only).
        alpha: margin :math:`\alpha \ge 0`. Default 0.1.
        lamda: likelihood weight :math:`\lambda \ge 0` (the paper's name). Default 0.1.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        in_features: alias of ``embedding_size``.

    Attributes:
        last_logs: ``{"classification": …, "likelihood": …}``, the row means of the two terms
            (the likelihood term unweighted), after each call.

    Example:
        >>> import torch
        >>> head = LGMLoss(num_classes=3, embedding_size=8, alpha=0.1, lamda=0.1)
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).shape
        torch.Size([])
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int | None = None,
        alpha: float = 0.1,
        lamda: float = 0.1,
        reduction: str = "mean",
        *,
        in_features: int | None = None,
    ) -> None:
        super().__init__()
        if embedding_size is None and in_features is None:
            raise TypeError("LGMLoss needs `embedding_size` (or its alias `in_features`)")
        if embedding_size is not None and in_features is not None and embedding_size != in_features:
            raise ValueError(
                f"`embedding_size` ({embedding_size}) and `in_features` ({in_features}) are "
                "aliases and must agree; give one of them"
            )
        size = embedding_size if embedding_size is not None else in_features
        name = "embedding_size" if embedding_size is not None else "in_features"
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.in_features = self.embedding_size = check_positive_int(name, size)
        self.alpha = check_nonnegative("alpha", alpha)
        self.lamda = check_nonnegative("lamda", lamda)
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.weight = nn.Parameter(torch.empty(num_classes, self.in_features))
        nn.init.xavier_uniform_(self.weight)
        self.last_logs: dict[str, float] = {}

    def logits(self, embeddings: Tensor) -> Tensor:
        """Return :math:`-d_{ik} = -\\tfrac12\\lVert x_i - \\mu_k\\rVert^2`, ``(N, num_classes)``.

        The log-likelihoods of the mixture up to a constant: their arg-max is the classifier's
        decision.
        """
        check_embeddings(embeddings, self.in_features)
        x = embeddings.to(self.weight.dtype)
        means = self.weight
        return (
            x @ means.T - 0.5 * means.pow(2).sum(1)[None, :] - 0.5 * x.pow(2).sum(1, keepdim=True)
        )

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Return the L-GM loss of ``embeddings`` (N, embedding_size) for ``labels`` (N,)."""
        check_embeddings(embeddings, self.in_features)
        labels = check_labels(labels, embeddings.shape[0])
        check_label_range(labels, None, self.num_classes, None, name="labels")
        x = embeddings.to(self.weight.dtype)
        means = self.weight
        # Distances from the expansion ‖x‖² + ‖μ‖² − 2x·μ cancel: keep them out of autocast's
        # half precision (the head's dtype, like the target distance below).
        with torch.autocast(x.device.type, enabled=False):
            shifted = F.linear(x, means, -0.5 * means.pow(2).sum(1))  # ½‖x‖² − d_ik
        lse_shifted, _, _ = target_logsumexp(shifted, labels, 1.0, check_labels=False)
        distance = 0.5 * (x - means[labels]).pow(2).sum(1).to(lse_shifted.dtype)
        lse_rest = lse_shifted - 0.5 * x.pow(2).sum(1).to(lse_shifted.dtype)
        classification = margin_softmax_loss(lse_rest, -(1.0 + self.alpha) * distance)
        self.last_logs = {
            "classification": float(classification.detach().mean()),
            "likelihood": float(distance.detach().mean()),
        }
        return reduce_loss(classification + self.lamda * distance, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_size={self.embedding_size}, "
            f"alpha={self.alpha:g}, lamda={self.lamda:g}, reduction={self.reduction!r}"
        )
