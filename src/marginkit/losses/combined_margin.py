"""``CombinedMarginLoss``: OneFlow's ``nn.CombinedMarginLoss``, for porting OneFlow code."""

from __future__ import annotations

from torch import Tensor, nn

from marginkit.ops import combined_margin
from marginkit.ops._margin import GRAD_MODES, MARGIN_FALLBACKS
from marginkit.ops._validation import check_ignore_index, check_margins, check_option


class CombinedMarginLoss(nn.Module):
    r"""Replace each row's target cosine by its combined margin; return the (unscaled) logits.

    .. math::
        y_{ij} = \begin{cases} \cos(m_1 \arccos x_{ij} + m_2) - m_3 & j = t_i \\
        x_{ij} & j \ne t_i \end{cases}

    OneFlow's ``nn.CombinedMarginLoss(m1, m2, m3)`` semantics: despite the name it returns
    logits, to be scaled and fed to a softmax cross-entropy, e.g.
    ``F.cross_entropy(s * CombinedMarginLoss(1, 0.5, 0)(cos, label), label)`` for ArcFace. The
    fused :func:`marginkit.ops.margin_cross_entropy` computes the same loss without
    materialising the modified logits (and is what marginkit's own heads use).

    Args:
        m1: multiplicative angular margin, ``m1 > 0``.
        m2: additive angular margin in radians.
        m3: additive cosine margin.
        margin_fallback: ``"none"`` (OneFlow), ``"arcface"`` or ``"easy"``; see
            :func:`marginkit.ops.margin_cross_entropy`.
        grad_mode: ``"exact"`` (OneFlow) or ``"straight_through"``.
        ignore_index: label value of rows left unchanged.

    Example:
        >>> import torch
        >>> loss_fn = CombinedMarginLoss(m1=1.0, m2=0.0, m3=0.35)
        >>> loss_fn(torch.tensor([[0.5, 0.2]]), torch.tensor([0])).tolist()
        [[0.15000000596046448, 0.20000000298023224]]
    """

    def __init__(
        self,
        m1: float = 1.0,
        m2: float = 0.0,
        m3: float = 0.0,
        *,
        margin_fallback: str = "none",
        grad_mode: str = "exact",
        ignore_index: int = -100,
    ) -> None:
        super().__init__()
        self.m1, self.m2, self.m3 = check_margins(m1, m2, m3, ("m1", "m2", "m3"))
        check_option("margin_fallback", margin_fallback, MARGIN_FALLBACKS)
        check_option("grad_mode", grad_mode, GRAD_MODES)
        check_ignore_index(ignore_index)
        self.margin_fallback = margin_fallback
        self.grad_mode = grad_mode
        self.ignore_index = ignore_index

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        """Return ``x`` (N, C) with the margin applied at ``label`` (N,) in each row."""
        return combined_margin(
            x,
            label,
            self.m1,
            self.m2,
            self.m3,
            margin_fallback=self.margin_fallback,
            grad_mode=self.grad_mode,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return f"m1={self.m1:g}, m2={self.m2:g}, m3={self.m3:g}"
