"""Float64 ground truth for the class-weight heads, written out here (not the package).

Plain torch float64 autograd on the formulas: the cosines from normalised vectors, the target
angle from :func:`tests.helpers.float64_margin.angle_between`, the margin from
:func:`tests.helpers.float64_margin.phi_of_theta`, and the softmax cross-entropy written out as
``log Σ exp(z) − z_y``. Every function is differentiable, so a test gets the reference gradients
with ``.backward()`` on leaf copies of the embeddings and the weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tests.helpers.float64_margin import angle_between


def unit(vectors: Tensor) -> Tensor:
    return vectors / vectors.norm(dim=1, keepdim=True)


def cosines(embeddings: Tensor, weight: Tensor) -> Tensor:
    """``(N, C)`` cosines in float64."""
    return unit(embeddings.double()) @ unit(weight.double()).T


def cross_entropy_rows(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-row softmax cross-entropy, written out: log Σ_j exp(z_j) − z_y."""
    row_max = logits.detach().max(dim=1, keepdim=True).values
    lse = row_max[:, 0] + torch.log(torch.exp(logits - row_max).sum(dim=1))
    return lse - logits[torch.arange(len(labels)), labels]


def with_target(cos: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """``cos`` with ``target[i]`` in column ``labels[i]`` (differentiable in both)."""
    is_target = torch.zeros_like(cos, dtype=torch.bool)
    is_target[torch.arange(len(labels)), labels] = True
    return torch.where(is_target, target[:, None].to(cos.dtype), cos)


def target_theta(embeddings: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
    """``(N,)`` angle between each embedding and its label's weight (float64, atan2 form)."""
    return angle_between(embeddings, weight[labels])


def margin_head_loss(
    embeddings: Tensor,
    weight: Tensor,
    labels: Tensor,
    s: float,
    phi_of: Callable[[Tensor], Tensor],
) -> Tensor:
    """Per-row loss of a head whose target logit is ``s·phi_of(θ_y)`` and others ``s·cos``."""
    cos = cosines(embeddings, weight)
    phi = phi_of(target_theta(embeddings, weight, labels))
    return cross_entropy_rows(s * with_target(cos, labels, phi), labels)


def smoothed_cross_entropy_rows(logits: Tensor, target_distribution: Tensor) -> Tensor:
    """−Σ_j q_ij log softmax(z_i)_j for an explicit target distribution q."""
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(target_distribution * log_prob).sum(dim=1)


def leaf_copies(embeddings: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 leaves that require grad (for reference gradients)."""
    return (
        embeddings.detach().double().clone().requires_grad_(),
        weight.detach().double().clone().requires_grad_(),
    )


def embeddings_at_angles(
    weight: Tensor, labels: Tensor, angles: Tensor, norm: float = 1.0
) -> Tensor:
    """Float64 embeddings exactly ``angles[i]`` rad from their label's weight (random direction)."""
    w = unit(weight.detach().double()[labels])
    direction = torch.randn_like(w)
    direction = unit(direction - (direction * w).sum(1, keepdim=True) * w)
    angles = angles.double()[:, None]
    return norm * (torch.cos(angles) * w + torch.sin(angles) * direction)
