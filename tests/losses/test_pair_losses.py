"""The similarity pair and proxy losses against float64 loops over anchors and pairs
(tests/losses/float64_pairs.py): values and gradients, with labels, mined tuples and a
reference set; the reducers' edge cases; bad inputs; gradcheck through the fused op."""

from __future__ import annotations

import pytest
import torch

from marginkit.losses import (
    CircleLoss,
    FastAPLoss,
    GeneralizedLiftedStructureLoss,
    LiftedStructureLoss,
    MultiSimilarityLoss,
    NPairsLoss,
    NTXentLoss,
    ProxyAnchorLoss,
    ProxyNCALoss,
    SupConLoss,
    get_loss,
)
from tests.losses import float64_pairs as ref


def _batch(seed=0, n=9, d=4, classes=3):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=generator)
    labels[: min(n, 2 * classes)] = torch.arange(classes).repeat(2)[: min(n, 2 * classes)]
    return x, labels


def _mined(labels):
    """A hand-made triplet tuple with repeats: (a, p, n) where labels say so."""
    anchors, positives, negatives = [], [], []
    n = len(labels)
    for a in range(n):
        for p in range(n):
            for q in range(n):
                if (
                    a != p
                    and labels[a] == labels[p]
                    and labels[q] != labels[a]
                    and (a + p + q) % 3 == 0
                ):
                    anchors.append(a)
                    positives.append(p)
                    negatives.append(q)
    return tuple(torch.tensor(part) for part in (anchors, positives, negatives))


def _check(ours_fn, ref_fn, x):
    """Same value and the same gradient of x (float64)."""
    x_ours = x.clone().requires_grad_()
    ours = ours_fn(x_ours)
    x_ref = x.clone().requires_grad_()
    expected = ref_fn([row for row in x_ref])
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-10)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-7, atol=1e-9)


LABELED = [
    (
        "multi_similarity",
        lambda: MultiSimilarityLoss(),
        lambda x, y, **k: ref.multi_similarity(x, y, 2.0, 50.0, 0.5, **k),
    ),
    (
        "multi_similarity_euclidean",
        lambda: MultiSimilarityLoss(1.0, 4.0, 0.6, distance="euclidean"),
        lambda x, y, **k: ref.multi_similarity(x, y, 1.0, 4.0, 0.6, distance="euclidean", **k),
    ),
    ("circle", lambda: CircleLoss(), lambda x, y, **k: ref.circle(x, y, 0.4, 80.0, **k)),
    (
        "circle_small_gamma",
        lambda: CircleLoss(m=0.25, gamma=4.0),
        lambda x, y, **k: ref.circle(x, y, 0.25, 4.0, **k),
    ),
    ("supcon", lambda: SupConLoss(), lambda x, y, **k: ref.supcon(x, y, 0.1, **k)),
    (
        "supcon_squared",
        lambda: SupConLoss(0.5, distance="squared_euclidean"),
        lambda x, y, **k: ref.supcon(x, y, 0.5, distance="squared_euclidean", **k),
    ),
    ("ntxent", lambda: NTXentLoss(), lambda x, y, **k: ref.ntxent(x, y, 0.07, **k)),
    (
        "ntxent_euclidean",
        lambda: NTXentLoss(0.5, distance="euclidean"),
        lambda x, y, **k: ref.ntxent(x, y, 0.5, distance="euclidean", **k),
    ),
]


@pytest.mark.parametrize("name,make,reference", LABELED, ids=[case[0] for case in LABELED])
@pytest.mark.parametrize("mode", ["labels", "mined", "references"])
def test_pair_losses_match_the_loops(name, make, reference, mode):
    x, labels = _batch()
    y = labels.tolist()
    loss_fn = make()
    if mode == "labels":
        _check(lambda v: loss_fn(v, labels), lambda v: reference(v, y), x)
    elif mode == "mined":
        mined = _mined(y)
        _check(
            lambda v: loss_fn(v, labels, indices_tuple=mined),
            lambda v: reference(v, y, indices_tuple=mined),
            x,
        )
    else:
        refs, ref_labels = _batch(seed=1, n=11)
        _check(
            lambda v: loss_fn(v, labels, ref_embeddings=refs, ref_labels=ref_labels),
            lambda v: reference(v, y, refs=list(refs), ref_labels=ref_labels.tolist()),
            x,
        )


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("mined", [False, True])
def test_lifted_structure_losses_match_the_loops(distance, mined):
    x, labels = _batch(seed=2)
    y = labels.tolist()
    tuple_ = _mined(y) if mined else None
    lifted = LiftedStructureLoss(1.0, 0.1, distance=distance)
    _check(
        lambda v: lifted(v, labels, indices_tuple=tuple_),
        lambda v: ref.lifted_structure(v, y, 1.0, 0.1, distance, indices_tuple=tuple_),
        x,
    )
    general = GeneralizedLiftedStructureLoss(0.8, 0.2, distance=distance)
    _check(
        lambda v: general(v, labels, indices_tuple=tuple_),
        lambda v: ref.generalized_lifted(v, y, 0.8, 0.2, distance, indices_tuple=tuple_),
        x,
    )


