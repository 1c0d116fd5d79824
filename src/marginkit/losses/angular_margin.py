"""The base of every angular-margin head: normalised embeddings × normalised class weights."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from marginkit.losses._validation import check_embeddings, check_labels, check_positive_int
from marginkit.ops import GRAD_MODES, MARGIN_FALLBACKS, REDUCTIONS, margin_cross_entropy
from marginkit.ops._validation import check_option


def check_scale(s: float) -> float:
    """Return ``s`` as a float if it is a finite positive number, else raise ``ValueError``."""
    if isinstance(s, bool) or not isinstance(s, (int, float)):
        raise TypeError(f"`s` must be a number, got {type(s).__name__}")
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"`s` (the logit scale) must be a finite number > 0, got {s}")
    return float(s)


def check_margin(name: str, value: float, upper: float | None = None) -> float:
    """Return ``value`` as a float if ``0 <= value (< upper)``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (upper is not None and value >= upper):
        allowed = f"[0, {upper:g})" if upper is not None else ">= 0"
        raise ValueError(f"`{name}` must be in {allowed}, got {value}")
    return float(value)


class AngularMarginLoss(nn.Module):
    r"""Base class of the angular-margin softmax heads (ArcFace, CosFace, combined margins).

    With :math:`\hat x_i = x_i / \lVert x_i \rVert` and :math:`\hat W_j = W_j / \lVert W_j \rVert`,
    the cosine logits are :math:`\cos\theta_{ij} = \hat W_j \cdot \hat x_i` and the loss is

    .. math::
        \ell_i = -\log \frac{e^{s\,\phi(\cos\theta_{i,y_i})}}
        {e^{s\,\phi(\cos\theta_{i,y_i})} + \sum_{j \ne y_i} e^{s \cos\theta_{ij}}},
        \qquad \phi(x) = \cos(m_1 \arccos x + m_2) - m_3

    computed by the fused op :func:`marginkit.ops.margin_cross_entropy`. Subclasses say which
    margins they use by overriding :meth:`margins` (and the class attribute
    ``margin_fallback``); this is the single hook a new margin head needs.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes; ``weight`` has shape
            ``(num_classes, in_features)`` like ``nn.Linear``.
        s: logit scale.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        grad_mode: ``"exact"`` or ``"straight_through"`` (see the op).
    """

    margin_fallback: str = "none"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        s: float = 64.0,
        reduction: str = "mean",
        grad_mode: str = "exact",
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.s = check_scale(s)
        check_option("reduction", reduction, REDUCTIONS)
        check_option("grad_mode", grad_mode, GRAD_MODES)
        check_option("margin_fallback", self.margin_fallback, MARGIN_FALLBACKS)
        self.reduction = reduction
        self.grad_mode = grad_mode
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the class weights with Xavier-uniform (their scale does not matter)."""
        nn.init.xavier_uniform_(self.weight)

    def margins(self) -> tuple[float, float, float]:
        """Return ``(m1, m2, m3)`` of :math:`\\cos(m_1\\theta + m_2) - m_3`."""
        raise NotImplementedError

    def cosine(self, embeddings: Tensor) -> Tensor:
        """Return the (N, num_classes) cosines between embeddings and class weights."""
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Return the margin softmax loss of ``embeddings`` (N, in_features) for ``labels`` (N,)."""
        check_embeddings(embeddings, self.in_features)
        labels = check_labels(labels, embeddings.shape[0])
        m1, m2, m3 = self.margins()
        return margin_cross_entropy(
            self.cosine(embeddings),
            labels,
            m1,
            m2,
            m3,
            self.s,
            reduction=self.reduction,
            margin_fallback=self.margin_fallback,
            grad_mode=self.grad_mode,
        )

    def extra_repr(self) -> str:
        m1, m2, m3 = self.margins()
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"m1={m1:g}, m2={m2:g}, m3={m3:g}, s={self.s:g}, reduction={self.reduction!r}"
        )
