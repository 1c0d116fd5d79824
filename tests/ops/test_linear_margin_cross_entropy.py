"""The normalised-linear margin cross-entropy (CPU path) against a float64 materialised reference.

The reference is ``linear_margin_ce_reference`` of ``tests/helpers/float64_margin.py``, the
textbook computation: normalise, multiply into the full (N, C) cosine matrix, put the margin
logit (φ of the angle between the vectors, with the fallbacks) in the target column,
log-softmax, reduce, and let autograd differentiate it all in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from marginkit.ops import _linear_cpu, target_logsumexp
from marginkit.ops.linear_margin_cross_entropy import (
    linear_margin_cross_entropy,
    linear_target_logsumexp,
    linear_target_logsumexp_bwd,
    linear_target_logsumexp_fwd,
    linear_target_terms,
)
from tests.helpers.fallbacks import expect_refused, refused_fallback
from tests.helpers.float64_margin import angle_between, linear_margin_ce_reference

# torch.compile imports parts of torch.jit, which warn that they are deprecated (torch's own code).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")

MARGINS = {
    "arcface": (1.0, 0.5, 0.0),
    "cosface": (1.0, 0.0, 0.35),
    "combined": (1.2, 0.3, 0.1),
    "sphereface": (1.7, 0.0, 0.0),
}
FALLBACKS = ("none", "arcface", "easy", "monotonic")
F64 = {"rtol": 1e-9, "atol": 1e-11}


def make_inputs(n_rows, n_classes, dim, dtype=torch.float64, seed=0):
    """Embeddings and weights of assorted norms, labels with every class reachable."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n_rows, dim, generator=generator, dtype=torch.float64)
    embeddings *= torch.rand(n_rows, 1, generator=generator, dtype=torch.float64) * 3 + 0.2
    weight = torch.randn(n_classes, dim, generator=generator, dtype=torch.float64)
    weight *= torch.rand(n_classes, 1, generator=generator, dtype=torch.float64) * 2 + 0.1
    label = torch.randint(0, n_classes, (n_rows,), generator=generator)
    return embeddings.to(dtype), weight.to(dtype), label


def run_op(embeddings, weight, label, *args, grad_output=None, **kwargs):
    emb = embeddings.detach().clone().requires_grad_()
    wei = weight.detach().clone().requires_grad_()
    loss = linear_margin_cross_entropy(emb, wei, label, *args, **kwargs)
    loss.backward(torch.ones_like(loss) if grad_output is None else grad_output.to(loss.dtype))
    return loss.detach(), emb.grad, wei.grad


def assert_matches(result, reference, **tolerance):
    for got, want in zip(result, reference, strict=True):
        torch.testing.assert_close(got.double(), want, **tolerance)


# ---------------------------------------------------------------------------------------------
# Values and gradients against the materialised reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fallback", FALLBACKS)
@pytest.mark.parametrize("margin", MARGINS)
def test_every_margin_and_fallback_matches_reference(margin, fallback):
    embeddings, weight, label = make_inputs(9, 23, 6)
    args = (*MARGINS[margin], 30.0)
    if refused_fallback(MARGINS[margin][0], fallback):
        with expect_refused():
            run_op(embeddings, weight, label, *args, margin_fallback=fallback, chunk_size=5)
        return
    result = run_op(embeddings, weight, label, *args, margin_fallback=fallback, chunk_size=5)
    reference = linear_margin_ce_reference(
        embeddings, weight, label, *args, margin_fallback=fallback
    )
    assert_matches(result, reference, **F64)


@pytest.mark.parametrize(
    ("n_rows", "n_classes", "dim", "chunk_size"),
    [
        (7, 50, 5, 16),  # C not a multiple of the block
        (1, 9, 4, 4),  # N = 1
        (5, 1, 3, None),  # C = 1: nothing but the target
        (33, 70, 8, None),  # one block
        (6, 40, 3, 1),  # one class per block
    ],
)
@pytest.mark.parametrize("grad_mode", ["exact", "straight_through"])
def test_shapes_and_grad_modes_match_reference(n_rows, n_classes, dim, chunk_size, grad_mode):
    embeddings, weight, label = make_inputs(n_rows, n_classes, dim, seed=n_rows)
    args = (1.0, 0.5, 0.1, 64.0)
    result = run_op(embeddings, weight, label, *args, grad_mode=grad_mode, chunk_size=chunk_size)
    reference = linear_margin_ce_reference(embeddings, weight, label, *args, grad_mode=grad_mode)
    assert_matches(result, reference, **F64)


