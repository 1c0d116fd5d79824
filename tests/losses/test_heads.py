"""Every class-weight head: float64 formulas written out here, the fused path against the same
maths composed in plain torch, dtypes, bad inputs, and a few training steps on digits.

The references live in ``tests/losses/float64_heads.py`` and ``tests/helpers/float64_margin.py``
(never the package). Head-specific behaviour (label smoothing, SphereFace's ψ, sub-centres,
CurricularFace, AdaFace, MagFace, SV-X) is in the ``test_<head>.py`` files.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from marginkit.losses import (
    AdaCosLoss,
    AdaFaceLoss,
    ArcFaceLoss,
    ArcFaceLossWithMLP,
    CenterLoss,
    COCOLoss,
    CombinedMarginHead,
    CombinedMarginLoss,
    CosFaceLoss,
    CurricularFaceLoss,
    GitLoss,
    L2SoftmaxLoss,
    LGMLoss,
    MagFaceLoss,
    NormFaceLoss,
    SoftmaxLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
    SVXSoftmaxLoss,
    get_loss,
)
from tests.helpers.float64_margin import angle_between, phi_of_theta
from tests.losses.digits_training import assert_trains, train_on_digits
from tests.losses.float64_heads import (
    cosines,
    cross_entropy_rows,
    embeddings_at_angles,
    leaf_copies,
    margin_head_loss,
    unit,
    with_target,
)

D, C = 6, 5

# name -> factory(in_features, num_classes, **kwargs); small scales keep float32 checks tight.
HEADS = {
    "softmax": lambda d, c, **kw: SoftmaxLoss(d, c, **kw),
    "normface": lambda d, c, **kw: NormFaceLoss(d, c, s=10.0, **kw),
    "l2softmax": lambda d, c, **kw: L2SoftmaxLoss(d, c, **kw),
    "arcface": lambda d, c, **kw: ArcFaceLoss(d, c, s=16.0, **kw),
    "arcface_mlp": lambda d, c, **kw: ArcFaceLossWithMLP(d, c, [12, 4], s=16.0, **kw),
    "cosface": lambda d, c, **kw: CosFaceLoss(d, c, s=16.0, **kw),
    "sphereface": lambda d, c, **kw: SphereFaceLoss(d, c, m=3, s=16.0, **kw),
    "combined_margin": lambda d, c, **kw: CombinedMarginHead(d, c, 0.9, 0.3, 0.1, s=16.0, **kw),
    "subcenter_arcface": lambda d, c, **kw: SubCenterArcFaceLoss(d, c, 2, s=16.0, **kw),
    "curricularface": lambda d, c, **kw: CurricularFaceLoss(d, c, s=16.0, **kw),
    "adaface": lambda d, c, **kw: AdaFaceLoss(d, c, s=16.0, **kw),
    "magface": lambda d, c, **kw: MagFaceLoss(d, c, s=16.0, l_a=0.5, u_a=10.0, **kw),
    "svx_softmax": lambda d, c, **kw: SVXSoftmaxLoss(d, c, s=16.0, t=1.2, m3=0.2, **kw),
    "coco": lambda d, c, **kw: COCOLoss(d, c, alpha=10.0, **kw),
    "adacos": lambda d, c, **kw: AdaCosLoss(d, c, **kw),
    "lgm": lambda d, c, **kw: LGMLoss(num_classes=c, in_features=d, **kw),
    "center": lambda d, c, **kw: CenterLoss(num_classes=c, in_features=d, lamda=1.0, **kw),
    "git": lambda d, c, **kw: GitLoss(num_classes=c, in_features=d, lamda_c=1.0, lamda_g=1.0, **kw),
}
NAMES = sorted(HEADS)
# The centre regularisers have no classifier logits.
WITH_LOGITS = [n for n in NAMES if n not in {"center", "git"}]
# Heads whose logits are s·cos (all but the linear-softmax ones, L-GM and the MLP head).
COSINE_HEADS = [n for n in WITH_LOGITS if n not in {"softmax", "l2softmax", "arcface_mlp", "lgm"}]


def class_weight(head):
    """The head's ``(rows, D)`` class weight (``centers`` for the centre regularisers)."""
    return head.centers if isinstance(head, CenterLoss | GitLoss) else head.weight


