"""``masked_similarity_reductions`` (``torch.ops.marginkit.masked_similarity_{fwd,bwd}``) against a
float64 reference written here: a loop over the rows, each row's masked log-sum-exps and sums
taken over an explicitly listed set of columns; float64 autograd through it for the gradients
(the Circle weight detached, as the op documents). Both kernels (chunked torch, several chunk
sizes; Triton in the interpreter, two tile sizes), opcheck, gradcheck, compile, bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from marginkit.ops import Exponent, masked_similarity_reductions
from marginkit.ops import _masked_similarity_cpu as cpu_kernels
from marginkit.ops.masked_similarity import masked_similarity_bwd, masked_similarity_fwd
from tests.ops.triton_setup import CPU_IMPLS, requires_triton_kernels

# The interpreter evaluates log(0) on purpose (rows with an empty mask: −inf).
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning")

LINEAR = (Exponent(-2.0, 0.5), Exponent(50.0, 0.5))
CIRCLE = (Exponent(-8.0, 0.6, 1.4, -1), Exponent(8.0, 0.4, -0.4, 1))


def _value(u, v, distance):
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    if distance == "cosine":
        return dot
    squared = torch.clamp_min(2 - 2 * dot, 0.0)
    if distance == "squared_euclidean":
        return squared
    return torch.sqrt(squared) if float(squared.detach()) > 1e-12 else squared * 0.0


def _phi(v, exponent):
    scale, shift, threshold, direction = exponent
    if direction == 0:
        return scale * (v - shift)
    return scale * torch.relu(direction * (v.detach() - threshold)) * (v - shift)


def reference(x, y, columns, distance, pos_exponent, neg_exponent):
    """Per row: [lse_pos, lse_neg, sum_pos, sum_neg, n_pos, n_neg] over the listed columns.

    ``columns[i] = (positives, negatives)``, lists of (column, count)."""
    outputs = [[] for _ in range(6)]
    for i, (positives, negatives) in enumerate(columns):
        for index, (listed, exponent) in enumerate(
            ((positives, pos_exponent), (negatives, neg_exponent))
        ):
            values = [(_value(x[i], y[j], distance), count) for j, count in listed]
            if values:
                lse = torch.logsumexp(
                    torch.stack(
                        [
                            _phi(v, exponent) + torch.log(torch.tensor(float(c), dtype=v.dtype))
                            for v, c in values
                        ]
                    ),
                    0,
                )
                total = sum(v * c for v, c in values)
            else:
                lse = torch.tensor(float("-inf"), dtype=torch.float64)
                total = torch.zeros((), dtype=torch.float64)
            outputs[index].append(lse)
            outputs[2 + index].append(total)
            outputs[4 + index].append(
                torch.tensor(float(sum(c for _, c in listed)), dtype=torch.float64)
            )
    return [torch.stack(part) for part in outputs]


def _columns_from_labels(labels, ref_labels, self_offset):
    columns = []
    for i, label in enumerate(labels):
        own = None if self_offset is None else (i + self_offset) % len(ref_labels)
        positives = [(j, 1) for j, r in enumerate(ref_labels) if r == label and j != own]
        negatives = [(j, 1) for j, r in enumerate(ref_labels) if r != label]
        columns.append((positives, negatives))
    return columns


def _columns_from_counts(pos_count, neg_count):
    return [
        (
            [(j, int(c)) for j, c in enumerate(pos_row) if c > 0],
            [(j, int(c)) for j, c in enumerate(neg_row) if c > 0],
        )
        for pos_row, neg_row in zip(pos_count.tolist(), neg_count.tolist(), strict=True)
    ]


def problem(n_rows=11, n_refs=13, dim=5, seed=0, masks="labels", coincide=True):
    generator = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n_rows, dim, generator=generator, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(n_refs, dim, generator=generator, dtype=torch.float64), dim=1)
    if coincide:  # a reference coinciding with a row (distance 0)
        y[2] = x[1]
    labels = torch.randint(0, 3, (n_rows,), generator=generator)
    ref_labels = torch.randint(0, 3, (n_refs,), generator=generator)
    labels[-1] = 7  # a row without positives
    kwargs = {"labels": labels, "ref_labels": ref_labels}
    if masks == "self":
        kwargs["self_offset"] = 4
    elif masks == "counts":
        kwargs = {
            "pos_count": torch.randint(0, 3, (n_rows, n_refs), generator=generator),
            "neg_count": torch.randint(0, 2, (n_rows, n_refs), generator=generator).bool(),
        }
        kwargs["pos_count"][0] = 0  # a row without positives
    grads = torch.randn(4, n_rows, generator=generator, dtype=torch.float64)
    return x, y, kwargs, grads


def _reference_columns(kwargs):
    if "pos_count" in kwargs:
        return _columns_from_counts(kwargs["pos_count"], kwargs["neg_count"])
    return _columns_from_labels(
        kwargs["labels"].tolist(), kwargs["ref_labels"].tolist(), kwargs.get("self_offset")
    )


def _objective(outputs, grads):
    """A weighted sum of the differentiable outputs (−inf log-sum-exps left out)."""
    total = 0.0
    for part, weight in zip(outputs[:4], grads, strict=True):
        total = total + torch.where(torch.isfinite(part), part * weight, 0.0).sum()
    return total


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("distance", ["cosine", "euclidean", "squared_euclidean"])
@pytest.mark.parametrize("masks", ["labels", "self", "counts"])
@pytest.mark.parametrize("exponents", [LINEAR, CIRCLE], ids=["linear", "circle"])
def test_values_and_gradients_match_the_row_loop(impl, distance, masks, exponents):
    # 2 − 2 x·y at coinciding unit vectors rounds to either side of the clamp at 0 depending on
    # how the dot product is summed: its derivative there is the rounding's (the Euclidean
    # distance has its floor instead, and cosines no clamp).
    x, y, kwargs, grads = problem(masks=masks, coincide=distance != "squared_euclidean")
    xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
    ours = masked_similarity_reductions(
        xs, ys, distance=distance, pos_exponent=exponents[0], neg_exponent=exponents[1],
        impl=impl, **kwargs,
    )  # fmt: skip
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    expected = reference(list(xr), list(yr), _reference_columns(kwargs), distance, *exponents)
    for got, wanted in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, wanted, rtol=1e-10, atol=1e-10)
    _objective(ours, grads).backward()
    _objective(expected, grads).backward()
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(ys.grad, yr.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("chunk_bytes", [8 * 13, 3 * 8 * 13, 4 * 2**20])
def test_chunk_sizes_give_the_same_results(monkeypatch, chunk_bytes):
    """One row per chunk, three rows per chunk (a short last chunk), everything in one."""
    x, y, kwargs, grads = problem(masks="self")
    monkeypatch.setattr(cpu_kernels, "_CHUNK_BYTES", chunk_bytes)
    xs = x.clone().requires_grad_()
    ours = masked_similarity_reductions(xs, y, **kwargs)
    _objective(ours, grads).backward()
    xr = x.clone().requires_grad_()
    expected = reference(
        list(xr), list(y), _reference_columns(kwargs), "cosine", Exponent(1.0), Exponent(1.0)
    )
    _objective(expected, grads).backward()
    for got, wanted in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, wanted)
    torch.testing.assert_close(xs.grad, xr.grad)


@requires_triton_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("blocks", [(None, None), (16, 16)], ids=["default_tiles", "small_tiles"])
@pytest.mark.parametrize("masks", ["self", "counts"])
def test_triton_kernels_match_the_torch_kernels(dtype, blocks, masks):
    from marginkit.ops import _masked_similarity_triton as triton_kernels

    x, y, kwargs, grads = problem(n_rows=40, n_refs=70, masks=masks)
    x, y = x.to(dtype), y.to(dtype)
    arguments = (
        x, y, kwargs.get("labels"), kwargs.get("ref_labels"), kwargs.get("pos_count"),
        kwargs.get("neg_count"), kwargs.get("self_offset", -1), "euclidean", list(CIRCLE[0]),
        list(CIRCLE[1]),
    )  # fmt: skip
    block_m, block_n = blocks
    ours = triton_kernels.row_reductions(*arguments, block_m=block_m, block_n=block_n)
    expected = cpu_kernels.row_reductions(*arguments)
    tolerance = (
        {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    )
    for got, wanted in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, wanted, **tolerance)
    grad_list = [g.to(expected[0].dtype) for g in grads]
    ours = triton_kernels.row_gradients(
        grad_list, expected[:2], *arguments, block_m=block_m, block_n=block_n
    )
    wanted = cpu_kernels.row_gradients(grad_list, expected[:2], *arguments)
    scale = max(float(w.abs().max()) for w in wanted)
    for got, want in zip(ours, wanted, strict=True):
        torch.testing.assert_close(got / scale, want / scale, **tolerance)


def test_gradcheck_float64():
    x, y, kwargs, _ = problem(n_rows=5, n_refs=6, masks="self", coincide=False)

    def outputs(xs, ys):
        out = masked_similarity_reductions(
            xs, ys, distance="euclidean", pos_exponent=Exponent(-1.5, 0.2),
            neg_exponent=Exponent(2.0, 0.3), **kwargs,
        )  # fmt: skip
        return tuple(torch.where(torch.isfinite(part), part, 0.0) for part in out[:4])

    assert torch.autograd.gradcheck(outputs, (x.requires_grad_(), y.requires_grad_()))


@pytest.mark.parametrize("masks", ["labels", "counts"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(masks, dtype):
    x, y, kwargs, grads = problem(n_rows=6, n_refs=7, masks=masks)
    x, y = x.to(dtype).requires_grad_(), y.to(dtype).requires_grad_()
    labels = (kwargs.get("labels"), kwargs.get("ref_labels"))
    counts = (kwargs.get("pos_count"), kwargs.get("neg_count"))
    offset = 0 if masks == "labels" else -1
    args = (
        x,
        y,
        *labels,
        *counts,
        offset,
        "euclidean",
        [1.0, 0.0, 0.0, 0.0],
        [-2.0, 0.5, 0.0, 0.0],
        "",
        None,
    )
    torch.library.opcheck(masked_similarity_fwd, args)
    out = masked_similarity_fwd(*args)
    backward_args = (
        *[g.to(dtype) for g in grads], out[0].detach(), out[1].detach(), x.detach(), y.detach(),
        *labels, *counts, offset, "euclidean", [1.0, 0.0, 0.0, 0.0], [-2.0, 0.5, 0.0, 0.0], None,
    )  # fmt: skip
    torch.library.opcheck(masked_similarity_bwd, backward_args)
    torch.library.opcheck(masked_similarity_bwd, (*backward_args, False))  # a bank: no ref grad


def _multi_similarity_like(embeddings, labels):
    unit = F.normalize(embeddings, dim=1)
    out = masked_similarity_reductions(
        unit, unit, labels, labels, self_offset=0, pos_exponent=Exponent(-2.0, 0.5),
        neg_exponent=Exponent(50.0, 0.5),
    )  # fmt: skip
    return (F.softplus(out.lse_pos) / 2 + F.softplus(out.lse_neg) / 50).mean()


def test_compile_fullgraph():
    torch._dynamo.reset()
    embeddings = torch.randn(12, 6, requires_grad=True)
    labels = torch.arange(4).repeat(3)
    expected = _multi_similarity_like(embeddings, labels)
    (expected_grad,) = torch.autograd.grad(expected, embeddings)
    compiled = torch.compile(_multi_similarity_like, fullgraph=True, backend="aot_eager")
    loss = compiled(embeddings, labels)
    (grad,) = torch.autograd.grad(loss, embeddings)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)


def test_ops_are_registered_per_device():
    for name in ("masked_similarity_fwd", "masked_similarity_bwd"):
        op = getattr(torch.ops.marginkit, name).default
        has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
        assert has_kernel(op.name(), "CompositeExplicitAutograd")
        assert has_kernel(op.name(), "CUDA")


def test_bad_inputs_name_the_argument():
    x, y, kwargs, _ = problem()
    labels, ref_labels = kwargs["labels"], kwargs["ref_labels"]
    with pytest.raises(TypeError, match="`embeddings`"):
        masked_similarity_reductions(x.tolist(), y, labels, ref_labels)
    with pytest.raises(ValueError, match="`references`"):
        masked_similarity_reductions(x, y[:, :3], labels, ref_labels)
    with pytest.raises(ValueError, match="`references`"):
        masked_similarity_reductions(x, y.float(), labels, ref_labels)
    with pytest.raises(ValueError, match="`ref_labels`"):
        masked_similarity_reductions(x, y, labels, ref_labels[:4])
    with pytest.raises(ValueError, match="`labels`"):
        masked_similarity_reductions(x, y, labels.float(), ref_labels)
    with pytest.raises(ValueError, match="either `labels`"):
        masked_similarity_reductions(x, y)
    with pytest.raises(ValueError, match="`pos_count`"):
        masked_similarity_reductions(x, y, pos_count=torch.ones(2, 2), neg_count=torch.ones(2, 2))
    with pytest.raises(ValueError, match="`distance`"):
        masked_similarity_reductions(x, y, labels, ref_labels, distance="l1")
    with pytest.raises(ValueError, match="`self_offset`"):
        masked_similarity_reductions(x, y, labels, ref_labels, self_offset=-2)
    with pytest.raises(TypeError, match="`pos_exponent`"):
        masked_similarity_reductions(x, y, labels, ref_labels, pos_exponent=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"`neg_exponent\.direction`"):
        masked_similarity_reductions(
            x, y, labels, ref_labels, neg_exponent=Exponent(1.0, 0.0, 0.0, 2)
        )
    with pytest.raises(ValueError, match="`impl`"):
        masked_similarity_reductions(x, y, labels, ref_labels, impl="cuda")
