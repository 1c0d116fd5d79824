"""``combined_margin`` / ``CombinedMarginLoss`` (OneFlow semantics) against a float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from marginkit.losses import CombinedMarginLoss
from marginkit.ops import combined_margin, margin_cross_entropy
from marginkit.ops.combined_margin import combined_margin_bwd, combined_margin_fwd
from tests.helpers.fallbacks import expect_refused, refused_fallback
from tests.helpers.float64_margin import combined_margin_reference

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")

MARGINS = [(1.0, 0.5, 0.0), (1.0, 0.0, 0.35), (1.35, 0.0, 0.0), (1.0, 0.3, 0.2), (1.0, 0.0, 0.0)]


def cosines(n_rows, n_cols, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n_rows, n_cols, generator=generator, dtype=torch.float64) * 1.9 - 0.95
    return x.to(dtype)


@pytest.mark.parametrize("margins", MARGINS)
@pytest.mark.parametrize("margin_fallback", ["none", "arcface", "easy", "monotonic"])
@pytest.mark.parametrize("grad_mode", ["exact", "straight_through"])
def test_values_and_gradient_match_reference(margins, margin_fallback, grad_mode):
    logits = cosines(8, 6)
    label = torch.tensor([0, 5, 2, -100, 3, 3, 1, 4])
    # Target cosines over [-0.95, 0.95], so that every fallback region is reached.
    logits[torch.arange(8), label.clamp(min=0)] = torch.linspace(
        -0.95, 0.95, 8, dtype=torch.float64
    )
    leaf = logits.clone().requires_grad_()
    options = {"margin_fallback": margin_fallback, "grad_mode": grad_mode}
    if refused_fallback(margins[0], margin_fallback):
        with expect_refused():
            combined_margin(leaf, label, *margins, **options)
        return
    out = combined_margin(leaf, label, *margins, **options)
    grad_out = torch.randn_like(logits)
    out.backward(grad_out)
    expected, slope = combined_margin_reference(logits, label, *margins, **options)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(leaf.grad, grad_out * slope, rtol=1e-12, atol=1e-12)
    assert torch.equal(out[3], logits[3])  # ignored row copied


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_precision_is_computed_in_float32(dtype):
    logits, label = cosines(5, 7, dtype), torch.tensor([0, 6, 2, 2, 1])
    out = combined_margin(logits, label[:, None], 1.0, 0.5, 0.0)
    expected, _ = combined_margin_reference(logits, label, 1.0, 0.5, 0.0)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cosines_at_plus_minus_one_have_finite_values_and_gradients(dtype):
    logits = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=dtype, requires_grad=True)
    label = torch.tensor([0, 1])
    out = combined_margin(logits, label, 1.35, 0.5, 0.1)
    out.backward(torch.ones_like(out))
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
    expected, slope = combined_margin_reference(logits, label, 1.35, 0.5, 0.1)
    torch.testing.assert_close(out.double(), expected.to(dtype).double())
    torch.testing.assert_close(logits.grad.double(), slope.to(dtype).double(), rtol=1e-2, atol=0)


def test_float16_gradient_overflow_is_inf_not_clipped():
    # φ'(−1) ≈ −1000 (the floored slope) times 100 is past float16's 65504: inf, like native ops.
    logits = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float16, requires_grad=True)
    out = combined_margin(logits, torch.tensor([0, 1]), 1.35, 0.5, 0.1)
    out.backward(torch.full_like(out, 100.0))
    _expected, slope = combined_margin_reference(logits, torch.tensor([0, 1]), 1.35, 0.5, 0.1)
    overflow = (100.0 * slope).abs() > torch.finfo(torch.float16).max
    assert overflow.any()
    assert torch.isinf(logits.grad[overflow]).all() and torch.isfinite(logits.grad[~overflow]).all()


def test_scaled_cross_entropy_of_combined_margin_equals_fused_op():
    logits, label = cosines(6, 9), torch.tensor([0, 8, 3, 3, -100, 1])
    fused_input = logits.clone().requires_grad_()
    composed_input = logits.clone().requires_grad_()
    fused = margin_cross_entropy(fused_input, label, 1.2, 0.3, 0.1, 30.0)
    composed = F.cross_entropy(30.0 * combined_margin(composed_input, label, 1.2, 0.3, 0.1), label)
    fused.backward()
    composed.backward()
    torch.testing.assert_close(fused, composed)
    torch.testing.assert_close(fused_input.grad, composed_input.grad)


def test_module_matches_function_and_reprs():
    module = CombinedMarginLoss(1.0, 0.5, 0.0)
    logits, label = cosines(4, 3), torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(module(logits, label), combined_margin(logits, label, 1.0, 0.5))
    assert repr(module) == "CombinedMarginLoss(m1=1, m2=0.5, m3=0)"


def test_gradcheck():
    logits = cosines(4, 5).requires_grad_()
    label = torch.tensor([0, 4, -100, 2])
    assert torch.autograd.gradcheck(
        lambda x: combined_margin(x, label, 1.0, 0.2, 0.1, margin_fallback="arcface"), (logits,)
    )


def test_opcheck():
    from marginkit.ops.combined_margin import target_cosine

    logits = cosines(5, 6).requires_grad_()
    label = torch.tensor([0, 5, -100, 2, 2])
    torch.library.opcheck(target_cosine, (logits.detach(), label, -100))
    cos_target, target_col = target_cosine(logits.detach(), label, -100)
    phi, dphi = torch.cos(cos_target), torch.sin(cos_target)
    torch.library.opcheck(combined_margin_fwd, (logits, target_col, phi, dphi))
    torch.library.opcheck(
        combined_margin_bwd, (torch.randn(5, 6, dtype=torch.float64), target_col, dphi)
    )


def test_compile_fullgraph():
    torch._dynamo.reset()
    logits = cosines(4, 5).requires_grad_()
    label = torch.tensor([0, 4, 1, 2])

    def loss_fn(x):
        return F.cross_entropy(16.0 * CombinedMarginLoss(1.0, 0.5, 0.0)(x, label), label)

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(logits), logits)
    (expected,) = torch.autograd.grad(loss_fn(logits), logits)
    torch.testing.assert_close(grad, expected)
