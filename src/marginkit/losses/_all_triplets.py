r"""The triplet loss summed over *every* valid triplet of a batch, in O(B²) memory.

``torch.ops.marginkit.all_triplets_loss_sum(distances, labels, margin, soft, memory_budget)``
returns ``(loss_sum, n_active)`` with

.. math::
    \text{loss\_sum} = \sum_a \sum_{p \in P(a)} \sum_{n \in N(a)} \ell(d_{ap} - d_{an} + m),
    \qquad \ell = \mathrm{relu} \text{ (hinge) or } \mathrm{softplus} \text{ (soft, } m = 0),

where :math:`P(a)` are the other items of the anchor's class and :math:`N(a)` the items of other
classes, and ``n_active`` counts the triplets with :math:`d_{ap} - d_{an} + m > 0`. The
triplets are never listed: each anchor's positives are gathered into at most
:math:`P_{max}` slots (the largest class size − 1), and blocks of (anchors × positive slots ×
B candidate negatives) are evaluated one after the other, each block sized to
``memory_budget`` bytes (12 bytes per float32 element are counted: the block, the soft loss's
output, a boolean comparison). Invalid combinations are −inf in the block, so a block costs
four passes over its elements (difference, relu, count, sum) and no mask.

Backward (a second op) recomputes every block instead of keeping them, so the forward saves
only the B×B distances and the labels. With :math:`g = \ell'(d_{ap} - d_{an} + m)` (the
indicator of an active triplet, or a sigmoid), the gradient of the sum is
:math:`\partial/\partial d_{ap} = \sum_n g` and :math:`\partial/\partial d_{an} = -\sum_p g`:
one (B, B) tensor, exact.

The inputs are trusted (the loss validates them): ``distances`` is (B, B) floating, ``labels``
(B,) int64 on the same device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.nn import functional as F

from marginkit.miners._inputs import pair_masks

DEFAULT_MEMORY_BUDGET = 64 * 2**20
# Bytes per element of one (anchors, positive slots, B) block at float32: the block itself, the
# soft loss's output and one boolean comparison (the hinge needs only the block).
_BYTES_PER_ELEMENT = 12
# Active triplets are counted by a float32 sum of ones per block: exact up to 2**24 of them.
_MAX_BLOCK_ELEMENTS = 2**24


class _Blocks:
    """The margins of every triplet, laid out as (anchor, positive slot, candidate negative).

    ``pos_margin[a, s] = d(a, pos_idx[a, s]) + m`` for the anchor's positives in slots (−inf in
    unused slots) and ``neg_distance[a, n] = d(a, n)`` for its negatives (+inf for the items of
    its own class), so ``pos_margin[a, s] − neg_distance[a, n]`` is the triplet's
    :math:`d_{ap} - d_{an} + m` where it is valid and −inf elsewhere: relu, softplus, sigmoid
    and "> 0" all give 0 there, and no mask is needed inside the blocks.
    """

    def __init__(
        self, distances: Tensor, labels: Tensor, margin: float, memory_budget: int
    ) -> None:
        positive, negative = pair_masks(labels)
        batch = len(labels)
        n_pos = positive.sum(1)
        max_pos = int(n_pos.max()) if batch else 0
        anchors, columns = positive.nonzero().unbind(1)
        first_of_anchor = torch.cumsum(n_pos, 0) - n_pos
        slot = torch.arange(len(anchors), device=labels.device) - first_of_anchor[anchors]
        self.pos_idx = torch.zeros(batch, max_pos, dtype=torch.long, device=labels.device)
        self.pos_idx[anchors, slot] = columns
        unused = torch.arange(max_pos, device=labels.device) >= n_pos.unsqueeze(1)
        self.pos_margin = distances.gather(1, self.pos_idx).add_(margin)
        self.pos_margin.masked_fill_(unused, float("-inf"))
        self.neg_distance = distances.masked_fill(~negative, float("inf"))
        per_element = _BYTES_PER_ELEMENT * distances.element_size() // 4
        per_row_slot = per_element * max(batch, 1)
        budget = min(memory_budget, _MAX_BLOCK_ELEMENTS * per_element)
        self.slot_step = max(1, min(max_pos, budget // per_row_slot))
        self.row_step = max(1, budget // (per_row_slot * self.slot_step))
        self.batch, self.max_pos = batch, max_pos

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        for row_start in range(0, self.batch, self.row_step):
            rows = slice(row_start, min(row_start + self.row_step, self.batch))
            for slot_start in range(0, self.max_pos, self.slot_step):
                yield rows, slice(slot_start, min(slot_start + self.slot_step, self.max_pos))

    def margins(self, rows: slice, slots: slice) -> Tensor:
        """The (rows, slots, B) block of :math:`d_{ap} - d_{an} + m` (−inf where invalid)."""
        return torch.sub(
            self.pos_margin[rows, slots].unsqueeze(2), self.neg_distance[rows].unsqueeze(1)
        )


@torch.library.custom_op("marginkit::all_triplets_loss_sum", mutates_args=())
def all_triplets_loss_sum(
    distances: Tensor, labels: Tensor, margin: float, soft: bool, memory_budget: int
) -> tuple[Tensor, Tensor]:
    """Return ``(loss_sum, n_active)`` over all valid triplets (see the module docstring)."""
    blocks = _Blocks(distances, labels, margin, memory_budget)
    loss_sum = torch.zeros((), dtype=torch.float64, device=distances.device)
    n_active = torch.zeros((), dtype=torch.long, device=distances.device)
    for rows, slots in blocks:
        z = blocks.margins(rows, slots)
        if soft:
            loss_sum += F.softplus(z).sum()
            z.clamp_min_(0.0)
        else:
            z.clamp_min_(0.0)
            loss_sum += z.sum()
        # sign() of the clamped block is the 0/1 indicator; a float sum of at most 2**24 ones
        # is exact, and several times faster on the CPU than counting booleans.
        n_active += z.sign_().sum().long()
    return loss_sum.to(distances.dtype), n_active


@all_triplets_loss_sum.register_fake
def _(distances, labels, margin, soft, memory_budget):
    return distances.new_empty(()), distances.new_empty((), dtype=torch.long)


@torch.library.custom_op("marginkit::all_triplets_loss_sum_bwd", mutates_args=())
def all_triplets_loss_sum_bwd(
    grad_sum: Tensor,
    distances: Tensor,
    labels: Tensor,
    margin: float,
    soft: bool,
    memory_budget: int,
) -> Tensor:
    """Gradient of ``loss_sum`` with respect to ``distances``, block by block."""
    blocks = _Blocks(distances, labels, margin, memory_budget)
    grad = torch.zeros_like(distances)
    for rows, slots in blocks:
        # The loss's slope, in place: sigmoid (soft) or the 0/1 indicator of an active triplet.
        z = blocks.margins(rows, slots)
        slope = z.sigmoid_() if soft else z.gt_(0.0)
        grad[rows].scatter_add_(1, blocks.pos_idx[rows, slots], slope.sum(2))
        grad[rows] -= slope.sum(1)
    return grad.mul_(grad_sum)


@all_triplets_loss_sum_bwd.register_fake
def _(grad_sum, distances, labels, margin, soft, memory_budget):
    return torch.empty_like(distances)


def _setup_context(ctx, inputs, output) -> None:
    distances, labels, margin, soft, memory_budget = inputs
    ctx.save_for_backward(distances, labels)
    ctx.options = (margin, soft, memory_budget)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_sum, _grad_active):
    distances, labels = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = all_triplets_loss_sum_bwd(grad_sum, distances, labels, *ctx.options)
    return grad, None, None, None, None


all_triplets_loss_sum.register_autograd(_backward, setup_context=_setup_context)