def test_row_blocks_match_reference(monkeypatch):
    """A budget small enough to split the rows too: 2-D blocks of rows × classes."""
    monkeypatch.setattr(_linear_cpu, "_BLOCK_BYTES", 8 * 8 * 8)
    assert _linear_cpu.block_shape(20, 30, 4, 8, chunk_size=8) == (8, 8)
    embeddings, weight, label = make_inputs(20, 30, 4)
    result = run_op(embeddings, weight, label, 1.0, 0.5, 0.0, 16.0, chunk_size=8)
    reference = linear_margin_ce_reference(embeddings, weight, label, 1.0, 0.5, 0.0, 16.0)
    assert_matches(result, reference, **F64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_and_ignore_index(reduction):
    embeddings, weight, label = make_inputs(8, 12, 5)
    label[[1, 6]] = -1
    grad_output = torch.linspace(0.5, 1.5, 8) if reduction == "none" else torch.tensor(0.7)
    args = (1.0, 0.0, 0.35, 32.0)
    options = {"reduction": reduction, "ignore_index": -1, "grad_output": grad_output}
    result = run_op(embeddings, weight, label, *args, **options, chunk_size=5)
    reference = linear_margin_ce_reference(embeddings, weight, label, *args, **options)
    assert_matches(result, reference, **F64)
    loss, grad_embeddings, _ = result
    assert torch.all(grad_embeddings[[1, 6]] == 0)
    if reduction == "none":
        assert torch.all(loss[[1, 6]] == 0)


def test_every_row_ignored_gives_zero_loss_and_gradient():
    embeddings, weight, _ = make_inputs(4, 6, 3)
    loss, grad_embeddings, grad_weight = run_op(
        embeddings, weight, torch.full((4,), -100), chunk_size=4
    )
    assert loss.item() == 0.0
    assert torch.all(grad_embeddings == 0) and torch.all(grad_weight == 0)


def test_label_of_shape_n_by_1_and_zero_weight_row():
    """(N, 1) labels; a zero class weight (as F.normalize: a zero unit vector) stays finite."""
    embeddings, weight, label = make_inputs(6, 9, 4)
    weight[4] = 0.0
    label[label == 4] = 0
    result = run_op(embeddings, weight, label[:, None], 1.0, 0.5, 0.0, 16.0)
    reference = linear_margin_ce_reference(embeddings, weight, label, 1.0, 0.5, 0.0, 16.0)
    assert_matches(result, reference, **F64)


def test_embedding_gradient_is_exact_at_tiny_target_angles():
    """θ = 1e-6 rad (and 1e-8): ArcFace's 1/sin θ cancels; the float64 gradient stays exact."""
    generator = torch.Generator().manual_seed(3)
    dim, n_classes = 6, 8
    weight = torch.randn(n_classes, dim, generator=generator, dtype=torch.float64)
    label = torch.tensor([2, 5, 2])
    rows = []
    for index, angle in zip(label.tolist(), (1e-6, 1e-8, 3e-7), strict=True):
        target = F.normalize(weight[index], dim=0)
        orthogonal = torch.randn(dim, generator=generator, dtype=torch.float64)
        orthogonal = F.normalize(orthogonal - (orthogonal @ target) * target, dim=0)
        rows.append(2.0 * (math.cos(angle) * target + math.sin(angle) * orthogonal))
    embeddings = torch.stack(rows)
    args = (1.0, 0.5, 0.0, 64.0)
    result = run_op(embeddings, weight, label, *args, reduction="sum")
    reference = linear_margin_ce_reference(embeddings, weight, label, *args, reduction="sum")
    assert_matches(result, reference, rtol=1e-8, atol=1e-12)
    # The gradient is not lost: it is of the size of the margin's derivative, not 0 or huge.
    assert 1e-3 < result[1].norm() < 1e3


@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"),
    [(torch.float32, 1e-4, 1e-6), (torch.float16, 2e-3, 2e-4), (torch.bfloat16, 2e-2, 2e-3)],
)
def test_lower_precision_inputs_match_float64_of_the_rounded_inputs(dtype, rtol, atol):
    embeddings, weight, label = make_inputs(10, 37, 16, dtype=dtype)
    label[3] = -100
    args = (1.0, 0.5, 0.0, 64.0)
    loss, grad_embeddings, grad_weight = run_op(embeddings, weight, label, *args, chunk_size=8)
    assert loss.dtype == torch.float32
    assert grad_embeddings.dtype == dtype and grad_weight.dtype == dtype
    ref_loss, ref_grad_embeddings, ref_grad_weight = linear_margin_ce_reference(
        embeddings, weight, label, *args
    )
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=atol)
    for got, want in ((grad_embeddings, ref_grad_embeddings), (grad_weight, ref_grad_weight)):
        torch.testing.assert_close(
            got.double(), want, rtol=rtol, atol=atol * want.abs().max().item()
        )


