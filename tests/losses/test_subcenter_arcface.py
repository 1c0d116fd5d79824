"""Sub-center ArcFace: the max over sub-centres, K = 1 is ArcFace, the outlier search."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.losses import ArcFaceLoss, SubCenterArcFaceLoss
from tests.helpers.float64_margin import angle_between, phi_of_theta
from tests.losses.float64_heads import cosines, cross_entropy_rows, leaf_copies, with_target

D, C, K, S, M = 6, 4, 3, 16.0, 0.5


def subcenter_reference(x, weight, y):
    """Float64: cos_ij = max_k cos(x_i, W_jk); the target angle is the smallest over k."""
    centers = weight.view(C, K, D)
    cos = torch.stack([cosines(x, centers[:, k]) for k in range(K)]).amax(dim=0)
    theta = torch.stack([angle_between(x, centers[y, k]) for k in range(K)]).amin(dim=0)
    phi = phi_of_theta(theta, 1.0, M, 0.0, "arcface")
    return cross_entropy_rows(S * with_target(cos, y, phi), y)


def test_value_and_gradients_match_float64_formula():
    head = SubCenterArcFaceLoss(D, C, sub_centers=K, m=M, s=S, reduction="none").double()
    x = torch.randn(20, D, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, C, (20,))
    loss = head(x, y)
    loss.sum().backward()
    x_ref, w_ref = leaf_copies(x, head.weight)
    expected = subcenter_reference(x_ref, w_ref, y)
    expected.sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.weight.grad, w_ref.grad, rtol=1e-6, atol=1e-9)


def test_one_sub_center_is_arcface():
    sub = SubCenterArcFaceLoss(D, C, sub_centers=1, reduction="none")
    arc = ArcFaceLoss(D, C, reduction="none")
    arc.load_state_dict(sub.state_dict())
    x, y = torch.randn(9, D), torch.randint(0, C, (9,))
    torch.testing.assert_close(sub(x, y), arc(x, y))


def _near(direction, angle, generator):
    """A unit vector exactly ``angle`` rad from ``direction``."""
    d = direction / direction.norm()
    other = torch.randn(D, dtype=torch.float64, generator=generator)
    other = other - (other @ d) * d
    return math.cos(angle) * d + math.sin(angle) * other / other.norm()


def test_find_outliers_against_a_brute_force_loop():
    generator = torch.Generator().manual_seed(3)
    head = SubCenterArcFaceLoss(D, C, sub_centers=K).double()
    centers = head.weight.detach().view(C, K, D)
    rows, labels = [], []
    for label in range(C):
        dominant = label % K
        for index in range(7):  # 5 near the dominant centre, 1 near another, 1 far from both
            if index < 5:
                rows.append(_near(centers[label, dominant], 0.1, generator))
            elif index == 5:
                rows.append(_near(centers[label, (dominant + 1) % K], 0.05, generator))
            else:
                rows.append(-centers[label, dominant] / centers[label, dominant].norm())
            labels.append(label)
    x, y = torch.stack(rows), torch.tensor(labels)
    threshold = math.radians(75)

    # Brute force: the vote, then the angle to the dominant centre, row by row.
    votes = torch.zeros(C, K, dtype=torch.long)
    for row, label in zip(x, y.tolist(), strict=True):
        angles = [angle_between(row[None], centers[label, k][None]).item() for k in range(K)]
        votes[label, angles.index(min(angles))] += 1
    expected_dominant = votes.argmax(dim=1)
    expected = [
        i
        for i, (row, label) in enumerate(zip(x, y.tolist(), strict=True))
        if angle_between(row[None], centers[label, expected_dominant[label]][None]).item()
        > threshold
    ]

    outliers, dominant = head.find_outliers(x, y, threshold=threshold)
    assert dominant.tolist() == expected_dominant.tolist() == [k % K for k in range(C)]
    assert outliers.tolist() == expected
    assert {7 * label + 6 for label in range(C)} <= set(expected)  # the opposed rows
    assert not {7 * label + i for label in range(C) for i in range(5)} & set(expected)
    torch.testing.assert_close(
        head.dominant_weight(dominant), centers[torch.arange(C), expected_dominant]
    )
    # Given dominant centres (from the whole set) are used as they are.
    again, same = head.find_outliers(x[:3], y[:3], threshold=threshold, dominant=dominant)
    assert same is dominant and again.tolist() == []


def test_classes_without_samples_have_no_dominant_center():
    head = SubCenterArcFaceLoss(D, C, sub_centers=K)
    dominant = head.dominant_sub_centers(torch.randn(3, D), torch.tensor([0, 0, 2]))
    assert dominant[1].item() == -1 and dominant[3].item() == -1


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: SubCenterArcFaceLoss(D, C, sub_centers=0), ValueError, "`sub_centers`"),
        (lambda: SubCenterArcFaceLoss(D, C, sub_centers=1.5), TypeError, "`sub_centers`"),
    ],
)
def test_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_outlier_threshold():
    head = SubCenterArcFaceLoss(D, C)
    with pytest.raises(ValueError, match="`threshold` must be in"):
        head.find_outliers(torch.randn(2, D), torch.tensor([0, 1]), threshold=4.0)
