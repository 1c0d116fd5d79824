"""The skeleton heads against float64 formulas written out here (not the code under test)."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.losses import ArcFaceLoss, CosFaceLoss, SoftmaxLoss


def _cosines(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    e = embeddings / embeddings.norm(dim=1, keepdim=True)
    w = weight / weight.norm(dim=1, keepdim=True)
    return e @ w.T


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row softmax cross-entropy, written out: log Σ exp(z) − z_y."""
    row_max = logits.max(dim=1, keepdim=True).values
    lse = row_max[:, 0] + torch.log(torch.exp(logits - row_max).sum(dim=1))
    return lse - logits[torch.arange(len(labels)), labels]


def arcface_reference(embeddings, weight, labels, m, s, easy_margin=False):
    cos = _cosines(embeddings.double(), weight.double())
    rows = torch.arange(len(labels))
    c = cos[rows, labels].clamp(-1, 1)
    theta = torch.acos(c)
    target = torch.cos(theta + m)
    if easy_margin:
        target = torch.where(c > 0, target, c)
    else:
        # insightface: th = cos(pi - m), mm = sin(pi - m) * m
        target = torch.where(c > math.cos(math.pi - m), target, c - math.sin(math.pi - m) * m)
    logits = cos.clone()
    logits[rows, labels] = target
    return _ce(s * logits, labels)


def cosface_reference(embeddings, weight, labels, m, s):
    cos = _cosines(embeddings.double(), weight.double())
    rows = torch.arange(len(labels))
    logits = cos.clone()
    logits[rows, labels] = cos[rows, labels] - m
    return _ce(s * logits, labels)


@pytest.mark.parametrize("m,s", [(0.5, 64.0), (0.2, 30.0), (1.2, 16.0), (0.0, 10.0)])
@pytest.mark.parametrize("easy_margin", [False, True])
def test_arcface_matches_formula(m, s, easy_margin):
    head = ArcFaceLoss(16, 7, m=m, s=s, easy_margin=easy_margin, reduction="none").double()
    # Mix of aligned, orthogonal and opposed embeddings, so every branch is visited.
    embeddings = torch.randn(40, 16, dtype=torch.float64)
    labels = torch.randint(0, 7, (40,))
    embeddings[:5] = head.weight.detach()[labels[:5]]
    embeddings[5:10] = -head.weight.detach()[labels[5:10]]
    loss = head(embeddings, labels)
    expected = arcface_reference(embeddings, head.weight.detach(), labels, m, s, easy_margin)
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("m,s", [(0.35, 64.0), (0.1, 8.0), (0.0, 1.0)])
def test_cosface_matches_formula(m, s):
    head = CosFaceLoss(12, 5, m=m, s=s, reduction="none").double()
    embeddings, labels = torch.randn(33, 12, dtype=torch.float64), torch.randint(0, 5, (33,))
    expected = cosface_reference(embeddings, head.weight.detach(), labels, m, s)
    torch.testing.assert_close(head(embeddings, labels), expected, rtol=1e-9, atol=1e-9)


def test_softmax_matches_formula():
    head = SoftmaxLoss(10, 4, reduction="none").double()
    embeddings, labels = torch.randn(9, 10, dtype=torch.float64), torch.randint(0, 4, (9,))
    expected = _ce(embeddings @ head.weight.detach().T, labels)
    torch.testing.assert_close(head(embeddings, labels), expected)


@pytest.mark.parametrize(
    "make", [lambda: ArcFaceLoss(8, 3), lambda: CosFaceLoss(8, 3), lambda: SoftmaxLoss(8, 3)]
)
def test_reductions_and_gradients(make):
    head = make()
    embeddings = torch.randn(6, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    head.reduction = "none"
    per_row = head(embeddings, labels)
    assert per_row.shape == (6,)
    head.reduction = "sum"
    torch.testing.assert_close(head(embeddings, labels), per_row.sum())
    head.reduction = "mean"
    loss = head(embeddings, labels)
    torch.testing.assert_close(loss, per_row.mean())
    loss.backward()
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0
    assert head.weight.grad is not None and head.weight.grad.shape == (3, 8)


def test_arcface_gradient_matches_autograd_of_formula():
    torch.manual_seed(1)
    head = ArcFaceLoss(6, 4, m=0.5, s=8.0).double()
    embeddings = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (10,))
    head(embeddings, labels).backward()
    got_e, got_w = embeddings.grad.clone(), head.weight.grad.clone()
    embeddings.grad = None
    weight = head.weight.detach().clone().requires_grad_()
    arcface_reference(embeddings, weight, labels, 0.5, 8.0).mean().backward()
    torch.testing.assert_close(got_e, embeddings.grad)
    torch.testing.assert_close(got_w, weight.grad)


def test_weight_shape_like_linear():
    assert ArcFaceLoss(32, 10).weight.shape == (10, 32)
    assert CosFaceLoss(32, 10).weight.shape == (10, 32)
    assert SoftmaxLoss(32, 10).weight.shape == (10, 32)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ArcFaceLoss(8, 3, m=-0.5), "`m` must be in"),
        (lambda: ArcFaceLoss(8, 3, m=4.0), "`m` must be in"),
        (lambda: CosFaceLoss(8, 3, m=-0.1), "`m` must be in"),
        (lambda: ArcFaceLoss(8, 3, s=0.0), "`s`"),
        (lambda: ArcFaceLoss(8, 0), "`num_classes` must be positive"),
        (lambda: CosFaceLoss(0, 3), "`in_features` must be positive"),
        (lambda: SoftmaxLoss(8, 3, reduction="avg"), "`reduction` must be one of"),
        (lambda: ArcFaceLoss(8, 3, grad_mode="fast"), "`grad_mode` must be one of"),
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "head", [ArcFaceLoss(8, 3), CosFaceLoss(8, 3), SoftmaxLoss(8, 3)], ids=["arc", "cos", "soft"]
)
def test_bad_forward_inputs(head):
    with pytest.raises(ValueError, match=r"`embeddings` must have shape \(N, 8\)"):
        head(torch.randn(4, 7), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="`labels` must have shape"):
        head(torch.randn(4, 8), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="`labels` must be an integer tensor"):
        head(torch.randn(4, 8), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 3\).*got 3"):
        head(torch.randn(4, 8), torch.tensor([0, 1, 3, 2]))
