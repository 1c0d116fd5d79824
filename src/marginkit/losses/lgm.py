"""Large-margin Gaussian mixture loss (L-GM; Wan, Zhong, Huang & Chang, CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from marginkit._validation import check_embeddings, check_nonnegative
from marginkit.losses._head import ClassWeightHead, detached
from marginkit.ops import margin_softmax_loss, target_logsumexp


class LGMLoss(ClassWeightHead):
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
        num_classes: number of training classes (``>= 2``); the means ``weight`` have shape
            ``(num_classes, in_features)`` like ``nn.Linear``.
        in_features: embedding dimension.
        alpha: margin :math:`\alpha \ge 0`. Default 0.1.
        lamda: likelihood weight :math:`\lambda \ge 0` (the paper's name). Default 0.1.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        embedding_size: gluon-face's name of ``in_features`` (keyword only; give one of them).

    Attributes:
        last_logs: ``{"classification": …, "likelihood": …}``, the row means of the two terms
            (the likelihood term unweighted) as 0-d tensors, after each call.

    Example:
        >>> import torch
        >>> head = LGMLoss(num_classes=3, in_features=8, alpha=0.1, lamda=0.1)
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).shape
        torch.Size([])
    """

    def __init__(
        self,
        num_classes: int,
        in_features: int | None = None,
        alpha: float = 0.1,
        lamda: float = 0.1,
        reduction: str = "mean",
        *,
        embedding_size: int | None = None,
    ) -> None:
        if in_features is None and embedding_size is None:
            raise TypeError("LGMLoss needs `in_features` (or gluon-face's `embedding_size`)")
        if in_features is not None and embedding_size is not None and in_features != embedding_size:
            raise ValueError(
                f"`in_features` ({in_features}) and `embedding_size` ({embedding_size}) are "
                "aliases and must agree; give one of them"
            )
        self.alpha = check_nonnegative("alpha", alpha)
        self.lamda = check_nonnegative("lamda", lamda)
        size = in_features if in_features is not None else embedding_size
        super().__init__(size, num_classes, reduction)

    @property
    def embedding_size(self) -> int:
        """gluon-face's name of ``in_features``."""
        return self.in_features

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

    def per_row_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        x = embeddings
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
            "classification": detached(classification.mean()),
            "likelihood": detached(distance.mean()),
        }
        return classification + self.lamda * distance

    def repr_fields(self) -> list[str]:
        return [f"alpha={self.alpha:g}", f"lamda={self.lamda:g}"]
