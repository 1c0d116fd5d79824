"""``target_logsumexp`` (``torch.ops.marginkit.target_logsumexp_{fwd,bwd}``) against float64.

The references are written here: a loop over the rows for the values, and float64 autograd
through a plain masked ``logsumexp`` / gather / masked sum for the gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from marginkit.ops import (
    _cpu,
    arccos_floored,
    combined_margin_logit,
    margin_cross_entropy,
    margin_softmax_loss,
    target_logsumexp,
)
from marginkit.ops.target_logsumexp import target_logsumexp_bwd, target_logsumexp_fwd
from tests.helpers.float64_margin import margin_ce_reference
from tests.ops.triton_setup import DEVICE, requires_triton_kernels

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
# (rtol, atol) against float64, by input dtype (the maths is float32 for half precision: only
# the rounding of the stored gradient is the dtype's).
VECTOR_TOLERANCE = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-5, 1e-5),
    torch.bfloat16: (1e-5, 1e-5),
}
GRAD_TOLERANCE = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-3, 1e-4),
    torch.bfloat16: (1e-2, 1e-3),
}


def cosines(n_rows, n_cols, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n_rows, n_cols, generator=generator, dtype=torch.float64) * 2 - 1
    return x.to(dtype)


def problem(n_rows=9, n_cols=13, dtype=torch.float64, seed=0):
    """Cosines, labels with ignored rows, categories and upstream gradients."""
    generator = torch.Generator().manual_seed(seed + 1)
    x = cosines(n_rows, n_cols, dtype, seed)
    label = torch.randint(0, n_cols, (n_rows,), generator=generator)
    label[::4] = -100
    column_category = torch.randint(0, 3, (n_cols,), generator=generator)
    row_category = torch.randint(0, 3, (n_rows,), generator=generator)
    grads = torch.randn(3, n_rows, generator=generator, dtype=torch.float64)
    return x, label, column_category, row_category, grads


def reference(x, label, scale, column_category=None, row_category=None, ignore_index=-100):
    """float64 ``(R, c, S)`` by autograd-able masked reductions (differentiable in ``x``)."""
    n_cols = x.shape[1]
    valid = label != ignore_index
    is_target = F.one_hot(label.clamp(min=0), n_cols).bool() & valid[:, None]
    lse_rest = torch.logsumexp((scale * x).masked_fill(is_target, -math.inf), dim=1)
    cos_target = (x * is_target).sum(dim=1)
    keep = ~is_target
    if column_category is not None:
        keep = keep & (column_category[None, :] == row_category[:, None])
    return lse_rest, cos_target, (x * keep).sum(dim=1)


def run(x, label, scale, grads, **kwargs):
    """Values and the gradient of ``Σ g_R R + g_c c + g_S S`` through the op."""
    leaf = x.detach().clone().requires_grad_()
    result = target_logsumexp(leaf, label, scale, **kwargs)
    total = (result.lse_rest * grads[0].to(result.lse_rest.dtype)).sum()
    total = total + (result.cos_target * grads[1].to(result.cos_target.dtype)).sum()
    if result.row_sum is not None:
        total = total + (result.row_sum * grads[2].to(result.row_sum.dtype)).sum()
    total.backward()
    return result, leaf.grad


def expected(x, label, scale, grads, row_sum, column_category=None, row_category=None):
    leaf = x.detach().double().clone().requires_grad_()
    lse_rest, cos_target, total = reference(leaf, label, scale, column_category, row_category)
    loss = (lse_rest * grads[0]).sum() + (cos_target * grads[1]).sum()
    if row_sum:
        loss = loss + (total * grads[2]).sum()
    loss.backward()
    return (lse_rest.detach(), cos_target.detach(), total.detach()), leaf.grad


def assert_matches(result, grad, ref_values, ref_grad, dtype, row_sum):
    rtol, atol = VECTOR_TOLERANCE[dtype]
    accumulation = torch.float64 if dtype == torch.float64 else torch.float32
    names = ("lse_rest", "cos_target", "row_sum")
    for name, actual, wanted in zip(names, result, ref_values, strict=True):
        if name == "row_sum" and not row_sum:
            assert actual is None
            continue
        assert actual.dtype == accumulation, name
        torch.testing.assert_close(actual.double(), wanted, rtol=rtol, atol=atol, msg=name)
    rtol, atol = GRAD_TOLERANCE[dtype]
    assert grad.dtype == dtype
    torch.testing.assert_close(grad.double(), ref_grad.to(dtype).double(), rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# Values and gradients (chunked-torch kernels)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row_sum", ["none", "all", "category"])
@pytest.mark.parametrize("chunk_bytes", [None, 200])
def test_values_and_gradient_match_float64(monkeypatch, dtype, row_sum, chunk_bytes):
    if chunk_bytes is not None:
        monkeypatch.setattr(_cpu, "_CHUNK_BYTES", chunk_bytes)
    x, label, column_category, row_category, grads = problem(dtype=dtype)
    categories = {}
    if row_sum == "category":
        categories = {"column_category": column_category, "row_category": row_category}
    with_sum = row_sum != "none"
    result, grad = run(x, label, 16.0, grads, row_sum=with_sum, **categories)
    ref_values, ref_grad = expected(x, label, 16.0, grads, with_sum, **categories)
    assert_matches(result, grad, ref_values, ref_grad, dtype, with_sum)


def test_ignored_rows_exclude_nothing_and_have_zero_target():
    x, label = cosines(3, 4), torch.tensor([7, 2, 7])
    result = target_logsumexp(x, label, 2.0, row_sum=True, ignore_index=7)
    for row in (0, 2):
        assert result.lse_rest[row].item() == pytest.approx(torch.logsumexp(2.0 * x[row], 0))
        assert result.cos_target[row].item() == 0.0
        assert result.row_sum[row].item() == pytest.approx(x[row].sum().item())


def test_unused_outputs_get_no_gradient_and_label_shape_n_by_one():
    x, label = cosines(5, 6).requires_grad_(), torch.tensor([[0], [5], [1], [1], [2]])
    target_logsumexp(x, label, 4.0).cos_target.sum().backward()
    expected_grad = F.one_hot(label[:, 0], 6).double()
    assert torch.equal(x.grad, expected_grad)


def test_single_class_rows_have_minus_inf_rest_and_finite_gradient():
    x = torch.tensor([[0.5], [0.25]], dtype=torch.float64, requires_grad=True)
    result = target_logsumexp(x, torch.tensor([0, 0]), 8.0)
    assert result.lse_rest.tolist() == [-math.inf, -math.inf]
    loss = margin_softmax_loss(result.lse_rest, 8.0 * result.cos_target).sum()
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_computed_in_float32(dtype):
    # No raw dtype error whatever mix: the vectors are float32, the gradient has the input dtype.
    x, label, _cc, _rc, grads = problem(dtype=dtype)
    result, grad = run(x, label, 30.0, grads.float(), row_sum=True)
    assert result.lse_rest.dtype == torch.float32 and grad.dtype == dtype


# ---------------------------------------------------------------------------------------------
# torch.library: opcheck, gradcheck, torch.compile
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("row_sum", ["none", "all", "category"])
def test_opcheck_forward(dtype, row_sum):
    x, label, column_category, row_category, _ = problem(6, 7, dtype)
    if row_sum != "category":
        column_category = row_category = None
    args = (
        x.requires_grad_(),
        label,
        16.0,
        -100,
        row_sum != "none",
        column_category,
        row_category,
        "",
        None,
    )
    torch.library.opcheck(target_logsumexp_fwd, args)


def test_opcheck_backward():
    x, label, column_category, row_category, grads = problem(6, 7)
    lse_rest, _cos, _sum, target_col = target_logsumexp_fwd(
        x, label, 16.0, -100, True, column_category, row_category, "", None
    )
    for categories in ((column_category, row_category), (None, None)):
        args = (x, target_col, lse_rest, *grads, *categories, 16.0, None)
        torch.library.opcheck(target_logsumexp_bwd, args)
    args = (x, target_col, lse_rest, grads[0], grads[1], None, None, None, 16.0, None)
    torch.library.opcheck(target_logsumexp_bwd, args)


@pytest.mark.parametrize("row_sum", ["none", "all", "category"])
def test_gradcheck_float64(row_sum):
    x, label, column_category, row_category, _ = problem(5, 6)
    categories = {}
    if row_sum == "category":
        categories = {"column_category": column_category, "row_category": row_category}

    def outputs(cos):
        result = target_logsumexp(cos, label, 3.0, row_sum=row_sum != "none", **categories)
        return tuple(part for part in result if part is not None)

    assert torch.autograd.gradcheck(outputs, (x.requires_grad_(),))


def head_like_loss(embeddings, weight, label):
    """A head's composition: cosines, target_logsumexp, a per-row margin, the softplus loss."""
    cos = F.normalize(embeddings, dim=1) @ F.normalize(weight, dim=1).T
    lse_rest, cos_target, row_sum = target_logsumexp(cos, label, 16.0, row_sum=True)
    margin = 0.2 + 0.1 * torch.sigmoid(embeddings.norm(dim=1))  # per-sample, differentiable
    phi = combined_margin_logit(cos_target, arccos_floored(cos_target), 1.0, margin, 0.05)
    loss = margin_softmax_loss(
        lse_rest, 16.0 * phi, smoothing=0.1, row_sum_rest=16.0 * row_sum, smoothing_classes=7.0
    )
    return torch.where(label != -100, loss, 0.0).mean()


