"""``linear_margin_cross_entropy(..., impl="triton")`` against the float64 materialised reference.

Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors (see
``tests/ops/triton_setup.py``). Sizes stay tiny (N, C, D ≤ 32): the
interpreter runs every tile as numpy calls.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.float64_margin import linear_margin_ce_reference
from tests.ops.test_linear_margin_cross_entropy import assert_matches, make_inputs, run_op
from tests.ops.triton_setup import DEVICE, TRITON_MARKS

pytestmark = [
    *TRITON_MARKS,
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
]

# (rtol, atol relative to the largest reference value) by input dtype.
TOLERANCES = {
    torch.float64: (1e-9, 1e-11),
    torch.float32: (1e-4, 1e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


def run_triton(embeddings, weight, label, *args, **kwargs):
    result = run_op(
        embeddings.to(DEVICE), weight.to(DEVICE), label.to(DEVICE), *args, impl="triton", **kwargs
    )
    return tuple(tensor.cpu() for tensor in result)


def assert_close_scaled(result, reference, rtol, atol):
    for got, want in zip(result, reference, strict=True):
        scale = max(want.abs().max().item(), 1e-30)
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize(
    ("margins", "fallback"),
    [((1.0, 0.5, 0.0), "none"), ((1.0, 0.0, 0.35), "easy"), ((1.2, 0.3, 0.1), "monotonic")],
    ids=["arcface", "cosface", "combined"],
)
def test_triton_matches_reference(dtype, margins, fallback):
    # 20 × 37 × 19: several tiles of 16 in every dimension, none of them full.
    embeddings, weight, label = make_inputs(20, 37, 19, dtype=dtype)
    label[4] = -100
    result = run_triton(embeddings, weight, label, *margins, 32.0, margin_fallback=fallback)
    reference = linear_margin_ce_reference(
        embeddings, weight, label, *margins, 32.0, margin_fallback=fallback
    )
    rtol, atol = TOLERANCES[dtype]
    assert result[1].dtype == dtype and result[2].dtype == dtype
    assert_close_scaled(result, reference, rtol, atol)


@pytest.mark.parametrize(
    ("n_rows", "n_classes", "dim"), [(1, 9, 4), (5, 1, 3), (32, 32, 32)], ids=["N=1", "C=1", "32"]
)
def test_triton_shapes_reduction_and_straight_through(n_rows, n_classes, dim):
    embeddings, weight, label = make_inputs(n_rows, n_classes, dim, seed=n_rows)
    options = {"reduction": "sum", "grad_mode": "straight_through"}
    result = run_triton(embeddings, weight, label, 1.0, 0.5, 0.0, 64.0, **options)
    reference = linear_margin_ce_reference(
        embeddings, weight, label, 1.0, 0.5, 0.0, 64.0, **options
    )
    assert_matches(result, reference, rtol=1e-9, atol=1e-11)


def test_triton_kernels_match_the_chunked_torch_kernels_with_splits_and_tiles():
    """The forward's split combine and non-square tiles, kernel against kernel."""
    from marginkit.ops import _linear_cpu, _linear_triton

    embeddings, weight, label = make_inputs(18, 31, 20)
    target = label.clone()
    target[[2, 7]] = -1
    inv_e = 1 / embeddings.norm(dim=1)
    inv_w = 1 / weight.norm(dim=1)
    args = (embeddings, weight, inv_e, inv_w, target, 20.0)
    expected = _linear_cpu.row_logsumexp_linear(*args)
    for tiles, splits in (((16, 16, 16, 1), 2), ((16, 32, 16, 1), 1), ((32, 16, 32, 1), 3)):
        got = _linear_triton.row_logsumexp_linear(*args, tiles=tiles, num_splits=splits)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    coef = torch.linspace(-1.0, 1.0, 18, dtype=torch.float64)
    want = _linear_cpu.row_logsumexp_linear_backward(*args[:5], expected, coef, 20.0)
    got = _linear_triton.row_logsumexp_linear_backward(
        *args[:5], expected, coef, 20.0, tiles=(16, 32, 16, 1)
    )
    for tensor, reference in zip(got, want, strict=True):
        torch.testing.assert_close(tensor, reference, rtol=1e-12, atol=1e-12)