def batch(n: int = 24, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, D, dtype=dtype) * 3.0, torch.randint(0, C, (n,))


def mixed_batch(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rows plus rows at tiny, small and near-opposite target angles (float64)."""
    labels = torch.randint(0, C, (20,))
    angles = torch.tensor([1e-6, 1e-4, 1e-2, 0.3, 1.0, 2.0, 3.0, math.pi - 1e-3])
    near = embeddings_at_angles(weight[: weight.shape[0]], labels[:8], angles, norm=2.5)
    return torch.cat([near, torch.randn(12, D, dtype=torch.float64) * 2.0]), labels


# ---- value and gradients against float64 formulas ---------------------------------------------


def _l2softmax_reference(x, w, y):
    alpha = math.log(0.9 * (C - 2) / (1 - 0.9))  # the paper's lower bound, default p = 0.9
    return cross_entropy_rows(alpha * unit(x) @ w.T, y)


REFERENCES = {
    "softmax": (lambda: SoftmaxLoss(D, C), lambda x, w, y: cross_entropy_rows(x @ w.T, y)),
    "l2softmax": (lambda: L2SoftmaxLoss(D, C), _l2softmax_reference),
    "normface": (
        lambda: NormFaceLoss(D, C, s=12.0),
        lambda x, w, y: margin_head_loss(x, w, y, 12.0, torch.cos),
    ),
    "arcface": (
        lambda: ArcFaceLoss(D, C, m=0.5, s=30.0),
        lambda x, w, y: margin_head_loss(
            x, w, y, 30.0, lambda t: phi_of_theta(t, 1.0, 0.5, 0.0, "arcface")
        ),
    ),
    "arcface_easy": (
        lambda: ArcFaceLoss(D, C, m=1.2, s=8.0, easy_margin=True),
        lambda x, w, y: margin_head_loss(
            x, w, y, 8.0, lambda t: phi_of_theta(t, 1.0, 1.2, 0.0, "easy")
        ),
    ),
    "cosface": (
        lambda: CosFaceLoss(D, C, m=0.35, s=30.0),
        lambda x, w, y: margin_head_loss(x, w, y, 30.0, lambda t: torch.cos(t) - 0.35),
    ),
    "combined_margin": (
        lambda: CombinedMarginHead(D, C, m1=1.35, m2=0.25, m3=0.1, s=20.0),
        lambda x, w, y: margin_head_loss(
            x, w, y, 20.0, lambda t: phi_of_theta(t, 1.35, 0.25, 0.1, "monotonic")
        ),
    ),
    "combined_margin_arcface_fallback": (
        lambda: CombinedMarginHead(D, C, m1=1.0, m2=0.4, m3=0.2, s=20.0, margin_fallback="arcface"),
        lambda x, w, y: margin_head_loss(
            x, w, y, 20.0, lambda t: phi_of_theta(t, 1.0, 0.4, 0.2, "arcface")
        ),
    ),
    "sphereface": (
        lambda: SphereFaceLoss(D, C, m=4, s=10.0),
        lambda x, w, y: margin_head_loss(
            x, w, y, 10.0, lambda t: phi_of_theta(t, 4.0, 0.0, 0.0, "monotonic")
        ),
    ),
    "svx_softmax_t1": (
        lambda: SVXSoftmaxLoss(D, C, s=12.0, m1=1.0, m2=0.2, m3=0.1),
        lambda x, w, y: margin_head_loss(
            x, w, y, 12.0, lambda t: phi_of_theta(t, 1.0, 0.2, 0.1, "monotonic")
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(REFERENCES))
def test_value_and_gradients_match_float64_formula(case):
    make, reference = REFERENCES[case]
    head = make().double()
    head.reduction = "none"
    x, y = mixed_batch(head.weight.detach())
    x = x.clone().requires_grad_()
    loss = head(x, y)
    loss.sum().backward()

    x_ref, w_ref = leaf_copies(x, head.weight)
    expected = reference(x_ref, w_ref, y)
    expected.sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-9)
    # Exact to 1e-6 relative, including the rows at 1e-6 and 1e-4 rad.
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.weight.grad, w_ref.grad, rtol=1e-6, atol=1e-9)


def test_arcface_gradient_at_tiny_angle_with_a_rival():
    """The issue's case: θ = 1e-4, a rival 0.3 rad away; the gradient must be the true ~30.47."""
    theta = 1e-4
    weight = torch.tensor(
        [[math.cos(theta), math.sin(theta), 0.0], [math.cos(0.3), 0.0, math.sin(0.3)]],
        dtype=torch.float64,
    )
    head = ArcFaceLoss(3, 2, m=0.5, s=64.0).double()
    head.weight.data.copy_(weight)
    x = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0])
    head(x, y).backward()

    x_ref, w_ref = leaf_copies(x, weight)
    rows = torch.tensor([0])
    phi = torch.cos(angle_between(x_ref, w_ref[rows]) + 0.5)  # far from the fallback region
    rival = torch.cos(angle_between(x_ref, w_ref[1:2]))
    logits = 64.0 * torch.stack([phi, rival], dim=1)
    cross_entropy_rows(logits, y).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=0)
    torch.testing.assert_close(head.weight.grad, w_ref.grad, rtol=1e-6, atol=0)
    assert abs(x.grad[0, 1].item() + 30.479) < 0.01  # the pull toward the target