def test_embeddings_of_another_dtype_are_computed_in_the_weight_dtype():
    embeddings, weight, label = make_inputs(5, 7, 4)
    emb = embeddings.clone().requires_grad_()
    loss = linear_margin_cross_entropy(emb, weight.float(), label, scale=16.0)
    loss.backward()
    assert loss.dtype == torch.float32 and emb.grad.dtype == torch.float64
    reference = linear_margin_ce_reference(embeddings, weight.float(), label, 1.0, 0.5, 0.0, 16.0)
    torch.testing.assert_close(loss.double(), reference[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The margin-agnostic op against the cosine op on the materialised matrix
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("categories", [False, True])
def test_linear_target_logsumexp_matches_target_logsumexp_of_the_cosines(categories):
    embeddings, weight, label = make_inputs(8, 15, 4)
    label[2] = -100
    column_category = torch.arange(15) % 3 if categories else None
    row_category = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]) if categories else None
    coefficients = torch.linspace(-1.0, 2.0, 8, dtype=torch.float64)

    def run(function, *inputs):
        leaves = [tensor.clone().requires_grad_() for tensor in inputs]
        out = function(*leaves)
        total = out.lse_rest @ coefficients + (out.cos_target * 2).sum() + out.row_sum.sum() * 3
        total.backward()
        return (*out, *(leaf.grad for leaf in leaves))

    options = {
        "row_sum": True,
        "column_category": column_category,
        "row_category": row_category,
    }
    fused = run(
        lambda e, w: linear_target_logsumexp(e, w, label, 10.0, chunk_size=4, **options),
        embeddings,
        weight,
    )
    composed = run(
        lambda e, w: target_logsumexp(
            F.linear(F.normalize(e, dim=1), F.normalize(w, dim=1)), label, 10.0, **options
        ),
        embeddings,
        weight,
    )
    for got, want in zip(fused, composed, strict=True):
        torch.testing.assert_close(got, want, **F64)


def test_target_angle_output_is_the_angle_between_the_vectors():
    embeddings, weight, label = make_inputs(6, 11, 5)
    label[0] = -100
    terms = linear_target_terms(embeddings, weight, label, 8.0)
    valid = label != -100
    expected = angle_between(embeddings[valid], weight[label[valid]])
    torch.testing.assert_close(terms.theta_target[valid], expected, **F64)
    assert terms.theta_target[0].item() == pytest.approx(math.pi / 2)
    assert terms.cos_target[0].item() == 0.0


# ---------------------------------------------------------------------------------------------
# gradcheck, opcheck, torch.compile
# ---------------------------------------------------------------------------------------------


def test_gradcheck_loss():
    embeddings, weight, label = make_inputs(3, 5, 4)
    label[1] = -100
    emb, wei = embeddings.requires_grad_(), weight.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda e, w: linear_margin_cross_entropy(
            e, w, label, 1.1, 0.3, 0.1, 4.0, reduction="none", chunk_size=2
        ),
        (emb, wei),
    )


def test_gradcheck_every_output_with_categories():
    embeddings, weight, label = make_inputs(4, 6, 3)
    column_category = torch.tensor([0, 1, 1, 0, 2, 2])
    row_category = column_category[label]
    emb, wei = embeddings.requires_grad_(), weight.requires_grad_()

    def outputs(e, w):
        return tuple(
            linear_target_terms(
                e,
                w,
                label,
                3.0,
                row_sum=True,
                column_category=column_category,
                row_category=row_category,
                chunk_size=4,
            )
        )

    assert torch.autograd.gradcheck(outputs, (emb, wei))


