"""The fused margin cross-entropy (CPU path) against the float64 reference in tests/helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from marginkit.ops import _cpu, margin_cross_entropy
from tests.helpers.fallbacks import expect_refused, refused_fallback
from tests.helpers.float64_margin import margin_ce_reference

# torch.compile imports parts of torch.jit, which warn that they are deprecated (torch's own code).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")

# (m1, m2, m3): the named special cases, a combined margin and no margin at all.
MARGINS = {
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.35),
    "sphereface": (1.35, 0.0, 0.0),
    "sphereface4": (4.0, 0.0, 0.0),
    "combined": (1.0, 0.3, 0.2),
    "combined_all": (0.9, 0.4, 0.15),
    "softmax": (1.0, 0.0, 0.0),
}
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# (rtol, atol) of loss / softmax / gradient against float64, by input dtype. Half-precision
# inputs are computed exactly from the rounded values; only the outputs are rounded.
TOLERANCES = {
    torch.float64: (1e-9, 1e-11),
    torch.float32: (2e-4, 2e-5),
    torch.float16: (2e-3, 2e-4),
    torch.bfloat16: (2e-2, 2e-3),
}


def cosines(n_rows: int, n_cols: int, dtype: torch.dtype = torch.float64, seed: int = 0):
    """Cosines of random unit vectors, rounded to ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(
        torch.randn(n_rows, 16, generator=generator, dtype=torch.float64), dim=1
    )
    weights = F.normalize(torch.randn(n_cols, 16, generator=generator, dtype=torch.float64), dim=1)
    return (embeddings @ weights.T).to(dtype)


def labels(n_rows: int, n_cols: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, n_cols, (n_rows,), generator=torch.Generator().manual_seed(seed))


def run_op(logits, label, *args, grad_output=None, **kwargs):
    """Return ``(loss, softmax, grad)`` of the fused op (softmax requested)."""
    leaf = logits.detach().clone().requires_grad_()
    loss, softmax = margin_cross_entropy(leaf, label, *args, return_softmax=True, **kwargs)
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output.to(loss.dtype))
    return loss, softmax, leaf.grad


