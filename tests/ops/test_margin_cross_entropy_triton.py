"""``margin_cross_entropy(..., impl="triton")`` against the float64 reference.

Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; see
``tests/ops/triton_setup.py`` for when that is possible (the tests are skipped, saying why, if not).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.float64_margin import margin_ce_reference
from tests.ops.test_margin_cross_entropy import assert_close, cosines, labels, run_op
from tests.ops.triton_setup import DEVICE, TRITON_MARKS

pytestmark = [
    *TRITON_MARKS,
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated"),
]


def run_triton(logits, label, *args, **kwargs):
    loss, softmax, grad = run_op(
        logits.to(DEVICE), label.to(DEVICE), *args, impl="triton", **kwargs
    )
    return loss.cpu(), softmax.cpu(), grad.cpu()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(
    "margins", [(1.0, 0.5, 0.0), (1.0, 0.0, 0.35), (1.2, 0.3, 0.1)], ids=["arc", "cos", "combined"]
)
def test_odd_sizes_match_float64_reference(dtype, margins):
    logits, label = cosines(17, 4099, dtype), labels(17, 4099)
    label[[4, 11]] = -100
    loss, softmax, grad = run_triton(logits, label, *margins, 64.0, reduction="none")
    ref_loss, ref_softmax, ref_grad = margin_ce_reference(
        logits, label, *margins, 64.0, reduction="none"
    )
    assert softmax.dtype == dtype and grad.dtype == dtype
    assert_close(loss, ref_loss, dtype)
    assert_close(softmax, ref_softmax, dtype)
    assert_close(grad / 64.0, ref_grad / 64.0, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_triton_matches_torch_path(dtype):
    logits, label = cosines(17, 4099, dtype), labels(17, 4099)
    options = {"reduction": "mean", "margin_fallback": "arcface"}
    triton_result = run_triton(logits, label, 1.0, 0.5, 0.0, 64.0, **options)
    torch_result = run_op(logits, label, 1.0, 0.5, 0.0, 64.0, impl="torch", **options)
    for actual, expected in zip(triton_result, torch_result, strict=True):
        torch.testing.assert_close(
            actual, expected, rtol=1e-2 if dtype == torch.bfloat16 else 1e-3, atol=1e-5
        )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_ignore_index_and_fallbacks(reduction):
    logits, label = cosines(9, 33), labels(9, 33)
    label[[0, 5]] = -100
    for fallback, grad_mode in [("easy", "exact"), ("none", "straight_through")]:
        options = {"reduction": reduction, "margin_fallback": fallback, "grad_mode": grad_mode}
        actual = run_triton(logits, label, 1.35, 0.2, 0.1, 30.0, **options)
        expected = margin_ce_reference(logits, label, 1.35, 0.2, 0.1, 30.0, **options)
        for a, e in zip(actual, expected, strict=True):
            assert_close(a, e, torch.float64)


def test_all_rows_ignored():
    loss, _softmax, grad = run_triton(cosines(3, 7), torch.full((3,), -100))
    assert loss.item() == 0 and torch.all(grad == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cosines_at_plus_minus_one(dtype):
    # Finite loss and softmax; the gradient is finite wherever the true one fits in the dtype
    # (the floored slope at x = -1 times s = 64 exceeds float16's 65504 in row 1: inf there).
    label = torch.tensor([0, 1, 2])
    logits = torch.zeros(3, 5, dtype=dtype)
    logits[0, 0] = 1.0
    logits[1, 1] = -1.0
    logits[2, :] = 1.0
    loss, softmax, grad = run_triton(logits, label, 1.35, 0.5, 0.1, 64.0, reduction="sum")
    assert torch.isfinite(loss).all() and torch.isfinite(softmax).all()
    _loss, _softmax, ref_grad = margin_ce_reference(
        logits, label, 1.35, 0.5, 0.1, 64.0, reduction="sum"
    )
    fits = ref_grad.abs() <= torch.finfo(dtype).max
    assert torch.isfinite(grad[fits]).all() and torch.isinf(grad[~fits]).all()
    assert_close(grad[fits] / 64.0, ref_grad[fits] / 64.0, dtype)


def test_opcheck_with_triton_kernels():
    from marginkit.ops.target_logsumexp import target_logsumexp_fwd

    logits = cosines(5, 9).to(DEVICE).requires_grad_()
    label = torch.tensor([0, 3, 8, -100, 2], device=DEVICE)
    categories = torch.arange(9, device=DEVICE) % 2, torch.tensor([0, 1, 0, 1, 0], device=DEVICE)
    args = (logits, label, 16.0, -100, True, *categories, "", "triton")
    torch.library.opcheck(target_logsumexp_fwd, args)
