"""ContrastiveLoss against float64 brute force (explicit loops over pairs)."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.losses import ContrastiveLoss, get_loss


def _unit(row: torch.Tensor) -> torch.Tensor:
    return row / sum(row[k] ** 2 for k in range(len(row))).sqrt()


def _pair_value(u, v, same, margin):
    """same: d²; other: max(m - d, 0)², d the Euclidean distance of the unit vectors."""
    u, v = _unit(u), _unit(v)
    sq = sum((u[k] - v[k]) ** 2 for k in range(len(u)))
    if same:
        return sq
    distance = sq.sqrt() if float(sq.detach()) > 0 else torch.zeros((), dtype=sq.dtype)
    gap = margin - distance
    return gap**2 if float(gap.detach()) > 0 else torch.zeros((), dtype=sq.dtype)


def _batch(kind: str):
    if kind == "tied":  # repeated rows within and across classes, a one-item class
        features = torch.tensor(
            [[1, 0], [1, 0], [0, 1], [1, 1], [1, 0], [0, 2], [2, 2], [-1, 0]], dtype=torch.float64
        )
        return features, [0, 0, 0, 1, 1, 2, 2, 3]
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    return features, [0, 1, 2, 0, 1, 2, 0, 1, 5]


@pytest.mark.parametrize("kind", ["tied", "random"])
@pytest.mark.parametrize("margin", [0.0, 0.5, 1.0, 1.9])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_batch_form_matches_the_loops(kind, margin, reduction):
    features, labels = _batch(kind)
    x = features.clone().requires_grad_()
    loss_fn = ContrastiveLoss(margin=margin, reduction=reduction)
    ours = loss_fn(x, torch.tensor(labels))
    x_ref = features.clone().requires_grad_()
    n = len(labels)
    values = torch.stack(
        [
            _pair_value(x_ref[i], x_ref[j], labels[i] == labels[j], margin)
            for i in range(n)
            for j in range(i + 1, n)
        ]
    )
    expected = {"mean": values.mean(), "sum": values.sum(), "none": values}[reduction]
    torch.testing.assert_close(ours, expected)
    ours.sum().backward()
    (expected.sum() + 0.0 * x_ref.sum()).backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    same = [labels[i] == labels[j] for i in range(n) for j in range(i + 1, n)]
    distances = [
        math.sqrt(float(sum((_unit(features[i]) - _unit(features[j])) ** 2)))
        for i in range(n)
        for j in range(i + 1, n)
    ]
    pos = [d for d, s in zip(distances, same, strict=True) if s]
    neg = [d for d, s in zip(distances, same, strict=True) if not s]
    logs = loss_fn.last_logs
    assert logs["n_pos_pairs"] == len(pos) and logs["n_neg_pairs"] == len(neg)
    assert logs["pos_dist"] == pytest.approx(sum(pos) / len(pos), abs=1e-7)
    assert logs["neg_dist"] == pytest.approx(sum(neg) / len(neg), abs=1e-7)
    assert logs["active_neg_fraction"] == pytest.approx(sum(d < margin for d in neg) / len(neg))


@pytest.mark.parametrize("same_dtype", [torch.bool, torch.long, torch.float32])
def test_pair_form_matches_the_loops(same_dtype):
    generator = torch.Generator().manual_seed(1)
    anchor, other = torch.randn(2, 6, 3, generator=generator, dtype=torch.float64).unbind(0)
    other[0] = anchor[0] * 3  # the same direction: distance 0 after normalisation
    same = torch.tensor([1, 0, 1, 0, 0, 1])
    inputs = [anchor.clone().requires_grad_(), other.clone().requires_grad_()]
    ours = ContrastiveLoss(margin=1.2).pair_loss(*inputs, same.to(same_dtype))
    refs = [anchor.clone().requires_grad_(), other.clone().requires_grad_()]
    values = [_pair_value(refs[0][i], refs[1][i], bool(same[i]), 1.2) for i in range(6)]
    expected = torch.stack(values).mean()
    torch.testing.assert_close(ours, expected)
    ours.backward()
    (expected + 0.0 * sum(t.sum() for t in refs)).backward()
    for mine, theirs in zip(inputs, refs, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad)


def test_unit_inputs_are_not_changed_by_the_normalisation():
    unit = torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2])
    torch.testing.assert_close(
        ContrastiveLoss()(unit, labels), ContrastiveLoss()(unit * 4.0, labels)
    )


def test_registry_and_pk_batches():
    loss_fn = get_loss("contrastive", margin=0.7)
    assert isinstance(loss_fn, ContrastiveLoss) and loss_fn.margin == 0.7
    assert loss_fn.requires_balanced_batches and loss_fn.min_instances_per_class == 2


def test_bad_input_names_the_argument():
    loss_fn = ContrastiveLoss()
    with pytest.raises(ValueError, match="`features` must be finite"):
        loss_fn(torch.tensor([[1.0], [float("inf")]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`features` must hold at least 2 items"):
        loss_fn(torch.randn(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(2,\)"):
        loss_fn(torch.randn(2, 3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match=r"`other` must have the shape of `anchor` \(2, 3\)"):
        loss_fn.pair_loss(torch.randn(2, 3), torch.randn(3, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"`same` must have shape \(2,\)"):
        loss_fn.pair_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="`same` must hold 0/1"):
        loss_fn.pair_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="`anchor` must be finite"):
        loss_fn.pair_loss(torch.full((2, 3), float("nan")), torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`margin` must be a finite number >= 0"):
        ContrastiveLoss(margin=-1.0)
