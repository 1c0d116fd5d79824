"""The plain softmax baseline: a linear classifier trained with cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from marginkit._validation import check_embeddings, check_memory_efficient
from marginkit.losses._head import ClassWeightHead
from marginkit.losses.angular_margin import resolve_memory_efficient
from marginkit.ops import margin_softmax_loss, target_logsumexp

# With ``memory_efficient``, rows are processed in chunks of about this many logits.
_CHUNK_LOGITS = 1 << 22


class SoftmaxLoss(ClassWeightHead):
    r"""Softmax cross-entropy over unnormalised logits :math:`z_{ij} = W_j \cdot x_i`.

    .. math:: \ell_i = -\log \frac{e^{z_{i,y_i}}}{\sum_j e^{z_{ij}}}
        = \operatorname{softplus}\Big(\log\sum_{j\ne y_i} e^{z_{ij}} - z_{iy_i}\Big)

    The baseline the margin heads are measured against: it separates the training classes but
    does not make the embedding space compact, so it transfers worse to unseen classes. The
    loss runs on the fused :func:`marginkit.ops.target_logsumexp` (one N×C gradient buffer).

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes (``>= 2``); ``weight`` is
            ``(num_classes, in_features)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        memory_efficient: ``True``: the rows run in chunks of about 4M logits under activation
            checkpointing, so the ``(N, C)`` logits never exist at once (the backward recomputes
            each chunk's); ``False``: one ``(N, C)`` pass; ``"auto"``: chunks from 8192 classes
            on (as the angular heads' switch). Same loss and gradients either way.

    Example:
        >>> import torch
        >>> head = SoftmaxLoss(in_features=8, num_classes=3)
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0])).ndim
        0
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        reduction: str = "mean",
        memory_efficient: bool | str = "auto",
    ) -> None:
        self.memory_efficient = check_memory_efficient(memory_efficient)
        super().__init__(in_features, num_classes, reduction)

    def features(self, embeddings: Tensor) -> Tensor:
        """What the linear classifier sees (the embeddings themselves here)."""
        return embeddings

    def logits(self, embeddings: Tensor) -> Tensor:
        """The ``(N, num_classes)`` class logits :math:`W x` used at inference."""
        check_embeddings(embeddings, self.in_features)
        return F.linear(self.features(embeddings.to(self.weight.dtype)), self.weight)

    def uses_memory_efficient(self) -> bool:
        """Whether :meth:`per_row_loss` runs the rows in checkpointed chunks."""
        return resolve_memory_efficient(self.memory_efficient, self.num_classes)

    def _rows_loss(self, features: Tensor, labels: Tensor, weight: Tensor) -> Tensor:
        logits = F.linear(features, weight)
        rest = target_logsumexp(logits, labels, 1.0, check_labels=False)  # checked in validate
        return margin_softmax_loss(rest.lse_rest, rest.cos_target)

    def per_row_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        features = self.features(embeddings)
        if not self.uses_memory_efficient():
            return self._rows_loss(features, labels, self.weight)
        rows = max(1, _CHUNK_LOGITS // self.num_classes)
        chunks = [
            checkpoint(self._rows_loss, part, part_labels, self.weight, use_reentrant=False)
            for part, part_labels in zip(features.split(rows), labels.split(rows), strict=True)
        ]
        return torch.cat(chunks)

    def repr_fields(self) -> list[str]:
        return [f"memory_efficient={self.memory_efficient!r}"]
