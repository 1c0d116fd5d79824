"""The plain softmax baseline: a linear classifier trained with cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginkit._validation import REDUCTIONS, check_embeddings, check_option, check_positive_int
from marginkit.losses._loss_utils import reduce_loss
from marginkit.losses.angular_margin import prepare_inputs
from marginkit.ops import margin_softmax_loss, target_logsumexp


class SoftmaxLoss(nn.Module):
    r"""Softmax cross-entropy over unnormalised logits :math:`z_{ij} = W_j \cdot x_i`.

    .. math:: \ell_i = -\log \frac{e^{z_{i,y_i}}}{\sum_j e^{z_{ij}}}
        = \operatorname{softplus}\Big(\log\sum_{j\ne y_i} e^{z_{ij}} - z_{iy_i}\Big)

    The baseline the margin heads are measured against: it separates the training classes but
    does not make the embedding space compact, so it transfers worse to unseen classes. The
    loss runs on the fused :func:`marginkit.ops.target_logsumexp` (one N×C gradient buffer).

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes; ``weight`` is ``(num_classes, in_features)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> head = SoftmaxLoss(in_features=8, num_classes=3)
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).ndim
        0
    """

    def __init__(self, in_features: int, num_classes: int, reduction: str = "mean") -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.num_classes = check_positive_int("num_classes", num_classes)
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)

    def features(self, embeddings: Tensor) -> Tensor:
        """What the linear classifier sees (the embeddings themselves here)."""
        return embeddings

    def logits(self, embeddings: Tensor) -> Tensor:
        """The ``(N, num_classes)`` class logits :math:`W x` used at inference."""
        check_embeddings(embeddings, self.in_features)
        return F.linear(self.features(embeddings.to(self.weight.dtype)), self.weight)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The cross-entropy of ``features(embeddings) @ weight.T`` against ``labels``."""
        embeddings, labels = prepare_inputs(
            embeddings, labels, self.in_features, self.num_classes, self.weight.dtype
        )
        logits = F.linear(self.features(embeddings), self.weight)
        rest = target_logsumexp(logits, labels, 1.0, check_labels=False)  # checked above
        return reduce_loss(margin_softmax_loss(rest.lse_rest, rest.cos_target), self.reduction)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"
