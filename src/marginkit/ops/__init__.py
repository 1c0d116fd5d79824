"""Fused margin operators (``torch.ops.marginkit.*``), their typed public wrappers, and the margin maths.

* :func:`target_logsumexp`: the margin-agnostic N×C work of every softmax head (the row
  log-sum-exp of the non-target logits, the target cosine, an optional row sum);
* :func:`margin_cross_entropy`: the fused margin softmax cross-entropy on cosines (Paddle's
  signature);
* :func:`combined_margin`: the margin-modified (unscaled) logits, OneFlow's
  ``combined_margin_loss``;
* :func:`masked_similarity_reductions`: masked row log-sum-exps and sums over a similarity
  matrix computed blockwise (the pair and proxy losses);
* the margin maths on N-length vectors (:func:`target_angle`, :func:`arccos_floored`,
  :func:`combined_margin_logit`, :func:`margin_softmax_loss`), shared by all.
"""

from marginkit._validation import IMPLS, REDUCTIONS
from marginkit.ops._margin import (
    GRAD_MODES,
    MARGIN_FALLBACKS,
    arccos_floored,
    combined_margin_logit,
    margin_softmax_loss,
    target_angle,
)
from marginkit.ops.combined_margin import combined_margin
from marginkit.ops.linear_margin_cross_entropy import (
    LinearTargetTerms,
    linear_margin_cross_entropy,
    linear_target_logsumexp,
    linear_target_terms,
)
from marginkit.ops.margin_cross_entropy import margin_cross_entropy
from marginkit.ops.masked_similarity import (
    Exponent,
    MaskedRowReductions,
    masked_similarity_reductions,
)
from marginkit.ops.target_logsumexp import TargetLogSumExp, target_logsumexp

__all__ = [
    "GRAD_MODES",
    "IMPLS",
    "MARGIN_FALLBACKS",
    "REDUCTIONS",
    "Exponent",
    "LinearTargetTerms",
    "MaskedRowReductions",
    "TargetLogSumExp",
    "arccos_floored",
    "combined_margin",
    "combined_margin_logit",
    "linear_margin_cross_entropy",
    "linear_target_logsumexp",
    "linear_target_terms",
    "margin_cross_entropy",
    "margin_softmax_loss",
    "masked_similarity_reductions",
    "target_angle",
    "target_logsumexp",
]