def test_opcheck_forward_and_backward_ops():
    embeddings, weight, label = make_inputs(5, 7, 3)
    label[4] = -100
    column_category, row_category = torch.arange(7) % 2, torch.tensor([0, 1, 1, 0, 1])
    for requires_grad in (False, True):
        emb = embeddings.clone().requires_grad_(requires_grad)
        wei = weight.clone().requires_grad_(requires_grad)
        for row_sum, categories in ((False, (None, None)), (True, (column_category, row_category))):
            args = (emb, wei, label, 8.0, -100, row_sum, *categories, "", 3, None)
            torch.library.opcheck(linear_target_logsumexp_fwd, args)
    lse, _sum, unit_e, unit_t, inv_e, inv_w, target_col = linear_target_logsumexp_fwd(
        embeddings, weight, label, 8.0, -100, True, column_category, row_category, "", 3, None
    )
    grads = (torch.randn_like(lse), torch.randn_like(lse), torch.randn_like(unit_e))
    args = (*grads, torch.randn_like(unit_t), embeddings, weight, target_col, lse, inv_e, inv_w)
    torch.library.opcheck(
        linear_target_logsumexp_bwd, (*args, column_category, row_category, 8.0, 3, None)
    )


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph_matches_eager(backend):
    """The wrapper's checks and the margin trace into one graph around the opaque ops."""
    embeddings, weight, label = make_inputs(6, 13, 4, dtype=torch.float32)
    label[5] = -100
    args = (1.0, 0.5, 0.0, 32.0)
    eager = run_op(embeddings, weight, label, *args, chunk_size=4)
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda e, w, y: linear_margin_cross_entropy(e, w, y, *args, chunk_size=4),
        fullgraph=True,
        backend=backend,
    )
    emb, wei = embeddings.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = compiled(emb, wei, label)
    loss.backward()
    for got, want in zip((loss.detach(), emb.grad, wei.grad), eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"embeddings": [[1.0]]}, TypeError, "`embeddings` must be a torch.Tensor"),
        ({"weight": None}, TypeError, "`weight` must be a torch.Tensor"),
        ({"embeddings": torch.randn(3)}, ValueError, "`embeddings` must have shape (N, D)"),
        ({"weight": torch.randn(5, 3)}, ValueError, "`weight` must have shape (C, 4)"),
        ({"weight": torch.ones(5, 4, dtype=torch.int64)}, ValueError, "`weight` must be float16"),
        ({"label": torch.zeros(3)}, ValueError, "`label` must be an integer tensor"),
        ({"label": torch.zeros(2, dtype=torch.int64)}, ValueError, "`label` must have shape (3,)"),
        ({"label": torch.tensor([0, 5, 1])}, ValueError, "got 5 at row 1"),
        ({"scale": 0.0}, ValueError, "`scale` must be a finite number > 0"),
        ({"margin1": -1.0}, ValueError, "`margin1` must be a finite number > 0"),
        ({"margin2": float("nan")}, ValueError, "`margin2` must be a finite number"),
        ({"reduction": "avg"}, ValueError, "`reduction` must be one of"),
        ({"margin_fallback": "hard"}, ValueError, "`margin_fallback` must be one of"),
        ({"grad_mode": "none"}, ValueError, "`grad_mode` must be one of"),
        ({"impl": "cuda"}, ValueError, "`impl` must be one of"),
        ({"ignore_index": 1.5}, TypeError, "`ignore_index` must be an int"),
        ({"chunk_size": 0}, ValueError, "`chunk_size` must be positive"),
        ({"group": "world"}, TypeError, "`group` must be a torch.distributed ProcessGroup"),
    ],
)
def test_bad_arguments_raise(change, error, message):
    arguments = {
        "embeddings": torch.randn(3, 4),
        "weight": torch.randn(5, 4),
        "label": torch.tensor([0, 4, 1]),
        **change,
    }
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        linear_margin_cross_entropy(**arguments)


def test_label_range_message_names_the_range_and_ignore_index():
    with pytest.raises(ValueError, match=r"\[0, 5\) or equal to `ignore_index` \(-100\)"):
        linear_margin_cross_entropy(torch.randn(2, 3), torch.randn(5, 3), torch.tensor([-3, 0]))
