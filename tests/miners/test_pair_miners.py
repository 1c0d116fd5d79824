"""PML's pair/triplet miners and OML's HardClusterMiner / NHard ranges against loops over the
anchors and their pairs, written from the miners' definitions; plus the losses taking the
miners' tuples, and bad arguments."""

from __future__ import annotations

import math

import pytest
import torch

from marginkit.losses import MultiSimilarityLoss, NTXentLoss
from marginkit.miners import (
    BatchEasyHardMiner,
    HardClusterMiner,
    MultiSimilarityMiner,
    NHardTripletsMiner,
    PairMarginMiner,
    TripletMarginMiner,
)


def _data(seed=0, n=12, refs=None):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=generator)
    return x, labels


def _value(u, v, distance):
    nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(b * b for b in v))
    cos = sum(a * b for a, b in zip(u, v, strict=True)) / (nu * nv)
    if distance == "cosine":
        return cos
    squared = sum((a / nu - b / nv) ** 2 for a, b in zip(u, v, strict=True))
    return squared if distance == "squared_euclidean" else math.sqrt(squared)


def _lists(x, labels, refs=None, ref_labels=None, distance="euclidean"):
    rows = x.tolist()
    ref_rows = rows if refs is None else refs.tolist()
    labels = labels.tolist()
    ref_labels = labels if ref_labels is None else ref_labels.tolist()
    mat = [[_value(u, v, distance) for v in ref_rows] for u in rows]
    positives = [
        [
            j
            for j in range(len(ref_rows))
            if ref_labels[j] == labels[i] and (refs is not None or j != i)
        ]
        for i in range(len(rows))
    ]
    negatives = [
        [j for j in range(len(ref_rows)) if ref_labels[j] != labels[i]] for i in range(len(rows))
    ]
    return mat, positives, negatives


def _as_sets(mined):
    if len(mined) == 4:
        return (
            sorted(zip(mined[0].tolist(), mined[1].tolist(), strict=True)),
            sorted(zip(mined[2].tolist(), mined[3].tolist(), strict=True)),
        )
    return sorted(zip(*[part.tolist() for part in mined], strict=True))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("with_refs", [False, True])
def test_multi_similarity_miner(distance, with_refs):
    x, labels = _data()
    refs, ref_labels = _data(seed=1, n=9) if with_refs else (None, None)
    mat, positives, negatives = _lists(x, labels, refs, ref_labels, distance)
    eps = 0.1
    expected_pos, expected_neg = [], []
    for i in range(len(mat)):
        if not positives[i] or not negatives[i]:
            continue
        if distance == "cosine":
            hardest_neg, hardest_pos = (
                max(mat[i][n] for n in negatives[i]),
                min(mat[i][p] for p in positives[i]),
            )
            expected_pos += [(i, p) for p in positives[i] if mat[i][p] - eps < hardest_neg]
            expected_neg += [(i, n) for n in negatives[i] if mat[i][n] + eps > hardest_pos]
        else:
            hardest_neg, hardest_pos = (
                min(mat[i][n] for n in negatives[i]),
                max(mat[i][p] for p in positives[i]),
            )
            expected_pos += [(i, p) for p in positives[i] if mat[i][p] + eps > hardest_neg]
            expected_neg += [(i, n) for n in negatives[i] if mat[i][n] - eps < hardest_pos]
    mined = MultiSimilarityMiner(eps, distance=distance)(x, labels, refs, ref_labels)
    assert _as_sets(mined) == (sorted(expected_pos), sorted(expected_neg))


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_pair_margin_miner(distance):
    x, labels = _data(seed=2)
    mat, positives, negatives = _lists(x, labels, distance=distance)
    pos_margin, neg_margin = (0.2, 0.8) if distance == "euclidean" else (0.6, 0.1)
    sign = -1 if distance == "cosine" else 1
    expected = (
        sorted(
            (i, p)
            for i in range(len(mat))
            for p in positives[i]
            if sign * (mat[i][p] - pos_margin) > 0
        ),
        sorted(
            (i, n)
            for i in range(len(mat))
            for n in negatives[i]
            if sign * (mat[i][n] - neg_margin) < 0
        ),
    )
    assert (
        _as_sets(PairMarginMiner(pos_margin, neg_margin, distance=distance)(x, labels)) == expected
    )


@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_triplet_margin_miner(kind, distance):
    x, labels = _data(seed=3)
    mat, positives, negatives = _lists(x, labels, distance=distance)
    margin = 0.3
    expected = []
    for a in range(len(mat)):
        for p in positives[a]:
            for n in negatives[a]:
                gap = mat[a][p] - mat[a][n] if distance == "cosine" else mat[a][n] - mat[a][p]
                keep = {
                    "all": gap <= margin,
                    "hard": gap <= 0,
                    "semihard": 0 < gap <= margin,
                    "easy": gap > margin,
                }[kind]
                if keep:
                    expected.append((a, p, n))
    assert _as_sets(TripletMarginMiner(margin, kind, distance=distance)(x, labels)) == expected


STRATEGIES = [
    (p, n)
    for p in ("easy", "hard", "semihard", "all")
    for n in ("easy", "hard", "semihard", "all")
    if not (p == n == "semihard") and not ({"semihard", "all"} <= {p, n})
]


