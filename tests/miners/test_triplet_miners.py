"""Miners against brute-force searches written as explicit loops (ties included)."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.miners import (
    AllTripletsMiner,
    HardTripletsMiner,
    NHardTripletsMiner,
    count_triplets,
)


def _distance(features: torch.Tensor, i: int, j: int) -> float:
    return math.sqrt(
        sum((float(a) - float(b)) ** 2 for a, b in zip(features[i], features[j], strict=True))
    )


def _all_triplets_by_loops(labels: list[int]) -> list[tuple[int, int, int]]:
    n = len(labels)
    return [
        (a, p, q)
        for a in range(n)
        for p in range(n)
        if p != a and labels[p] == labels[a]
        for q in range(n)
        if labels[q] != labels[a]
    ]


def _hard_by_loops(features, labels, n_positive, n_negative):
    """Per anchor: positives by (-distance, index), negatives by (distance, index)."""
    n = len(labels)
    triplets = []
    for a in range(n):
        positives = [p for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [q for q in range(n) if labels[q] != labels[a]]
        if not positives or not negatives:
            continue
        positives.sort(key=lambda p: (-_distance(features, a, p), p))
        negatives.sort(key=lambda q: (_distance(features, a, q), q))
        for p in positives[:n_positive]:
            for q in negatives[:n_negative]:
                triplets.append((a, p, q))
    return triplets


def _as_list(triplets) -> list[tuple[int, int, int]]:
    return list(zip(*(t.tolist() for t in triplets), strict=True))


# Integer coordinates: distances are exact, and repeated rows create exact ties.
TIED = torch.tensor(
    [[0, 0], [1, 0], [0, 1], [1, 0], [2, 2], [0, 0], [3, 1], [1, 0], [5, 5]], dtype=torch.float32
)
TIED_LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])  # class 3 has one item


@pytest.mark.parametrize("seed", [0, 1])
def test_all_triplets_miner_lists_every_valid_triplet(seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (11,), generator=generator)
    labels[0] = 7  # a one-item class: an anchor without positives, still a negative for others
    features = torch.randn(11, 3, generator=generator)
    assert _as_list(AllTripletsMiner()(features, labels)) == _all_triplets_by_loops(labels.tolist())


def test_count_triplets_matches_the_loops():
    labels = TIED_LABELS.tolist()
    expected = [
        sum(1 for t in _all_triplets_by_loops(labels) if t[0] == a) for a in range(len(labels))
    ]
    assert count_triplets(TIED_LABELS).tolist() == expected


@pytest.mark.parametrize("cap", [1, 5, 30, 10_000])
def test_capped_all_triplets_are_distinct_valid_and_at_most_the_cap(cap):
    everything = set(_all_triplets_by_loops(TIED_LABELS.tolist()))
    mined = _as_list(AllTripletsMiner(max_triplets=cap)(TIED, TIED_LABELS))
    assert len(mined) == min(cap, len(everything))
    assert len(set(mined)) == len(mined)
    assert set(mined) <= everything


def test_capped_sampling_reaches_every_triplet():
    everything = set(_all_triplets_by_loops(TIED_LABELS.tolist()))
    seen = set()
    for _ in range(200):
        seen |= set(_as_list(AllTripletsMiner(max_triplets=4)(TIED, TIED_LABELS)))
    assert seen == everything


@pytest.mark.parametrize(
    "features,labels",
    [(TIED, TIED_LABELS), (torch.randn(12, 4), torch.tensor([0, 1, 2] * 4))],
)
def test_hard_miner_matches_brute_force(features, labels):
    expected = _hard_by_loops(features, labels.tolist(), 1, 1)
    assert _as_list(HardTripletsMiner()(features, labels)) == expected


@pytest.mark.parametrize("n_positive,n_negative", [(1, 1), (2, 3), (5, 20)])
@pytest.mark.parametrize(
    "features,labels",
    [(TIED, TIED_LABELS), (torch.randn(12, 4), torch.tensor([0, 1, 2, 1] * 3))],
)
def test_n_hard_miner_matches_brute_force(features, labels, n_positive, n_negative):
    expected = _hard_by_loops(features, labels.tolist(), n_positive, n_negative)
    miner = NHardTripletsMiner(n_positive=n_positive, n_negative=n_negative)
    assert _as_list(miner(features, labels)) == expected


def test_miners_do_not_track_gradients():
    features = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    for miner in (AllTripletsMiner(), HardTripletsMiner(), NHardTripletsMiner(2, 2)):
        for indices in miner(features, labels):
            assert indices.dtype == torch.long and not indices.requires_grad


def test_no_valid_triplet_gives_empty_index_tensors():
    for miner in (AllTripletsMiner(), HardTripletsMiner(), NHardTripletsMiner(2, 2)):
        anchors, positives, negatives = miner(torch.randn(3, 2), torch.tensor([0, 1, 2]))
        assert anchors.numel() == positives.numel() == negatives.numel() == 0


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: AllTripletsMiner(max_triplets=0), ValueError, "`max_triplets` must be positive"),
        (lambda: NHardTripletsMiner(n_positive=0), ValueError, "`n_positive` must be positive"),
        (lambda: NHardTripletsMiner(n_negative=1.5), TypeError, "`n_negative` must be an int"),
    ],
)
def test_bad_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_bad_inputs_name_the_argument():
    miner = HardTripletsMiner()
    with pytest.raises(ValueError, match="`features` must be finite"):
        miner(torch.tensor([[0.0], [float("nan")]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(3,\)"):
        miner(torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"`features` must have shape \(B, D\)"):
        miner(torch.randn(3), torch.tensor([0, 1, 2]))