def test_compile_fullgraph_head_like_composition():
    # aot_eager: the graph capture and the registered backward (the inductor backend is
    # exercised by test_margin_cross_entropy's slow test; here it would cost ~30 s).
    backend = "aot_eager"
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(8, 5, generator=generator, requires_grad=True)
    weight = torch.randn(7, 5, generator=generator, requires_grad=True)
    label = torch.tensor([0, 6, 2, -100, 3, 3, 1, 5])
    expected_loss = head_like_loss(embeddings, weight, label)
    expected_grads = torch.autograd.grad(expected_loss, [embeddings, weight])
    compiled = torch.compile(head_like_loss, fullgraph=True, backend=backend)
    loss = compiled(embeddings, weight, label)
    grads = torch.autograd.grad(loss, [embeddings, weight])
    torch.testing.assert_close(loss, expected_loss)
    for grad, wanted in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, wanted)


def test_ops_are_registered_per_device():
    for name in ("target_logsumexp_fwd", "target_logsumexp_bwd"):
        op = getattr(torch.ops.marginkit, name).default
        # The default kernel (CPU and any other device) and a CUDA kernel of its own.
        has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
        assert has_kernel(op.name(), "CompositeExplicitAutograd")
        assert has_kernel(op.name(), "CUDA")


# ---------------------------------------------------------------------------------------------
# Memory: forward + backward allocate one N×C buffer (the gradient)
# ---------------------------------------------------------------------------------------------