@pytest.mark.parametrize("name", ["arcface", "cosface", "combined_margin", "sphereface"])
@pytest.mark.parametrize("angle", [1e-6, 1e-5, 1e-3])
def test_gradient_exact_down_to_tiny_angles(name, angle):
    head = HEADS[name](D, C).double()
    head.reduction = "sum"
    y = torch.randint(0, C, (6,))
    x = embeddings_at_angles(head.weight.detach(), y, torch.full((6,), angle)).requires_grad_()
    head(x, y).backward()
    x_ref, w_ref = leaf_copies(x, head.weight)
    m1, m2, m3, fallback = {
        "arcface": (1.0, 0.5, 0.0, "arcface"),
        "cosface": (1.0, 0.0, 0.35, "none"),
        "combined_margin": (0.9, 0.3, 0.1, "monotonic"),
        "sphereface": (3.0, 0.0, 0.0, "monotonic"),
    }[name]
    reference = margin_head_loss(
        x_ref, w_ref, y, 16.0, lambda t: phi_of_theta(t, m1, m2, m3, fallback)
    )
    reference.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, w_ref.grad, rtol=1e-6, atol=1e-12)


# ---- the fused path equals the same maths composed in plain torch ------------------------------


COMPOSED = {
    "normface": (lambda t: torch.cos(t), 10.0),
    "arcface": (lambda t: phi_of_theta(t, 1.0, 0.5, 0.0, "arcface"), 16.0),
    "cosface": (lambda t: torch.cos(t) - 0.35, 16.0),
    "combined_margin": (lambda t: phi_of_theta(t, 0.9, 0.3, 0.1, "monotonic"), 16.0),
    "sphereface": (lambda t: phi_of_theta(t, 3.0, 0.0, 0.0, "monotonic"), 16.0),
}


@pytest.mark.parametrize("name", sorted(COMPOSED))
def test_fused_path_equals_composed_cross_entropy(name):
    """float32: the head against materialised logits + F.cross_entropy (value and gradients)."""
    phi_of, s = COMPOSED[name]
    head = HEADS[name](D, C)
    x, y = batch(32, torch.float32)
    x.requires_grad_()
    head(x, y).backward()

    x2 = x.detach().clone().requires_grad_()
    weight = head.weight.detach().clone().requires_grad_()
    cos = F.linear(F.normalize(x2, dim=1), F.normalize(weight, dim=1))
    theta = angle_between(x2, weight[y]).float()
    composed = F.cross_entropy(s * with_target(cos, y, phi_of(theta).float()), y)
    composed.backward()
    torch.testing.assert_close(head(x, y), composed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head.weight.grad, weight.grad, rtol=1e-4, atol=1e-5)


