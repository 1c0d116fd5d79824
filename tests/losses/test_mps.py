"""MPSLoss against DocFace's formula written out with loops, pairing from labels, errors."""

from __future__ import annotations

import pytest
import torch

from marginkit.losses import MPSLoss
from marginkit.losses.mps import aligned_pairs
from tests.losses.digits_training import assert_trains, train_on_digits


def mps_reference(first, second, m, pair_labels=None):
    """Per-pair max(0, m + max_{j≠i, other label} max(s_ij, s_ji) − s_ii), looped, float64."""
    n = first.shape[0]
    a = [first[i] / torch.sqrt((first[i] ** 2).sum()) for i in range(n)]
    b = [second[i] / torch.sqrt((second[i] ** 2).sum()) for i in range(n)]
    rows = []
    for i in range(n):
        impostors = []
        for j in range(n):
            if j == i or (pair_labels is not None and pair_labels[j] == pair_labels[i]):
                continue
            impostors.append(torch.maximum((a[i] * b[j]).sum(), (a[j] * b[i]).sum()))
        hardest = torch.stack(impostors).max()
        rows.append(torch.relu(m + hardest - (a[i] * b[i]).sum()))
    return torch.stack(rows)


@pytest.mark.parametrize("m", [0.5, 0.0, 1.5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_pair_loss_value_and_gradients_match_formula(m, reduction):
    loss_fn = MPSLoss(m=m, reduction=reduction)
    first = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    second = (first.detach() + 0.8 * torch.randn(6, 4, dtype=torch.float64)).requires_grad_()
    value = loss_fn.pair_loss(first, second)
    ref_a = first.detach().clone().requires_grad_()
    ref_b = second.detach().clone().requires_grad_()
    rows = mps_reference(ref_a, ref_b, m)
    expected = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    weights = torch.linspace(0.5, 1.5, 6, dtype=torch.float64) if reduction == "none" else 1.0
    (value * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(first.grad, ref_a.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(second.grad, ref_b.grad, rtol=1e-10, atol=1e-12)


def test_rival_is_the_hardest_of_row_and_column():
    """Pair 0's hardest impostor is s_20 (column 0, not row 0): only the column catches it."""
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]])
    b = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # s = a bᵀ: s_00 = 1, s_01 = s_02 = 0, s_20 = 0.6: impostor of pair 0 is 0.6.
    rows = MPSLoss(m=0.5, reduction="none").pair_loss(a, b)
    torch.testing.assert_close(rows, torch.tensor([0.1, 0.0, 0.3]))


def test_forward_pairs_same_labels_and_excludes_them_as_impostors():
    labels = torch.tensor([3, 1, 3, 0, 1, 3, 0, 3, 1, 2])
    embeddings = torch.randn(10, 5, dtype=torch.float64, requires_grad=True)
    first, second = aligned_pairs(labels)
    # label 3 at rows 0, 2, 5, 7 → pairs (0, 2), (5, 7); label 1 at 1, 4, 8 → (1, 4); 0 → (3, 6)
    pairs = sorted(zip(first.tolist(), second.tolist(), strict=True))
    assert pairs == [(0, 2), (1, 4), (3, 6), (5, 7)]
    loss_fn = MPSLoss(m=0.5, reduction="none")
    value = loss_fn(embeddings, labels)
    expected = mps_reference(embeddings[first], embeddings[second], 0.5, labels[first].tolist())
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    assert loss_fn.last_logs["pairs"] == 4.0


def test_forward_with_two_instances_per_label_is_docface():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    embeddings = torch.randn(6, 4, dtype=torch.float64)
    loss_fn = MPSLoss(m=0.3)
    torch.testing.assert_close(
        loss_fn(embeddings, labels), loss_fn.pair_loss(embeddings[:3], embeddings[3:])
    )


def test_declares_balanced_batches():
    assert MPSLoss.requires_balanced_batches is True
    assert MPSLoss.min_instances_per_class == 2


def test_bad_batches_and_arguments():
    loss_fn = MPSLoss()
    with pytest.raises(ValueError, match="`labels` must hold at least 2 labels"):
        loss_fn(torch.randn(4, 3), torch.tensor([0, 0, 0, 0]))  # one identity: no impostors
    with pytest.raises(ValueError, match="`labels` must hold at least 2 labels"):
        loss_fn(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))  # no pairs at all
    with pytest.raises(ValueError, match="`second` must have the shape"):
        loss_fn.pair_loss(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="`first` must hold at least 2 pairs"):
        loss_fn.pair_loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(TypeError, match="`first`"):
        loss_fn.pair_loss([[1.0]], torch.randn(1, 1))
    with pytest.raises(ValueError, match="`embeddings`"):
        loss_fn(torch.randn(4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="`m`"):
        MPSLoss(m=-0.1)
    with pytest.raises(TypeError, match="`m`"):
        MPSLoss(m="0.5")


def test_trains_on_digits():
    assert_trains(train_on_digits(MPSLoss(m=0.5)))