def allocations(step):
    """Sizes (bytes) of every CPU allocation made while ``step`` runs (torch's profiler)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    sizes = []

    def walk(nodes):
        for node in nodes:
            if node.tag == _EventType.Allocation and node.extra_fields.alloc_size > 0:
                sizes.append(node.extra_fields.alloc_size)
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    return sizes


@pytest.mark.parametrize(
    "loss_fn",
    [
        pytest.param(
            lambda x, label: margin_softmax_loss(*target_logsumexp(x, label, 64.0)[:2]).sum(),
            id="target_logsumexp",
        ),
        pytest.param(lambda x, label: margin_cross_entropy(x, label), id="margin_cross_entropy"),
    ],
)
def test_forward_and_backward_allocate_one_n_by_c_buffer(loss_fn):
    n_rows, n_cols = 256, 8192  # 8 MiB in float32: twice the kernels' chunk scratch
    x = (torch.rand(n_rows, n_cols) * 0.6 - 0.3).requires_grad_()
    label = torch.randint(0, n_cols, (n_rows,))

    def step():
        x.grad = None
        loss_fn(x, label).backward()

    step()  # warm-up (first-call imports)
    sizes = allocations(step)
    matrix_bytes = n_rows * n_cols * 4
    assert sum(size >= matrix_bytes for size in sizes) == 1  # the gradient
    assert max(size for size in sizes if size < matrix_bytes) <= _cpu._CHUNK_BYTES
    # Brute force for contrast: plain cross-entropy allocates several.
    plain = allocations(lambda: F.cross_entropy(64.0 * x, label).backward())
    assert sum(size >= matrix_bytes for size in plain) >= 3


# ---------------------------------------------------------------------------------------------
# The Triton kernels through the op (Triton's interpreter on CPU tensors without a GPU)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row_sum", ["none", "category"])
@requires_triton_kernels
def test_triton_values_and_gradient_match_float64(dtype, row_sum):
    device = DEVICE
    x, label, column_category, row_category, grads = problem(7, 37, dtype)
    categories = {}
    if row_sum == "category":
        categories = {
            "column_category": column_category.to(device),
            "row_category": row_category.to(device),
        }
    with_sum = row_sum != "none"
    result, grad = run(
        x.to(device),
        label.to(device),
        30.0,
        grads.to(device),
        row_sum=with_sum,
        impl="triton",
        **categories,
    )
    ref_values, ref_grad = expected(x, label, 30.0, grads, with_sum, column_category, row_category)
    result = tuple(None if part is None else part.cpu() for part in result)
    assert_matches(result, grad.cpu(), ref_values, ref_grad, dtype, with_sum)


@requires_triton_kernels
def test_triton_margin_cross_entropy_float16_overflow_is_inf():
    device = DEVICE
    x = cosines(2, 5, torch.float16).to(device).requires_grad_()
    label = torch.tensor([1, 3], device=device)
    (margin_cross_entropy(x, label, 1.0, 0.0, 0.0, 64.0, impl="triton") * 2.0**16).backward()
    _loss, _softmax, true_grad = margin_ce_reference(x.detach().cpu(), label.cpu(), 1, 0, 0, 64.0)
    overflow = (true_grad * 2.0**16).abs() > 65504
    assert overflow.any()
    assert torch.isinf(x.grad.cpu()[overflow]).all()
    assert torch.isfinite(x.grad.cpu()[~overflow]).all()