def test_softmax_equals_torch_cross_entropy():
    head = SoftmaxLoss(D, C)
    x, y = batch(16, torch.float32)
    expected = F.cross_entropy(x @ head.weight.T, y)
    torch.testing.assert_close(head(x, y), expected)


def test_l2softmax_alpha_bound_and_validation():
    assert L2SoftmaxLoss(D, 12, p=0.9).alpha == pytest.approx(math.log(0.9 * 10 / 0.1))
    assert L2SoftmaxLoss(D, 2).alpha == 1.0  # the bound is vacuous for two classes
    assert L2SoftmaxLoss(D, 12, alpha=20.0).alpha == 20.0
    with pytest.raises(ValueError, match="`alpha` must be >"):
        L2SoftmaxLoss(D, 12, alpha=2.0)
    with pytest.raises(ValueError, match="`p` must be in"):
        L2SoftmaxLoss(D, 12, p=1.0)
    # from_normx: already-normalised inputs are not normalised again.
    head = L2SoftmaxLoss(D, C, alpha=5.0, from_normx=True)
    x, _ = batch(8, torch.float32)
    torch.testing.assert_close(head.logits(x), 5.0 * x @ head.weight.T)


# ---- shared behaviour of every head ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_registry_weight_shape_and_logits(name):
    extra = {"mlp_features": [12, 4]} if name == "arcface_mlp" else {}
    head = get_loss(name, in_features=D, num_classes=C, **extra)
    rows = {"subcenter_arcface": C * 3}.get(name, C)
    cols = head.arcface.weight.shape[1] if name == "arcface_mlp" else D
    assert class_weight(head).shape == (rows, cols)
    x, _ = batch(7, torch.float32)
    if name in WITH_LOGITS:
        assert head.logits(x).shape == (7, C)