def assert_close(actual, expected, dtype):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("margins", MARGINS.values(), ids=MARGINS.keys())
@pytest.mark.parametrize("scale", [1.0, 30.0, 64.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_softmax_and_grad_match_reference(margins, scale, dtype):
    logits, label = cosines(9, 23, dtype), labels(9, 23)
    loss, softmax, grad = run_op(logits, label, *margins, scale)
    ref_loss, ref_softmax, ref_grad = margin_ce_reference(logits, label, *margins, scale)
    assert loss.dtype == dtype and softmax.dtype == dtype and grad.dtype == dtype
    assert_close(loss, ref_loss, dtype)
    assert_close(softmax, ref_softmax, dtype)
    # Gradients are s·p: compare relative to the scale.
    assert_close(grad / scale, ref_grad / scale, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "margins", [MARGINS["arcface"], MARGINS["combined_all"]], ids=["arc", "all"]
)
def test_dtypes(dtype, margins):
    logits, label = cosines(11, 37, dtype), labels(11, 37)
    loss, softmax, grad = run_op(logits, label, *margins, 64.0)
    ref_loss, ref_softmax, ref_grad = margin_ce_reference(logits, label, *margins, 64.0)
    accumulation = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == accumulation
    assert softmax.dtype == dtype and grad.dtype == dtype
    assert_close(loss, ref_loss, dtype)
    assert_close(softmax, ref_softmax, dtype)
    assert_close(grad / 64.0, ref_grad / 64.0, dtype)


@pytest.mark.parametrize("margin_fallback", ["none", "arcface", "easy", "monotonic"])
@pytest.mark.parametrize("grad_mode", ["exact", "straight_through"])
@pytest.mark.parametrize("margins", [(1.0, 0.5, 0.0), (1.2, 0.6, 0.1), (3.0, 0.0, 0.0)])
def test_fallbacks_and_grad_modes(margin_fallback, grad_mode, margins):
    # Cosines spread over [-1, 1] so that every fallback region is hit.
    label = torch.arange(12) % 5
    logits = cosines(12, 5)
    logits[torch.arange(12), label] = torch.linspace(-0.99, 0.99, 12, dtype=torch.float64)
    options = {"margin_fallback": margin_fallback, "grad_mode": grad_mode}
    if refused_fallback(margins[0], margin_fallback):
        with expect_refused():
            run_op(logits, label, *margins, 10.0, reduction="none", **options)
        return
    loss, softmax, grad = run_op(logits, label, *margins, 10.0, reduction="none", **options)
    ref_loss, ref_softmax, ref_grad = margin_ce_reference(
        logits, label, *margins, 10.0, reduction="none", **options
    )
    assert_close(loss, ref_loss, torch.float64)
    assert_close(softmax, ref_softmax, torch.float64)
    assert_close(grad, ref_grad, torch.float64)


def test_straight_through_gradient_is_softmax_minus_one_hot():
    # d target / d x = 1: the gradient is that of plain CE with the margin logits held fixed.
    logits, label = cosines(6, 8), labels(6, 8)
    _loss, softmax, grad = run_op(
        logits, label, 1.0, 0.5, 0.0, 16.0, reduction="sum", grad_mode="straight_through"
    )
    expected = 16.0 * (softmax - F.one_hot(label, 8).double())
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


def test_exact_gradient_matches_autograd_through_the_formula():
    # The analytic reference gradient agrees with autograd through arccos away from ±1.
    logits, label = cosines(5, 7), labels(5, 7)
    leaf = logits.clone().requires_grad_()
    theta = torch.acos(leaf.gather(1, label[:, None]))
    z = leaf.scatter(1, label[:, None], torch.cos(1.2 * theta + 0.3) - 0.1) * 20.0
    F.cross_entropy(z, label).backward()
    _loss, _softmax, grad = run_op(logits, label, 1.2, 0.3, 0.1, 20.0)
    torch.testing.assert_close(grad, leaf.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_and_ignore_index(reduction):
    logits, label = cosines(10, 6), labels(10, 6)
    label[[1, 4, 5]] = -100
    grad_output = torch.rand(10, dtype=torch.float64) if reduction == "none" else None
    loss, softmax, grad = run_op(
        logits, label, 1.0, 0.5, 0.0, 30.0, reduction=reduction, grad_output=grad_output
    )
    ref = margin_ce_reference(
        logits, label, 1.0, 0.5, 0.0, 30.0, reduction=reduction, grad_output=grad_output
    )
    assert loss.shape == ((10,) if reduction == "none" else ())
    for actual, expected in zip((loss, softmax, grad), ref, strict=True):
        assert_close(actual, expected, torch.float64)
    assert torch.all(grad[[1, 4, 5]] == 0)
    if reduction == "none":
        assert torch.all(loss[[1, 4, 5]] == 0)
    # Ignored rows' softmax is the plain softmax of the scaled logits.
    torch.testing.assert_close(softmax[1], torch.softmax(30.0 * logits[1], 0))


def test_custom_ignore_index_inside_class_range():
    logits, label = cosines(6, 4), labels(6, 4)
    label[2] = 3
    loss, _softmax, grad = run_op(logits, label, reduction="none", ignore_index=3)
    ref_loss, _, ref_grad = margin_ce_reference(
        logits, label, 1.0, 0.5, 0.0, 64.0, reduction="none", ignore_index=3
    )
    assert_close(loss, ref_loss, torch.float64)
    assert_close(grad, ref_grad, torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored_gives_zero_loss_and_zero_grad(reduction):
    logits = cosines(4, 5)
    label = torch.full((4,), -100)
    loss, _softmax, grad = run_op(logits, label, reduction=reduction)
    assert torch.all(loss == 0)
    assert torch.all(grad == 0)


def test_empty_batch():
    loss, softmax, grad = run_op(
        torch.empty(0, 5, dtype=torch.float64), torch.empty(0, dtype=torch.long)
    )
    assert loss.item() == 0 and softmax.shape == (0, 5) and grad.shape == (0, 5)


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_label_shapes_and_integer_dtypes(label_dtype):
    logits, label = cosines(7, 9), labels(7, 9)
    expected = margin_cross_entropy(logits, label)
    torch.testing.assert_close(
        margin_cross_entropy(logits, label[:, None].to(label_dtype)), expected
    )


def test_non_contiguous_logits():
    logits, label = cosines(12, 10), labels(6, 10)
    strided = logits[::2]
    transposed = logits[::2].T.contiguous().T
    for view in (strided, transposed):
        loss, softmax, grad = run_op(view, label, 1.2, 0.3, 0.1, 20.0)
        ref = margin_ce_reference(view, label, 1.2, 0.3, 0.1, 20.0)
        for actual, expected in zip((loss, softmax, grad), ref, strict=True):
            assert_close(actual, expected, torch.float64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_chunked_rows_match_one_chunk(monkeypatch, dtype):
    # Force many chunks (including a short last one) on an odd shape.
    logits, label = cosines(37, 101, dtype), labels(37, 101)
    label[[0, 5, 36]] = -100
    expected = run_op(logits, label, 1.0, 0.4, 0.1, 64.0, reduction="sum")
    monkeypatch.setattr(_cpu, "_CHUNK_BYTES", 3 * 101 * 4)
    actual = run_op(logits, label, 1.0, 0.4, 0.1, 64.0, reduction="sum")
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "margins", [MARGINS["arcface"], MARGINS["combined_all"], MARGINS["sphereface4"]]
)
@pytest.mark.parametrize("margin_fallback", ["none", "arcface", "easy", "monotonic"])
def test_cosines_at_plus_minus_one_stay_finite(dtype, margins, margin_fallback):
    # Perfectly aligned and opposed pairs, as targets and as non-targets, at scale 64.
    label = torch.tensor([0, 1, 2, 3])
    logits = torch.zeros(4, 6, dtype=dtype)
    logits[0, 0] = 1.0  # aligned target
    logits[1, 1] = -1.0  # opposed target
    logits[2, :] = 1.0  # every class aligned
    logits[3, :] = -1.0
    logits[3, 0] = 1.0  # a non-target aligned, the target opposed
    if refused_fallback(margins[0], margin_fallback):
        with expect_refused():
            run_op(logits, label, *margins, 64.0, margin_fallback=margin_fallback)
        return
    for reduction in ("sum", "none"):
        loss, softmax, grad = run_op(
            logits, label, *margins, 64.0, reduction=reduction, margin_fallback=margin_fallback
        )
        assert torch.isfinite(loss).all() and torch.isfinite(softmax).all()
        assert torch.isfinite(grad).all()
    ref_loss, ref_softmax, ref_grad = margin_ce_reference(
        logits, label, *margins, 64.0, reduction="none", margin_fallback=margin_fallback
    )
    assert_close(loss, ref_loss, dtype)
    assert_close(softmax, ref_softmax, dtype)
    assert_close(grad / 64.0, ref_grad / 64.0, dtype)


def test_float16_gradient_overflow_is_inf_so_that_grad_scaler_backs_off():
    # GradScaler's first step: loss × 2^16. The true gradient of the fp16 cosines,
    # 2^16 · s · (p − y) / N, exceeds 65504: it must come back inf (as with F.cross_entropy under
    # autocast, which computes in float32 and casts the gradient back to float16), not clipped.
    logits, label = cosines(2, 5, torch.float16), labels(2, 5)
    loss_scale = 2.0**16
    leaf = logits.clone().requires_grad_()
    (margin_cross_entropy(leaf, label, 1.0, 0.0, 0.0, 64.0) * loss_scale).backward()
    native = logits.clone().requires_grad_()
    (F.cross_entropy(64.0 * native.float(), label) * loss_scale).backward()
    _loss, _softmax, true_grad = margin_ce_reference(logits, label, 1.0, 0.0, 0.0, 64.0)
    overflow = (true_grad * loss_scale).abs() > torch.finfo(torch.float16).max
    assert overflow.any()  # the premise
    assert torch.isinf(native.grad[overflow]).all()
    assert torch.isinf(leaf.grad[overflow]).all()
    assert torch.isfinite(leaf.grad[~overflow]).all()
    # In a GradScaler loop (fp32 master weights, fp16 cosines): the step is skipped and the
    # scale halved.
    weights = torch.nn.Parameter(logits.float())
    optimizer = torch.optim.SGD([weights], lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=loss_scale)
    scaler.scale(margin_cross_entropy(weights.half(), label, 1.0, 0.0, 0.0, 64.0)).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(weights.detach(), logits.float()) and scaler.get_scale() == loss_scale / 2


def test_half_precision_gradient_within_range_matches_reference():
    logits, label = cosines(3, 4, torch.float16), labels(3, 4)
    _loss, _softmax, grad = run_op(
        logits, label, reduction="none", grad_output=torch.full((3,), 100.0)
    )
    _l, _s, ref_grad = margin_ce_reference(
        logits, label, 1.0, 0.5, 0.0, 64.0, reduction="none", grad_output=torch.full((3,), 100.0)
    )
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(
        grad.double(), ref_grad.to(torch.float16).double(), rtol=2e-3, atol=1e-2
    )


def test_softmax_is_not_differentiable_and_not_returned_without_request():
    logits = cosines(3, 4).requires_grad_()
    loss, softmax = margin_cross_entropy(logits, labels(3, 4), return_softmax=True)
    assert loss.requires_grad and not softmax.requires_grad
    assert isinstance(margin_cross_entropy(logits, labels(3, 4)), torch.Tensor)


def test_default_margins_are_arcface_at_scale_64():
    logits, label = cosines(5, 6), labels(5, 6)
    expected = margin_ce_reference(logits, label, 1.0, 0.5, 0.0, 64.0)[0]
    torch.testing.assert_close(margin_cross_entropy(logits, label), expected)


@pytest.mark.parametrize(
    ("margins", "margin_fallback", "grad_mode"),
    [
        ((1.0, 0.5, 0.0), "none", "exact"),
        ((1.0, 0.0, 0.35), "none", "exact"),
        ((1.0, 0.2, 0.1), "arcface", "exact"),
        ((1.35, 0.2, 0.1), "monotonic", "exact"),
        ((2.0, 0.0, 0.0), "easy", "exact"),
    ],
)
def test_gradcheck_float64(margins, margin_fallback, grad_mode):
    logits = (cosines(5, 6) * 0.9).requires_grad_()  # away from ±1 (the floored derivative)
    label = torch.tensor([0, 5, -100, 2, 2])

    def loss_fn(x):
        return margin_cross_entropy(
            x,
            label,
            *margins,
            8.0,
            reduction="none",
            margin_fallback=margin_fallback,
            grad_mode=grad_mode,
        )

    assert torch.autograd.gradcheck(loss_fn, (logits,))


def _training_step(linear, class_weight, inputs, label):
    cos = F.normalize(linear(inputs), dim=1) @ F.normalize(class_weight, dim=1).T
    loss = margin_cross_entropy(cos, label, 1.0, 0.3, 0.1, 16.0, ignore_index=-1)
    loss.backward()
    return loss.detach()


def _loss_only(linear, class_weight, inputs, label):
    cos = F.normalize(linear(inputs), dim=1) @ F.normalize(class_weight, dim=1).T
    return margin_cross_entropy(cos, label, 1.0, 0.3, 0.1, 16.0, ignore_index=-1)


def _compile_setup():
    linear = torch.nn.Linear(5, 7, bias=False)
    class_weight = torch.nn.Parameter(torch.randn(11, 7))
    inputs, label = torch.randn(8, 5), torch.randint(0, 11, (8,))
    label[3] = -1
    return linear, class_weight, inputs, label


def _eager_grads(linear, class_weight, inputs, label):
    loss = _loss_only(linear, class_weight, inputs, label)
    grads = torch.autograd.grad(loss, [linear.weight, class_weight])
    return loss.detach(), grads


def test_compile_fullgraph_forward_and_backward():
    # The whole forward (static validation included) is one graph; AOTAutograd traces the
    # registered backward op into the backward graph.
    torch._dynamo.reset()
    linear, class_weight, inputs, label = _compile_setup()
    expected_loss, expected_grads = _eager_grads(linear, class_weight, inputs, label)
    compiled = torch.compile(_loss_only, fullgraph=True, backend="aot_eager")
    loss = compiled(linear, class_weight, inputs, label)
    grads = torch.autograd.grad(loss, [linear.weight, class_weight])
    torch.testing.assert_close(loss, expected_loss)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph_training_step_with_backward(monkeypatch, backend):
    # A training step with loss.backward() inside the compiled function.
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "trace_autograd_ops", True, raising=False)
    linear, class_weight, inputs, label = _compile_setup()
    expected_loss, expected_grads = _eager_grads(linear, class_weight, inputs, label)
    compiled = torch.compile(_training_step, fullgraph=True, backend=backend)
    loss = compiled(linear, class_weight, inputs, label)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(linear.weight.grad, expected_grads[0])
    torch.testing.assert_close(class_weight.grad, expected_grads[1])


@settings(max_examples=30, deadline=None)
@given(
    n_rows=st.integers(1, 12),
    n_cols=st.integers(1, 40),
    m1=st.floats(0.5, 4.0),
    m2=st.floats(0.0, 0.8),
    m3=st.floats(0.0, 0.4),
    scale=st.floats(1.0, 64.0),
    margin_fallback=st.sampled_from(["none", "arcface", "easy", "monotonic"]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(n_rows, n_cols, m1, m2, m3, scale, margin_fallback, seed):
    logits = cosines(n_rows, n_cols, seed=seed)
    label = labels(n_rows, n_cols, seed=seed + 1)
    label[::3] = -100
    options = {"reduction": "none", "margin_fallback": margin_fallback}
    if refused_fallback(m1, margin_fallback):
        with expect_refused():
            run_op(logits, label, m1, m2, m3, scale, **options)
        return
    loss, softmax, grad = run_op(logits, label, m1, m2, m3, scale, **options)
    ref_loss, ref_softmax, ref_grad = margin_ce_reference(
        logits, label, m1, m2, m3, scale, **options
    )
    assert_close(loss, ref_loss, torch.float64)
    assert_close(softmax, ref_softmax, torch.float64)
    assert_close(grad / scale, ref_grad / scale, torch.float64)
    # Rows sum to 1, losses are non-negative.
    torch.testing.assert_close(softmax.sum(1), torch.ones(n_rows, dtype=torch.float64))
    assert torch.all(loss >= 0)


def test_loss_of_a_confident_row_is_tiny_not_zero():
    # softplus form: a loss of ~e^-40 is represented, not cancelled to 0.
    logits = torch.tensor([[0.9, -0.5, -0.6]], dtype=torch.float64)
    loss = margin_cross_entropy(logits, torch.tensor([0]), 1.0, 0.0, 0.0, 64.0, reduction="none")
    expected = math.log1p(math.exp(64 * -0.5 - 64 * 0.9) + math.exp(64 * -0.6 - 64 * 0.9))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
