"""Fused margin operators (``torch.ops.marginkit.*``) and their typed public wrappers.

* :func:`margin_cross_entropy`: the fused margin softmax cross-entropy (CPU kernel in chunked
  torch, CUDA kernel in Triton), ``torch.ops.marginkit.margin_cross_entropy_{fwd,bwd}``;
* :func:`combined_margin`: the margin-modified (unscaled) logits, OneFlow's
  ``combined_margin_loss``, ``torch.ops.marginkit.combined_margin_{fwd,bwd}``;
* :func:`margin_target`: the margin arithmetic on N-length target cosines, shared by all.
"""

from marginkit.ops._margin import GRAD_MODES, MARGIN_FALLBACKS, margin_target
from marginkit.ops._validation import IMPLS, REDUCTIONS
from marginkit.ops.combined_margin import combined_margin
from marginkit.ops.margin_cross_entropy import margin_cross_entropy

__all__ = [
    "GRAD_MODES",
    "IMPLS",
    "MARGIN_FALLBACKS",
    "REDUCTIONS",
    "combined_margin",
    "margin_cross_entropy",
    "margin_target",
]