def test_npairs_and_fastap_match_the_loops():
    x, labels = _batch(seed=3, n=10)
    y = labels.tolist()
    _check(lambda v: NPairsLoss()(v, labels), lambda v: ref.npairs(v, y), x)
    for bins in (10, 3):
        _check(
            lambda v, bins=bins: FastAPLoss(bins)(v, labels),
            lambda v, bins=bins: ref.fast_ap(v, y, bins),
            x,
        )


@pytest.mark.parametrize("distance", ["squared_euclidean", "cosine"])
def test_proxy_losses_match_the_loops(distance):
    x, labels = _batch(seed=4, n=8, classes=4)
    y = labels.tolist()
    proxies = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    anchor = ProxyAnchorLoss(6, 4, margin=0.2, alpha=8.0).double()
    nca = ProxyNCALoss(6, 4, softmax_scale=3.0, distance=distance).double()
    for loss_fn in (anchor, nca):
        with torch.no_grad():
            loss_fn.proxies.copy_(proxies)
    _check(
        lambda v: anchor(v, labels), lambda v: ref.proxy_anchor(v, y, list(proxies), 0.2, 8.0), x
    )
    _check(lambda v: nca(v, labels), lambda v: ref.proxy_nca(v, y, list(proxies), 3.0, distance), x)
    # The proxies' gradient too.
    anchor.zero_grad()
    anchor(x, labels).backward()
    p_ref = proxies.clone().requires_grad_()
    ref.proxy_anchor(list(x), y, list(p_ref), 0.2, 8.0).backward()
    torch.testing.assert_close(anchor.proxies.grad, p_ref.grad)


def test_proxynca_plus_plus_temperature_is_a_scale_of_one_over_t():
    x, labels = _batch(seed=6, n=6, classes=3)
    plus = ProxyNCALoss(3, 4, temperature=0.25).double()
    scaled = ProxyNCALoss(3, 4, softmax_scale=4.0).double()
    with torch.no_grad():
        scaled.proxies.copy_(plus.proxies)
    expected = ref.proxy_nca(list(x), labels.tolist(), list(plus.proxies.detach()), 4.0)
    torch.testing.assert_close(plus(x, labels), expected)
    torch.testing.assert_close(scaled(x, labels), expected)
    with pytest.raises(ValueError, match="`temperature`"):
        ProxyNCALoss(3, 4, softmax_scale=2.0, temperature=0.1)


def test_default_arguments_are_pml_defaults():
    assert (
        MultiSimilarityLoss().alpha,
        MultiSimilarityLoss().beta,
        MultiSimilarityLoss().base,
    ) == (2, 50, 0.5)
    assert (CircleLoss().m, CircleLoss().gamma, CircleLoss().reducer) == (0.4, 80, "avg_nonzero")
    assert (SupConLoss().temperature, SupConLoss().reducer) == (0.1, "avg_nonzero")
    assert (NTXentLoss().temperature, NTXentLoss().reducer) == (0.07, "mean")
    anchor = ProxyAnchorLoss(5, 3)
    assert (anchor.margin, anchor.alpha, tuple(anchor.proxies.shape)) == (0.1, 32, (5, 3))
    assert ProxyNCALoss(5, 3).softmax_scale == 1
    assert (LiftedStructureLoss().neg_margin, LiftedStructureLoss().pos_margin) == (1, 0)
    assert (
        LiftedStructureLoss().distance == GeneralizedLiftedStructureLoss().distance == "euclidean"
    )
    assert FastAPLoss().num_bins == 10 and NPairsLoss().distance == "cosine"


def test_reducers_and_pml_zero_for_batches_without_pairs():
    x, labels = _batch()
    per_anchor = MultiSimilarityLoss(reducer="none")(x, labels)
    assert per_anchor.shape == (9,)
    torch.testing.assert_close(MultiSimilarityLoss(reducer="sum")(x, labels), per_anchor.sum())
    circle = CircleLoss(reducer="none")(x, labels)
    torch.testing.assert_close(CircleLoss()(x, labels), circle[circle > 0].mean())
    # One class: no negatives; all distinct: no positives -> PML's zero (with a graph).
    for batch_labels in (torch.zeros(9, dtype=torch.long), torch.arange(9)):
        for loss_fn in (SupConLoss(), NTXentLoss(), CircleLoss(), LiftedStructureLoss()):
            v = x.clone().requires_grad_()
            loss = loss_fn(v, batch_labels)
            assert loss.item() == 0.0
            loss.backward()
            assert v.grad is not None and not v.grad.abs().sum()


def test_last_logs_are_pair_statistics():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    loss_fn = MultiSimilarityLoss()
    loss_fn(x, torch.tensor([0, 0, 1]))
    assert loss_fn.last_logs == {
        "pos_value": 1.0,
        "neg_value": 0.0,
        "n_pos_pairs": 2.0,
        "n_neg_pairs": 4.0,
    }