@pytest.mark.parametrize("name", COSINE_HEADS)
def test_logits_are_scaled_cosines(name):
    head = HEADS[name](D, C).double()
    x, _ = batch(9)
    if name == "subcenter_arcface":
        w = head.weight.detach().view(C, 2, D)
        expected = torch.stack([cosines(x, w[:, k]) for k in range(2)]).amax(0)
    else:
        expected = cosines(x, head.weight.detach())
    torch.testing.assert_close(head.logits(x), head.s * expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_reductions(name):
    heads = {r: HEADS[name](D, C, reduction=r).eval() for r in ("none", "sum", "mean")}
    state = heads["none"].state_dict()
    for head in heads.values():
        head.load_state_dict(state)
    x, y = batch(10, torch.float32)
    per_row = heads["none"](x, y)
    assert per_row.shape == (10,)
    torch.testing.assert_close(heads["sum"](x, y), per_row.sum())
    torch.testing.assert_close(heads["mean"](x, y), per_row.mean())


@pytest.mark.parametrize("name", NAMES)
def test_half_embeddings_into_float32_head(name):
    """Another floating dtype is computed in the head's dtype, never torch's raw dtype error."""
    head = HEADS[name](D, C).eval()
    x, y = batch(8, torch.float32)
    x16 = x.half()
    torch.testing.assert_close(head(x16, y), head(x16.float(), y))
    torch.testing.assert_close(head(x.double(), y), head(x, y))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_aligned_and_opposed_embeddings_stay_finite(name, dtype):
    """cos = ±1 exactly (embedding = ± its class weight): finite loss and gradients."""
    head = HEADS[name](D, C).to(dtype).eval()
    y = torch.arange(C).repeat(2)
    if name == "arcface_mlp":
        x = torch.randn(2 * C, D, dtype=dtype)
    else:
        w = class_weight(head).detach()
        rows = w.view(C, -1, D)[:, 0] if name == "subcenter_arcface" else w
        x = torch.cat([rows, -rows]).to(dtype) * 3.0
    x.requires_grad_()
    loss = head(x, y)
    loss.backward()
    assert torch.isfinite(loss).all()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(class_weight(head).grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_name_the_argument(name):
    head = HEADS[name](D, C)
    x, y = batch(4, torch.float32)
    with pytest.raises(ValueError, match=r"`embeddings` must have shape \(N, 6\)"):
        head(torch.randn(4, D + 1), y)
    with pytest.raises(TypeError, match=r"`embeddings` must be a torch\.Tensor"):
        head(x.tolist(), y)
    with pytest.raises(TypeError, match=r"`labels` must be a torch\.Tensor"):
        head(x, y.tolist())
    with pytest.raises(ValueError, match="`labels` must have shape"):
        head(x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="`labels` must be an integer tensor"):
        head(x, y.float())
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 5\), got 5 at row 2"):
        head(x, torch.tensor([0, 1, 5, 2]))
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 5\), got -1 at row 0"):
        head(x, torch.tensor([-1, 1, 2, 2]))


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: ArcFaceLoss(D, C, m=-0.5), ValueError, r"`m` must be in \[0, 3.14159\)"),
        (lambda: ArcFaceLoss(D, C, m=4.0), ValueError, "`m` must be in"),
        (lambda: ArcFaceLoss(D, C, m="0.5"), TypeError, "`m` must be a real number"),
        (lambda: ArcFaceLoss(D, C, s=0.0), ValueError, "`s` must be a finite number > 0"),
        (lambda: ArcFaceLoss(D, C, easy_margin=1), TypeError, "`easy_margin` must be a bool"),
        (lambda: ArcFaceLoss(D, C, grad_mode="fast"), ValueError, "`grad_mode` must be one of"),
        (lambda: ArcFaceLoss(D, 0), ValueError, "`num_classes` must be positive"),
        (lambda: CosFaceLoss(0, C), ValueError, "`in_features` must be positive"),
        (lambda: CosFaceLoss(D, C, m=-0.1), ValueError, "`m` must be in"),
        (lambda: NormFaceLoss(D, C, s=math.inf), ValueError, "`s` must be a finite number"),
        (lambda: SoftmaxLoss(D, C, reduction="avg"), ValueError, "`reduction` must be one of"),
        (lambda: SoftmaxLoss(D, 2.5), TypeError, "`num_classes` must be an int"),
        (lambda: CombinedMarginHead(D, C, m1=0.0), ValueError, "`m1` must be a finite number > 0"),
        (lambda: CombinedMarginHead(D, C, m2=-0.1), ValueError, "`m2` must be in"),
        (lambda: CombinedMarginHead(D, C, m3=-0.1), ValueError, "`m3` must be in"),
        (
            lambda: CombinedMarginHead(D, C, margin_fallback="clip"),
            ValueError,
            "`margin_fallback` must be one of",
        ),
        (lambda: ArcFaceLossWithMLP(D, C, []), ValueError, "`mlp_features` must hold"),
        (lambda: ArcFaceLossWithMLP(D, C, 8), TypeError, "`mlp_features` must be a sequence"),
    ],
)
def test_bad_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"`name` must be one of \[.*'arcface'.*\], got 'arcfase'"):
        get_loss("arcfase", in_features=D, num_classes=C)


# ---- a few optimisation steps on digits --------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_trains_on_digits(name):
    head = HEADS[name](16, 6)
    assert_trains(train_on_digits(head, steps=15, lr=1e-2, rows=300))


# ---- data that cannot give a meaningful loss -----------------------------------------------------


@pytest.mark.parametrize("name", [n for n in NAMES if n != "center"])
def test_one_class_is_refused(name):
    """With one class a softmax head's loss is 0 whatever the embeddings (Git: no push)."""
    with pytest.raises(ValueError, match=r"`num_classes` must be >= 2 .*got 1"):
        HEADS[name](D, 1)


