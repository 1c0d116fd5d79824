r"""AdaCos: the normalised softmax with a scale adapted to the batch (Zhang et al., CVPR 2019)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marginkit._validation import check_embeddings
from marginkit.losses._head import detached
from marginkit.losses.angular_margin import AngularMarginLoss
from marginkit.ops import margin_softmax_loss, target_logsumexp


class AdaCosLoss(AngularMarginLoss):
    r"""Normalised softmax (no margin) whose scale :math:`\tilde s` follows the batch: dynamic AdaCos.

    .. math::
        \ell_i = -\log\frac{e^{\tilde s\cos\theta_{iy_i}}}{\sum_j e^{\tilde s\cos\theta_{ij}}},
        \qquad
        \tilde s^{(t)} = \frac{\log B^{(t)}_{\mathrm{avg}}}
        {\cos\big(\min(\tfrac{\pi}{4}, \theta^{(t)}_{\mathrm{med}})\big)},
        \quad B^{(t)}_{\mathrm{avg}} = \frac1N\sum_i\sum_{k\ne y_i}
        e^{\tilde s^{(t-1)}\cos\theta_{ik}}

    Zhang, Zhao, Wang, Li & Yan, "AdaCos: Adaptively Scaling Cosine Logits for Effectively
    Learning Deep Face Representations", CVPR 2019 (eq. 15–16): :math:`\theta_{\mathrm{med}}`
    is the median target angle of the batch (the lower middle value for an even batch, as
    ``torch.median``), and :math:`\tilde s^{(0)} = \sqrt2\log(C - 1)`, the fixed AdaCos scale
    (``s="auto"`` of every other head). In training mode each forward first updates the scale
    from the batch (without gradient, on the device: no host read) and then computes the loss
    with it; in eval mode the scale stays. The scale is a buffer (``scale``), saved in
    checkpoints; ``s`` is the initial value.

    The N×C step is the cosines + :func:`marginkit.ops.target_logsumexp` (one N×C gradient
    buffer): the fused normalised-linear op takes a host-side scale, which a tensor scale would
    have to be read back for every step.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes, ``>= 3``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Attributes:
        last_logs: ``{"adacos_s": the current scale}`` after each training forward.

    Example:
        >>> import torch
        >>> head = AdaCosLoss(in_features=8, num_classes=10)
        >>> round(float(head.scale), 4)  # sqrt(2) * log(9)
        3.1073
        >>> _ = head(torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 4, 5]))
        >>> float(head.scale) != 3.1073
        True
    """

    supports_memory_efficient = False

    def __init__(self, in_features: int, num_classes: int, reduction: str = "mean") -> None:
        super().__init__(in_features, num_classes, s="auto", reduction=reduction)
        self.register_buffer("scale", torch.tensor(self.s, dtype=torch.float64))

    def logits(self, embeddings: Tensor) -> Tensor:
        r"""The scaled cosine logits :math:`\tilde s\cos\theta_{ij}` with the current scale."""
        check_embeddings(embeddings, self.in_features)
        return self.scale.to(self.weight.dtype) * self.cosine(embeddings.to(self.weight.dtype))

    @torch.no_grad()
    def update_scale(self, cosines: Tensor, theta_target: Tensor, labels: Tensor) -> None:
        """One AdaCos step: the scale from ``B_avg`` (at the current scale) and the median angle."""
        previous = self.scale.to(cosines.dtype)
        lse_rest = target_logsumexp(previous * cosines, labels, 1.0, check_labels=False).lse_rest
        # log B_avg = log((1/N) Σ_i exp(lse_rest_i)), without leaving the log domain.
        log_b_avg = torch.logsumexp(lse_rest, dim=0) - math.log(lse_rest.shape[0])
        theta_median = theta_target.median().clamp(max=math.pi / 4)
        self.scale.copy_(log_b_avg.to(self.scale.dtype) / torch.cos(theta_median))

    def per_row_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cosines = self.cosine(embeddings)
        cos, theta = self.target_angle(embeddings, labels)
        if self.training:
            self.update_scale(cosines.detach(), theta.detach(), labels)
            self.last_logs = {"adacos_s": detached(self.scale)}
        scale = self.scale.to(cosines.dtype)
        rest = target_logsumexp(scale * cosines, labels, 1.0, check_labels=False)
        return margin_softmax_loss(
            rest.lse_rest, (scale.to(cos.dtype) * cos).to(rest.lse_rest.dtype)
        )
