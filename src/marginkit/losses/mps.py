"""DocFace's max-margin pairwise score loss (MPS; Shi & Jain, 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginkit._validation import (
    check_finite_number,
    check_floating_matrix,
    check_labels,
    check_option,
)
from marginkit.losses._head import detached
from marginkit.losses._loss_utils import reduce_loss
from marginkit.ops import REDUCTIONS


def aligned_pairs(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Split a batch into aligned pairs of the same label: ``(first, second)`` row indices.

    Within each label, its instances (in batch order) are paired consecutively: the 1st with the
    2nd, the 3rd with the 4th, ...; an odd one out is left unused.

    Example:
        >>> import torch
        >>> first, second = aligned_pairs(torch.tensor([4, 7, 4, 7, 7, 9]))
        >>> first.tolist(), second.tolist()
        ([0, 1], [2, 3])
    """
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.arange(labels.shape[0], device=labels.device) - starts
    usable = rank < torch.repeat_interleave(counts // 2 * 2, counts)
    return order[usable & (rank % 2 == 0)], order[usable & (rank % 2 == 1)]


class MPSLoss(nn.Module):
    r"""Max-margin pairwise score loss over two aligned batches (DocFace).

    For :math:`M` aligned pairs :math:`(a_i, b_i)` of the same identity (in DocFace an ID-document
    photo and a selfie), with cosine scores :math:`s_{ij} = \hat a_i\cdot\hat b_j`,

    .. math::
        \ell_i = \max\Big(0,\; m + \max_{j \ne i}\, \max(s_{ij}, s_{ji}) - s_{ii}\Big),
        \qquad \mathcal L = \frac1M \sum_i \ell_i

    Shi & Jain, "DocFace: Matching ID Document Photos to Selfies", BTAS 2018 (arXiv 1805.02283),
    eq. of the MPS loss: each genuine score must beat the hardest impostor score of its row and
    of its column by the margin :math:`m`. (gluon-face's ``MPSLoss`` returns half this value.)

    Two entry points:

    * :meth:`pair_loss` ``(first, second)``: the formula above on two aligned ``(M, D)`` batches
      (``first[i]`` and ``second[i]`` share an identity, different ``i`` different identities);
    * :meth:`forward` ``(embeddings, labels)``, for ``train.py``: the aligned pairs are formed
      from a batch with at least 2 instances per label (the instances of a label are paired in
      batch order; see :func:`aligned_pairs`), and a pair's impostors are the pairs of the other
      labels. It needs at least two labels with two instances each; the class attributes
      ``requires_balanced_batches`` and ``min_instances_per_class`` tell the data pipeline to
      sample P labels × K instances.

    Args:
        m: margin on the cosine scores, a finite number ``>= 0``. Default 0.5 (DocFace's
            released fine-tuning config).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (over pairs).

    Attributes:
        last_logs: ``{"genuine": mean s_ii, "impostor": mean hardest impostor score, "pairs": M}``.

    Example:
        >>> import torch
        >>> loss_fn = MPSLoss(m=0.5)
        >>> first = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> loss_fn.pair_loss(first, first).item()  # genuine 1, impostors 0: margin met
        0.0
    """

    requires_balanced_batches = True
    min_instances_per_class = 2

    def __init__(self, m: float = 0.5, reduction: str = "mean") -> None:
        super().__init__()
        self.m = check_finite_number("m", m)
        if self.m < 0:
            raise ValueError(f"`m` must be a finite number >= 0, got {self.m}")
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.last_logs: dict[str, Tensor | float] = {}

    def pair_loss(self, first: Tensor, second: Tensor) -> Tensor:
        """Return the MPS loss of two aligned ``(M, D)`` batches, ``M >= 2``."""
        first, second = (
            check_floating_matrix("first", first),
            check_floating_matrix("second", second),
        )
        if first.shape != second.shape:
            raise ValueError(
                f"`second` must have the shape of `first` {tuple(first.shape)}, got "
                f"{tuple(second.shape)}"
            )
        if first.shape[0] < 2:
            raise ValueError(
                f"`first` must hold at least 2 pairs (impostors come from the other pairs), "
                f"got {first.shape[0]}"
            )
        return reduce_loss(self._rows(first, second, None), self.reduction)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Return the MPS loss over the aligned pairs formed from ``embeddings`` and ``labels``."""
        embeddings = check_floating_matrix("embeddings", embeddings)
        labels = check_labels(labels, embeddings.shape[0])
        first, second = aligned_pairs(labels)
        pair_labels = labels[first]
        if pair_labels.numel() < 2 or bool((pair_labels == pair_labels[0]).all()):
            raise ValueError(
                "`labels` must hold at least 2 labels with >= 2 instances each (MPSLoss forms "
                f"same-label pairs and takes impostors from other labels), got "
                f"{pair_labels.unique().numel()} such label(s) in a batch of {labels.shape[0]}; "
                "sample batches of P labels x K >= 2 instances"
            )
        same_label = pair_labels[:, None] == pair_labels[None, :]
        return reduce_loss(
            self._rows(embeddings[first], embeddings[second], same_label), self.reduction
        )

    def _rows(self, first: Tensor, second: Tensor, same_label: Tensor | None) -> Tensor:
        dtype = torch.promote_types(first.dtype, second.dtype)
        scores = F.normalize(first.to(dtype), dim=1) @ F.normalize(second.to(dtype), dim=1).T
        genuine = scores.diagonal()
        excluded = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
        if same_label is not None:
            excluded = excluded | same_label
        impostor = torch.maximum(scores, scores.T).masked_fill(excluded, float("-inf")).amax(1)
        self.last_logs = {
            "genuine": detached(genuine.mean()),
            "impostor": detached(impostor.mean()),
            "pairs": float(scores.shape[0]),
        }
        return torch.relu(self.m + impostor - genuine)

    def extra_repr(self) -> str:
        return f"m={self.m:g}, reduction={self.reduction!r}"