def test_losses_train_their_proxies_through_parameters():
    loss_fn = get_loss("proxy_anchor", num_classes=3, embedding_size=4)
    assert [name for name, _ in loss_fn.named_parameters()] == ["proxies"]
    x, labels = _batch(n=6)
    loss_fn(x.float(), labels).backward()
    assert loss_fn.proxies.grad is not None and loss_fn.proxies.grad.abs().sum() > 0


@pytest.mark.parametrize("loss_fn", [MultiSimilarityLoss(), NTXentLoss(), CircleLoss()])
def test_bad_inputs_get_errors_naming_the_argument(loss_fn):
    x, labels = _batch()
    with pytest.raises(ValueError, match="`indices_tuple`"):
        loss_fn(x, labels, indices_tuple=(labels, labels))
    with pytest.raises(ValueError, match="`indices_tuple`"):
        loss_fn(x, labels, indices_tuple=(torch.tensor([0]), torch.tensor([1]), torch.tensor([20])))
    with pytest.raises(ValueError, match="`indices_tuple`"):
        loss_fn(
            x, labels, indices_tuple=(torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([2]))
        )
    with pytest.raises(ValueError, match="`ref_embeddings`"):
        loss_fn(
            x,
            labels,
            ref_embeddings=torch.randn(5, 3, dtype=torch.float64),
            ref_labels=torch.zeros(5),
        )
    with pytest.raises(ValueError, match="`ref_labels`"):
        loss_fn(
            x,
            labels,
            ref_embeddings=torch.randn(5, 4, dtype=torch.float64),
            ref_labels=torch.zeros(4),
        )
    with pytest.raises(ValueError, match="`ref_embeddings` and `ref_labels`"):
        loss_fn(x, labels, ref_embeddings=x)
    with pytest.raises(ValueError, match="`labels`"):
        loss_fn(x, labels[:4])
    with pytest.raises(ValueError, match="`features` must be finite"):
        loss_fn(torch.full_like(x, float("nan")), labels)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="`reducer`"):
        MultiSimilarityLoss(reducer="median")
    with pytest.raises(ValueError, match="`distance`"):
        SupConLoss(distance="manhattan")
    with pytest.raises(ValueError, match="`temperature`"):
        NTXentLoss(temperature=0.0)
    with pytest.raises(ValueError, match="`labels`"):
        ProxyAnchorLoss(3, 4)(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="`embeddings`"):
        ProxyNCALoss(3, 4)(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`ref_embeddings`"):
        LiftedStructureLoss()(
            torch.randn(2, 4),
            torch.tensor([0, 1]),
            ref_embeddings=torch.randn(2, 4),
            ref_labels=torch.tensor([0, 1]),
        )


def test_half_precision_embeddings_are_computed_in_float32():
    x, labels = _batch()
    loss = MultiSimilarityLoss()(x.to(torch.bfloat16), labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(
        loss,
        MultiSimilarityLoss()(x.to(torch.bfloat16).double(), labels).float(),
        rtol=1e-4,
        atol=1e-5,
    )


def test_gradcheck_through_the_fused_op():
    x, labels = _batch(n=6)
    refs, ref_labels = _batch(seed=7, n=5)
    for loss_fn in (MultiSimilarityLoss(1.0, 3.0), SupConLoss(0.5), NTXentLoss(0.5)):
        assert torch.autograd.gradcheck(
            lambda v, r, loss_fn=loss_fn: loss_fn(
                v, labels, ref_embeddings=r, ref_labels=ref_labels
            ),
            (x.clone().requires_grad_(), refs.clone().requires_grad_()),
        )


pml = pytest.importorskip  # keeps the optional cross-check below readable


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (MultiSimilarityLoss, "MultiSimilarityLoss"),
        (CircleLoss, "CircleLoss"),
        (SupConLoss, "SupConLoss"),
        (NTXentLoss, "NTXentLoss"),
        (LiftedStructureLoss, "LiftedStructureLoss"),
        (GeneralizedLiftedStructureLoss, "GeneralizedLiftedStructureLoss"),
        (NPairsLoss, "NPairsLoss"),
        (FastAPLoss, "FastAPLoss"),
    ],
)
def test_optional_cross_check_against_pytorch_metric_learning(ours, theirs):
    """Only when pytorch-metric-learning is installed; the loops above are the references."""
    losses = pml("pytorch_metric_learning.losses")
    miners = pml("pytorch_metric_learning.miners")
    x, labels = _batch(seed=8, n=16, classes=4)
    pml_loss = getattr(losses, theirs)()
    torch.testing.assert_close(ours()(x, labels), pml_loss(x, labels), rtol=1e-9, atol=1e-10)
    mined = miners.TripletMarginMiner(margin=0.3)(x, labels)
    torch.testing.assert_close(
        ours()(x, labels, indices_tuple=mined), pml_loss(x, labels, mined), rtol=1e-9, atol=1e-10
    )
