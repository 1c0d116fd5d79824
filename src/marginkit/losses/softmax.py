"""The plain softmax baseline: a linear classifier trained with cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginkit.losses._validation import check_embeddings, check_labels, check_positive_int
from marginkit.ops import REDUCTIONS
from marginkit.ops._validation import check_label_range, check_option


class SoftmaxLoss(nn.Module):
    r"""Softmax cross-entropy over unnormalised logits :math:`z_{ij} = W_j \cdot x_i`.

    .. math:: \ell_i = -\log \frac{e^{z_{i,y_i}}}{\sum_j e^{z_{ij}}}

    The baseline the margin heads are measured against: it separates the training classes but
    does not make the embedding space compact, so it transfers worse to unseen classes.

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

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Return the cross-entropy of ``embeddings @ weight.T`` against ``labels``."""
        check_embeddings(embeddings, self.in_features)
        labels = check_labels(labels, embeddings.shape[0])
        check_label_range(labels, None, self.num_classes, None, name="labels")
        return F.cross_entropy(F.linear(embeddings, self.weight), labels, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"