@pytest.mark.parametrize("pos_strategy,neg_strategy", STRATEGIES)
def test_batch_easy_hard_miner(pos_strategy, neg_strategy):
    """Euclidean: easy positive = nearest, hard = farthest; easy negative = farthest, hard = nearest;
    semihard = the hardest one on the right side of the other choice."""
    x, labels = _data(seed=4)
    mat, positives, negatives = _lists(x, labels)

    def pick(row, candidates, far, bound=None, above=None):
        if bound is not None:
            candidates = [
                j for j in candidates if (mat[row][j] > bound if above else mat[row][j] < bound)
            ]
        if not candidates:
            return None
        key = (lambda j: (-mat[row][j], j)) if far else (lambda j: (mat[row][j], j))
        return min(candidates, key=key)

    pos_pairs, neg_pairs, a_pos, a_neg = [], [], {}, {}
    for i in range(len(mat)):
        if neg_strategy == "semihard":
            p = pick(i, positives[i], far=pos_strategy == "hard")
            n = None if p is None else pick(i, negatives[i], far=False, bound=mat[i][p], above=True)
        elif pos_strategy == "semihard":
            n = pick(i, negatives[i], far=neg_strategy == "easy")
            p = None if n is None else pick(i, positives[i], far=True, bound=mat[i][n], above=False)
        else:
            p = None if pos_strategy == "all" else pick(i, positives[i], far=pos_strategy == "hard")
            n = None if neg_strategy == "all" else pick(i, negatives[i], far=neg_strategy == "easy")
        a_pos[i], a_neg[i] = p, n
    if "all" not in (pos_strategy, neg_strategy):
        both = [i for i in range(len(mat)) if a_pos[i] is not None and a_neg[i] is not None]
        pos_pairs = [(i, a_pos[i]) for i in both]
        neg_pairs = [(i, a_neg[i]) for i in both]
    else:
        pos_pairs = (
            [(i, p) for i in range(len(mat)) for p in positives[i]]
            if pos_strategy == "all"
            else [(i, a_pos[i]) for i in range(len(mat)) if a_pos[i] is not None]
        )
        neg_pairs = (
            [(i, n) for i in range(len(mat)) for n in negatives[i]]
            if neg_strategy == "all"
            else [(i, a_neg[i]) for i in range(len(mat)) if a_neg[i] is not None]
        )
    mined = BatchEasyHardMiner(pos_strategy, neg_strategy)(x, labels)
    assert _as_sets(mined) == (sorted(pos_pairs), sorted(neg_pairs))


def test_losses_take_pair_and_triplet_tuples():
    x, labels = _data(seed=5)
    for miner in (
        MultiSimilarityMiner(),
        PairMarginMiner(),
        TripletMarginMiner(0.5),
        BatchEasyHardMiner(),
    ):
        mined = miner(x, labels)
        for loss_fn in (MultiSimilarityLoss(), NTXentLoss()):
            assert torch.isfinite(loss_fn(x, labels, indices_tuple=mined))


def test_hard_cluster_miner_matches_its_definition():
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(12, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
    anchors, positives, negatives = HardClusterMiner()(x, labels)
    for c in range(3):
        members = [i for i in range(12) if labels[i] == c]
        centre = sum(x[i] for i in members) / len(members)
        torch.testing.assert_close(anchors[c], centre)
        farthest = max(members, key=lambda i: float((x[i] - centre).norm().detach()))
        torch.testing.assert_close(positives[c], x[farthest])
        centres = [sum(x[i] for i in range(12) if labels[i] == k) / 4 for k in range(3)]
        nearest = min(
            (k for k in range(3) if k != c), key=lambda k: float((centres[k] - centre).norm())
        )
        torch.testing.assert_close(negatives[c], centres[nearest])
    (anchors.sum() + negatives.sum()).backward()
    assert x.grad is not None
    with pytest.raises(ValueError, match="`labels`"):
        HardClusterMiner()(x, torch.tensor([0] * 5 + [1] * 7))


def test_nhard_ranges_are_slices_of_the_hardness_order():
    x, labels = _data(seed=7)
    d = torch.cdist(x, x)
    anchors, positives, negatives = NHardTripletsMiner((1, 3), (2, 4)).mine(d, labels)
    expected = []
    for a in range(12):
        pos = sorted(
            (j for j in range(12) if j != a and labels[j] == labels[a]),
            key=lambda j: (-float(d[a, j]), j),
        )
        neg = sorted(
            (j for j in range(12) if labels[j] != labels[a]), key=lambda j: (float(d[a, j]), j)
        )
        expected += [(a, p, n) for p in pos[1:3] for n in neg[2:4]]
    assert (
        list(zip(anchors.tolist(), positives.tolist(), negatives.tolist(), strict=True)) == expected
    )
    same = NHardTripletsMiner((0, 2), (0, 1)).mine(d, labels)
    for got, wanted in zip(same, NHardTripletsMiner(2, 1).mine(d, labels), strict=True):
        assert torch.equal(got, wanted)


def test_bad_miner_arguments():
    with pytest.raises(ValueError, match="`n_positive`"):
        NHardTripletsMiner((3, 3))
    with pytest.raises(TypeError, match="`n_negative`"):
        NHardTripletsMiner(1, (0.5, 2))
    with pytest.raises(ValueError, match="`type_of_triplets`"):
        TripletMarginMiner(type_of_triplets="medium")
    with pytest.raises(ValueError, match="semihard"):
        BatchEasyHardMiner("semihard", "semihard")
    with pytest.raises(ValueError, match="`allowed_pos_range`"):
        BatchEasyHardMiner(allowed_pos_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="`distance`"):
        PairMarginMiner(distance="l1")
    with pytest.raises(ValueError, match="`ref_embeddings`"):
        MultiSimilarityMiner()(
            torch.randn(3, 2), torch.zeros(3, dtype=torch.long), torch.randn(3, 2)
        )
