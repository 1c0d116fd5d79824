"""``margin_cross_entropy(..., impl="triton")`` against the float64 reference.

Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. Triton fixes the mode
when ``@triton.jit`` decorates a kernel, i.e. when ``marginkit.ops._triton`` is first imported, so
``TRITON_INTERPRET=1`` is set here at collection time, before that import (the package imports it
lazily). If something imported it earlier in compiled mode, the tests are skipped with that reason.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers.run_if import has_module, requires_triton
from tests.ops.float64_reference import margin_ce_reference
from tests.ops.test_margin_cross_entropy import assert_close, cosines, labels, run_op

if has_module("triton") and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _triton_runnable() -> tuple[bool, str]:
    if not has_module("triton"):
        return False, "triton is not installed"
    from marginkit.ops import _triton

    if torch.cuda.is_available() or _triton.interpreter_enabled():
        return True, ""
    return False, (
        "no CUDA GPU, and marginkit.ops._triton was imported before TRITON_INTERPRET=1 was set "
        "(set it in the environment or in tests/conftest.py)"
    )


RUNNABLE, WHY_NOT = _triton_runnable()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = [
    pytest.mark.triton,
    requires_triton,
    pytest.mark.skipif(not RUNNABLE, reason=WHY_NOT or "triton not runnable"),
    # The interpreter evaluates log(0) on purpose (rows with every column excluded).
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning"),
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
def test_cosines_at_plus_minus_one_stay_finite(dtype):
    label = torch.tensor([0, 1, 2])
    logits = torch.zeros(3, 5, dtype=dtype)
    logits[0, 0] = 1.0
    logits[1, 1] = -1.0
    logits[2, :] = 1.0
    loss, softmax, grad = run_triton(logits, label, 1.35, 0.5, 0.1, 64.0, reduction="sum")
    assert torch.isfinite(loss).all() and torch.isfinite(softmax).all()
    assert torch.isfinite(grad).all()


def test_opcheck_with_triton_kernels():
    from marginkit.ops.margin_cross_entropy import margin_cross_entropy_fwd

    logits = cosines(5, 9).to(DEVICE).requires_grad_()
    label = torch.tensor([0, 3, 8, -100, 2], device=DEVICE)
    args = (logits, label, 1.0, 0.5, 0.0, 16.0, "none", "exact", -100, True, "", "triton")
    torch.library.opcheck(margin_cross_entropy_fwd, args)
