"""L2-constrained softmax (Ranjan et al., 2017): features on a hypersphere of radius alpha."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from marginkit._validation import check_finite_number
from marginkit.losses.softmax import SoftmaxLoss


def alpha_lower_bound(num_classes: int, p: float) -> float:
    r"""The paper's bound :math:`\alpha_{low} = \log\frac{p(C-2)}{1-p}` (``-inf`` if ``C <= 2``).

    Example:
        >>> round(alpha_lower_bound(10, 0.9), 4)  # log(0.9 * 8 / 0.1) = log 72
        4.2767
    """
    if num_classes <= 2:
        return -math.inf
    return math.log(p * (num_classes - 2) / (1 - p))


class L2SoftmaxLoss(SoftmaxLoss):
    r"""Softmax over :math:`W_j\cdot(\alpha\,\hat x_i)`: the features L2-normalised and scaled.

    .. math::
        \ell_i = -\log\frac{e^{\alpha W_{y_i}\cdot\hat x_i}}{\sum_j e^{\alpha W_j\cdot\hat x_i}},
        \qquad \hat x_i = x_i/\lVert x_i\rVert

    The class weights stay unnormalised (the paper's layer; with normalised weights this is
    :class:`NormFaceLoss`). For the average softmax probability of a correct class to reach
    ``p`` with ``C`` classes, :math:`\alpha` must exceed
    :math:`\alpha_{low} = \log\frac{p(C-2)}{1-p}`; ``alpha=None`` uses that bound (and 1 for
    ``C <= 2``, where the bound is vacuous), a given ``alpha`` at or below it is rejected, as in
    gluon-face's ``L2Softmax``.

    Paper: R. Ranjan, C. D. Castillo, R. Chellappa, "L2-constrained Softmax Loss for
    Discriminative Face Verification", arXiv:1703.09507, 2017.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        alpha: feature radius :math:`\alpha > \alpha_{low}`, or ``None`` for the bound.
        p: the target average probability in ``(0, 1)`` defining :math:`\alpha_{low}`.
        from_normx: the embeddings are already L2-normalised (skip the normalisation).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        memory_efficient: as :class:`~marginkit.losses.SoftmaxLoss`.

    Example:
        >>> import torch
        >>> head = L2SoftmaxLoss(in_features=8, num_classes=10)
        >>> round(head.alpha, 4)
        4.2767
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 9])).ndim
        0
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        alpha: float | None = None,
        p: float = 0.9,
        from_normx: bool = False,
        reduction: str = "mean",
        memory_efficient: bool | str = "auto",
    ) -> None:
        super().__init__(
            in_features, num_classes, reduction=reduction, memory_efficient=memory_efficient
        )
        self.p = check_finite_number("p", p)
        if not 0.0 < self.p < 1.0:
            raise ValueError(f"`p` must be in (0, 1), got {self.p}")
        bound = alpha_lower_bound(self.num_classes, self.p)
        if alpha is None:
            self.alpha = bound if math.isfinite(bound) else 1.0
        else:
            self.alpha = check_finite_number("alpha", alpha, positive=True)
            if self.alpha <= bound:
                raise ValueError(
                    f"`alpha` must be > {bound:.4g} (log(p(C-2)/(1-p)) for p={self.p:g}, "
                    f"C={self.num_classes}), got {self.alpha}"
                )
        if not isinstance(from_normx, bool):
            raise TypeError(f"`from_normx` must be a bool, got {type(from_normx).__name__}")
        self.from_normx = from_normx

    def features(self, embeddings: Tensor) -> Tensor:
        r""":math:`\alpha\,\hat x` (or :math:`\alpha x` with ``from_normx``)."""
        unit = embeddings if self.from_normx else F.normalize(embeddings, dim=1)
        return self.alpha * unit

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha:.4g}, from_normx={self.from_normx}"