def test_center_loss_accepts_one_class():
    head = CenterLoss(num_classes=1, in_features=D)
    x = torch.randn(4, D)
    expected = 0.003 / 2 * ((x - head.centers.detach()[0]) ** 2).sum(1).mean()
    torch.testing.assert_close(head(x, torch.zeros(4, dtype=torch.long)), expected)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_embeddings_name_the_row(name, bad):
    head = HEADS[name](D, C)
    x, y = batch(5, torch.float32)
    x[3, 1] = bad
    # The MLP head checks its projection (inf through a Linear + ReLU may become nan).
    value = "(nan|inf)" if name == "arcface_mlp" else str(bad)
    with pytest.raises(ValueError, match=rf"`embeddings` must be finite, got {value} at row 3"):
        head(x, y)


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_is_refused(name):
    head = HEADS[name](D, C)
    with pytest.raises(ValueError, match=r"`embeddings` must hold at least one row.*\(0, \d+\)"):
        head(torch.empty(0, D), torch.empty(0, dtype=torch.long))


def test_bad_labels_are_named_before_non_finite_embeddings():
    x, _ = batch(4, torch.float32)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"`labels` must be in \[0, 5\), got 7 at row 2"):
        NormFaceLoss(D, C)(x, torch.tensor([0, 1, 7, 2]))


# ---- margin_fallback="arcface" is insightface's continuation, made for m1 = 1 -------------------


@pytest.mark.parametrize("m1", [2.0, 0.9, 1.35])
def test_arcface_fallback_with_m1_other_than_one_is_refused(m1):
    """With m1 != 1 its continuation jumps up at θ = (π − m2)/m1: (2, 0.3, 0) −1.0 → +0.06."""
    theta_star = (math.pi - 0.3) / 2.0
    below, above = (theta_star - 1e-9, theta_star + 1e-9)
    jump = (math.cos(above) - 0.3 * math.sin(0.3)) - math.cos(2.0 * below + 0.3)
    assert jump > 1.0  # the discontinuity the error prevents (float64, written out)
    match = r"`margin_fallback='arcface'` needs `m1` = 1.*monotonic"
    with pytest.raises(ValueError, match=match):
        CombinedMarginHead(D, C, m1=m1, m2=0.3, m3=0.0, margin_fallback="arcface")
    with pytest.raises(ValueError, match=match):
        CombinedMarginLoss(m1, 0.3, 0.0, margin_fallback="arcface")
    CombinedMarginHead(D, C, m1=m1, m2=0.3, margin_fallback="monotonic")  # the alternative


# ---- SoftmaxLoss takes memory_efficient= like the other softmax heads ---------------------------


@pytest.mark.parametrize("setting", [True, False, "auto"])
def test_softmax_memory_efficient_is_the_same_loss_and_gradients(setting, monkeypatch):
    import marginkit.losses.softmax as softmax_module

    monkeypatch.setattr(softmax_module, "_CHUNK_LOGITS", 3 * C)  # chunks of 3 rows
    head = SoftmaxLoss(D, C, memory_efficient=setting).double()
    assert head.uses_memory_efficient() is (setting is True)
    x, y = batch(10)
    x.requires_grad_()
    head(x, y).backward()
    x_ref, w_ref = leaf_copies(x, head.weight)
    cross_entropy_rows(x_ref @ w_ref.T, y).mean().backward()
    torch.testing.assert_close(
        head(x, y), cross_entropy_rows(x.detach() @ w_ref.detach().T, y).mean()
    )
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, w_ref.grad, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="`memory_efficient` must be True, False or 'auto'"):
        SoftmaxLoss(D, C, memory_efficient="yes")


def test_l2softmax_memory_efficient_is_the_same_loss(monkeypatch):
    import marginkit.losses.softmax as softmax_module

    monkeypatch.setattr(softmax_module, "_CHUNK_LOGITS", 2 * C)
    chunked = L2SoftmaxLoss(D, C, alpha=5.0, memory_efficient=True).double()
    x, y = batch(7)
    expected = cross_entropy_rows(5.0 * unit(x) @ chunked.weight.detach().T, y).mean()
    torch.testing.assert_close(chunked(x, y), expected, rtol=1e-12, atol=1e-12)
