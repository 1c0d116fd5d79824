"""Triplet losses against float64 brute force (explicit loops over triplets) and torch's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.graph import saved_tensors_hooks

from marginkit.losses import TripletLoss, TripletLossPlain, TripletLossWithMiner, get_loss
from marginkit.losses._all_triplets import all_triplets_loss_sum
from marginkit.miners import AllTripletsMiner, HardTripletsMiner, NHardTripletsMiner

MARGINS = [0.0, 0.3, None]  # None: the soft triplet loss


def _distance(u: torch.Tensor, v: torch.Tensor, squared: bool) -> torch.Tensor:
    """Euclidean distance of two vectors; 0 (no gradient) for coinciding points."""
    sq = sum((u[k] - v[k]) ** 2 for k in range(len(u)))
    if squared:
        return sq
    return sq.sqrt() if float(sq.detach()) > 0 else torch.zeros((), dtype=u.dtype)


def _per_triplet(d_ap, d_an, margin):
    """Soft: log(1 + exp(d_ap - d_an)). Hinge: d_ap - d_an + m when > 0, else a constant 0 (a
    triplet exactly at the margin is inactive: zero gradient)."""
    if margin is None:
        return torch.log1p(torch.exp(d_ap - d_an))
    z = d_ap - d_an + margin
    return z if float(z.detach()) > 0 else torch.zeros((), dtype=z.dtype)


def _loop_all_triplets(features, labels, margin, squared=False):
    """Every (a, p, n) by three loops, in (anchor, positive, negative) order."""
    n = len(labels)
    values, d_aps, d_ans = [], [], []
    for a in range(n):
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            for q in range(n):
                if labels[q] == labels[a]:
                    continue
                d_ap = _distance(features[a], features[p], squared)
                d_an = _distance(features[a], features[q], squared)
                values.append(_per_triplet(d_ap, d_an, margin))
                d_aps.append(float(d_ap.detach()))
                d_ans.append(float(d_an.detach()))
    return torch.stack(values), d_aps, d_ans


def _tied_batch():
    """Duplicated rows within and across classes (zero distances, equal distances), a one-item
    class, integer coordinates (exact distances)."""
    features = torch.tensor(
        [[0, 0], [1, 0], [0, 0], [0, 1], [1, 0], [2, 2], [1, 1], [0, 1], [3, 0]],
        dtype=torch.float64,
    )
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 3]
    return features, labels


def _random_batch(seed=0, n=10, dim=3):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=generator).tolist()
    labels[-1] = 9  # a one-item class
    return features, labels


# ------------------------------------------------------------------------------ TripletLoss
@pytest.mark.parametrize("margin", [0.2, 1.0])  # torch wants margin > 0
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_triplet_loss_matches_torch_triplet_margin_loss(margin, reduction):
    anchor, positive, negative = torch.randn(3, 16, 8, dtype=torch.float64).unbind(0)
    inputs = [t.clone().requires_grad_() for t in (anchor, positive, negative)]
    ours = TripletLoss(margin=margin, reduction=reduction)(*inputs)
    reference_inputs = [t.clone().requires_grad_() for t in (anchor, positive, negative)]
    expected = F.triplet_margin_loss(*reference_inputs, margin=margin, reduction=reduction)
    # torch adds eps=1e-6 to the differences; the values agree to that precision.
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=0)
    ours.sum().backward()
    expected.sum().backward()
    for mine, theirs in zip(inputs, reference_inputs, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, atol=2e-5, rtol=0)


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("squared", [False, True])
def test_triplet_loss_matches_loops_with_ties(margin, squared):
    anchor = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    positive = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    negative = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (anchor, positive, negative)]
    loss_fn = TripletLoss(margin=margin, reduction="sum", squared=squared)
    ours = loss_fn(*inputs)
    ref_inputs = [t.clone().requires_grad_() for t in (anchor, positive, negative)]
    expected = sum(
        _per_triplet(
            _distance(ref_inputs[0][i], ref_inputs[1][i], squared),
            _distance(ref_inputs[0][i], ref_inputs[2][i], squared),
            margin,
        )
        for i in range(3)
    )
    torch.testing.assert_close(ours, expected)
    ours.backward()
    # Inputs the reference never reaches (inactive triplets, zero distances) get zero gradients.
    (expected + 0.0 * sum(t.sum() for t in ref_inputs)).backward()
    for mine, theirs in zip(inputs, ref_inputs, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad)
    assert loss_fn.last_logs["n_triplets"] == 3.0


def test_triplet_loss_plain_reads_interleaved_rows():
    anchor, positive, negative = torch.randn(3, 5, 4).unbind(0)
    stacked = torch.stack([anchor, positive, negative], dim=1).reshape(-1, 4)
    plain = TripletLossPlain(margin=0.5, reduction="none")(stacked)
    torch.testing.assert_close(
        plain, TripletLoss(margin=0.5, reduction="none")(anchor, positive, negative)
    )
    with pytest.raises(ValueError, match="`features` must have a multiple of 3 rows"):
        TripletLossPlain()(torch.randn(4, 2))


def test_triplet_loss_bad_input():
    loss_fn = TripletLoss()
    with pytest.raises(ValueError, match=r"`negative` must have the shape of `anchor` \(2, 3\)"):
        loss_fn(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="`positive` must be finite"):
        loss_fn(torch.randn(2, 3), torch.full((2, 3), float("nan")), torch.randn(2, 3))
    with pytest.raises(TypeError, match=r"`anchor` must be a torch\.Tensor"):
        loss_fn([[0.0]], torch.randn(1, 1), torch.randn(1, 1))
    with pytest.raises(ValueError, match="`margin` must be a finite number >= 0"):
        TripletLoss(margin=-0.1)
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        TripletLoss(reduction="max")


# --------------------------------------------------------------------- TripletLossWithMiner
BATCHES = {"tied": _tied_batch, "random": _random_batch}


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("memory_budget", [64 * 2**20, 1])  # one block / one anchor-slot each
def test_all_triplets_value_and_gradient_match_the_loops(batch, margin, squared, memory_budget):
    features, labels = BATCHES[batch]()
    x = features.clone().requires_grad_()
    loss_fn = TripletLossWithMiner(margin=margin, squared=squared, memory_budget=memory_budget)
    ours = loss_fn(x, torch.tensor(labels))
    x_ref = features.clone().requires_grad_()
    values, d_aps, d_ans = _loop_all_triplets(x_ref, labels, margin, squared)
    expected = values.mean()
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-12)
    logs = loss_fn.last_logs
    z = [ap - an + (margin or 0.0) for ap, an in zip(d_aps, d_ans, strict=True)]
    assert logs["n_triplets"] == len(values)
    assert logs["active_fraction"] == pytest.approx(sum(v > 0 for v in z) / len(z))
    assert logs["pos_dist"] == pytest.approx(sum(d_aps) / len(d_aps))
    assert logs["neg_dist"] == pytest.approx(sum(d_ans) / len(d_ans))


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_all_triplets_other_reductions(reduction):
    features, labels = _random_batch(seed=3)
    ours = TripletLossWithMiner(margin=0.2, reduction=reduction)(features, torch.tensor(labels))
    values, _, _ = _loop_all_triplets(features, labels, 0.2)
    expected = values.sum() if reduction == "sum" else values
    torch.testing.assert_close(ours, expected)


def test_capped_all_triplets_miner_averages_over_the_sampled_triplets():
    features, labels = _random_batch(seed=4)
    everything = _loop_all_triplets(features, labels, 0.2)[0]
    uncapped = TripletLossWithMiner(0.2, AllTripletsMiner(max_triplets=len(everything)))
    torch.testing.assert_close(uncapped(features, torch.tensor(labels)), everything.mean())
    capped = TripletLossWithMiner(0.2, AllTripletsMiner(max_triplets=5))
    capped(features, torch.tensor(labels))
    assert capped.last_logs["n_triplets"] == 5.0


@pytest.mark.parametrize("margin", MARGINS)
def test_hard_miner_loss_matches_loops(margin):
    features, labels = _tied_batch()
    x = features.clone().requires_grad_()
    ours = TripletLossWithMiner(margin, HardTripletsMiner())(x, torch.tensor(labels))
    x_ref = features.clone().requires_grad_()
    values = []
    for a in range(len(labels)):
        positives = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        negatives = [q for q in range(len(labels)) if labels[q] != labels[a]]
        if not positives or not negatives:
            continue
        d_ap = max(_distance(x_ref[a], x_ref[p], False) for p in positives)
        d_an = min(_distance(x_ref[a], x_ref[q], False) for q in negatives)
        values.append(_per_triplet(d_ap, d_an, margin))
    expected = torch.stack(values).mean()
    torch.testing.assert_close(ours, expected)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_n_hard_miner_loss_equals_the_loss_of_its_triplets():
    features, labels = _random_batch(seed=5, n=12)
    labels_t = torch.tensor(labels)
    miner = NHardTripletsMiner(2, 3)
    anchors, positives, negatives = miner(features, labels_t)
    expected = TripletLoss(0.3)(features[anchors], features[positives], features[negatives])
    torch.testing.assert_close(TripletLossWithMiner(0.3, miner)(features, labels_t), expected)


def test_float32_chunked_equals_materialised_on_a_pk_batch():
    """P×K = 8×4 in float32: the blockwise reduction equals the listed triplets (same distances)."""
    features = torch.randn(32, 16)
    labels = torch.arange(8).repeat_interleave(4)
    for memory_budget in (64 * 2**20, 4096):
        x = features.clone().requires_grad_()
        ours = TripletLossWithMiner(0.2, memory_budget=memory_budget)(x, labels)
        ours.backward()
        x_ref = features.clone().requires_grad_()
        listed = TripletLossWithMiner(0.2, reduction="none")(x_ref, labels)  # lists every triplet
        listed.mean().backward()
        torch.testing.assert_close(ours, listed.mean())
        torch.testing.assert_close(x.grad, x_ref.grad)


def test_all_triplets_forward_saves_only_quadratic_memory():
    """P×K = 16×8 (B = 128, 114,688 triplets): what autograd keeps is O(B²), not O(B³)."""
    batch = 128
    features = torch.randn(batch, 32, requires_grad=True)
    labels = torch.arange(16).repeat_interleave(8)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = TripletLossWithMiner(0.2)(features, labels)
    loss.backward()
    assert loss.item() > 0
    assert max(saved) <= batch * batch
    assert sum(saved) <= 8 * batch * batch  # 114,688 triplets would be 7× B² alone, ×3 tensors


def test_all_triplets_op_gradcheck_and_opcheck():
    features, labels = _random_batch(seed=6, n=7)
    distances = torch.cdist(features, features).requires_grad_()
    labels = torch.tensor(labels)
    for margin, soft in ((0.25, False), (0.0, True)):
        torch.autograd.gradcheck(
            lambda d, m=margin, s=soft: all_triplets_loss_sum(d, labels, m, s, 256)[0],
            (distances,),
        )
        torch.library.opcheck(
            torch.ops.marginkit.all_triplets_loss_sum.default,
            (distances, labels, margin, soft, 256),
        )


def test_half_precision_features_are_computed_in_float32():
    features = torch.randn(12, 8)
    labels = torch.tensor([0, 1, 2] * 4)
    loss_fn = TripletLossWithMiner(0.2)
    half = loss_fn(features.bfloat16(), labels)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, loss_fn(features.bfloat16().float(), labels))


def test_registry_builds_the_triplet_loss_and_it_asks_for_pk_batches():
    loss_fn = get_loss("triplet", margin=0.2, miner=HardTripletsMiner())
    assert isinstance(loss_fn, TripletLossWithMiner)
    assert loss_fn.requires_balanced_batches and loss_fn.min_instances_per_class == 2


def test_with_miner_bad_input_names_the_argument():
    loss_fn = TripletLossWithMiner()
    with pytest.raises(ValueError, match="`features` must be finite"):
        loss_fn(torch.tensor([[0.0], [float("nan")], [1.0]]), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"`labels` must have shape \(3,\)"):
        loss_fn(torch.randn(3, 2), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"`features` must have shape \(B, D\)"):
        loss_fn(torch.randn(3), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="`labels` must give at least one valid triplet"):
        loss_fn(torch.randn(4, 2), torch.tensor([0, 1, 2, 3]))  # every class has one item
    with pytest.raises(ValueError, match="`labels` must give at least one valid triplet"):
        loss_fn(torch.randn(4, 2), torch.tensor([5, 5, 5, 5]))  # no negative
    with pytest.raises(TypeError, match=r"`miner` must be a marginkit\.miners\.TripletMiner"):
        TripletLossWithMiner(miner="hard")
    with pytest.raises(ValueError, match="`memory_budget` must be positive"):
        TripletLossWithMiner(memory_budget=0)
    with pytest.raises(TypeError, match="`squared` must be a bool"):
        TripletLossWithMiner(squared=1)
