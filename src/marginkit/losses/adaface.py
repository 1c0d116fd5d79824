"""AdaFace: a margin adapted to image quality through the feature norm (Kim et al., CVPR 2022)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marginkit.losses._head import detached
from marginkit.losses.angular_margin import AngularMarginLoss, check_margin
from marginkit.ops import combined_margin_logit
from marginkit.ops._dtypes import accumulation_dtype

_EPS = 1e-3  # the official code's eps (in the std normalisation and the norm clip)


class AdaFaceLoss(AngularMarginLoss):
    r"""Per-sample margins from the normalised feature norm: angular for hard, additive for easy samples.

    With :math:`\lVert x_i\rVert` clipped to :math:`[10^{-3}, 100]` and detached, the batch
    statistics :math:`\mu, \sigma` (running buffers ``batch_mean``, ``batch_std``),

    .. math::
        \widehat{\lVert x_i\rVert} = \operatorname{clip}\Big(h\,
        \frac{\lVert x_i\rVert - \mu}{\sigma + \epsilon}, -1, 1\Big), \quad
        g_{angle,i} = -m\,\widehat{\lVert x_i\rVert}, \quad
        g_{add,i} = m\,\widehat{\lVert x_i\rVert} + m,

    .. math::
        \phi_i = \cos(\theta_{iy_i} + g_{angle,i}) - g_{add,i}

    so a low-norm (low-quality) sample gets an ArcFace-like angular margin and a high-norm one
    a CosFace-like additive margin. Each training forward first updates
    :math:`\mu \leftarrow \alpha\,\overline{\lVert x\rVert} + (1-\alpha)\mu` and
    :math:`\sigma \leftarrow \alpha\,\mathrm{std}(\lVert x\rVert) + (1-\alpha)\sigma`
    (:math:`\alpha` = ``t_alpha``; the std needs two or more rows), starting from the official
    20 and 100. The norms are those of the embeddings the head receives (before the
    normalisation).

    Where :math:`\theta + g_{angle}` leaves :math:`[0, \pi]` the official code clips the angle
    (zero gradient there); here the target logit continues monotonically (the ``"monotonic"``
    fallback of :func:`marginkit.ops.combined_margin_logit`), so it keeps decreasing in
    :math:`\theta` everywhere.

    Paper: M. Kim, A. K. Jain, X. Liu, "AdaFace: Quality Adaptive Margin for Face
    Recognition", CVPR 2022.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes.
        m: margin, ``[0, pi/2)``. Default 0.4.
        h: concentration :math:`h > 0` of the normalised norm. Default 0.333.
        s: logit scale, or ``"auto"`` (AdaCos's :math:`\sqrt{2}\log(C-1)`). Default 64.
        t_alpha: momentum of the norm statistics, ``(0, 1]``. Default 0.01 (the paper's).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        memory_efficient: ``True`` / ``False`` / ``"auto"``: run the N×C step on the
            fused normalised-linear op (see :class:`~marginkit.losses.AngularMarginLoss`).

    Example:
        >>> import torch
        >>> head = AdaFaceLoss(in_features=8, num_classes=3, s=16.0)
        >>> loss = head(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))
        >>> head.margins(torch.randn(4, 8))[0].shape
        torch.Size([4])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m: float = 0.4,
        h: float = 0.333,
        s: float | str = 64.0,
        t_alpha: float = 0.01,
        reduction: str = "mean",
        memory_efficient: bool | str = "auto",
    ) -> None:
        super().__init__(
            in_features, num_classes, s=s, reduction=reduction, memory_efficient=memory_efficient
        )
        self.m = check_margin("m", m, upper=math.pi / 2)
        self.h = check_margin("h", h)
        if self.h == 0:
            raise ValueError("`h` must be > 0, got 0.0")
        self.t_alpha = check_margin("t_alpha", t_alpha, upper=1.0 + 1e-12)
        if self.t_alpha == 0:
            raise ValueError("`t_alpha` must be in (0, 1], got 0.0")
        self.register_buffer("batch_mean", torch.full((), 20.0))
        self.register_buffer("batch_std", torch.full((), 100.0))

    def _norms(self, embeddings: Tensor) -> Tensor:
        acc = accumulation_dtype(self.weight.dtype)
        norms = torch.linalg.vector_norm(embeddings.detach().to(acc), dim=1)
        return norms.clamp(_EPS, 100.0)

    def update_statistics(self, embeddings: Tensor) -> None:
        """Move ``batch_mean`` / ``batch_std`` toward this batch's norm mean / std."""
        with torch.no_grad():
            norms = self._norms(embeddings)
            alpha = self.t_alpha
            self.batch_mean.mul_(1 - alpha).add_(alpha * norms.mean().to(self.batch_mean.dtype))
            if norms.numel() > 1:
                std = norms.std().to(self.batch_std.dtype)
                self.batch_std.mul_(1 - alpha).add_(alpha * std)

    def margins(self, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """``(g_angle, g_add)``, each ``(N,)``, of ``embeddings`` under the current statistics."""
        norms = self._norms(embeddings)
        mean, std = self.batch_mean.to(norms.dtype), self.batch_std.to(norms.dtype)
        scaler = (self.h * (norms - mean) / (std + _EPS)).clamp(-1.0, 1.0)
        return -self.m * scaler, self.m * scaler + self.m

    def per_row_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if self.training:
            self.update_statistics(embeddings)
            self.last_logs = {
                "adaface_norm_mean": detached(self.batch_mean),
                "adaface_norm_std": detached(self.batch_std),
            }
        return super().per_row_loss(embeddings, labels)

    def target_logit(
        self, cos: Tensor, theta: Tensor, embeddings: Tensor, labels: Tensor
    ) -> Tensor:
        g_angle, g_add = self.margins(embeddings)
        return combined_margin_logit(cos, theta, 1.0, g_angle, g_add, "monotonic")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m:g}, h={self.h:g}, t_alpha={self.t_alpha:g}"
