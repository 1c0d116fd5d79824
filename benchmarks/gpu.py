"""The first GPU run of marginkit's Triton kernels: one command, one table, under five minutes.

On a CUDA machine ``python benchmarks/gpu.py`` prints one table of:

(a) every kernel (cosine forward and backward, linear forward and backward) against the
    chunked-torch path in float64, for float16 / bfloat16 / float32 / float64 over awkward
    shapes (N = 1, C = 1, C not a multiple of the tile, D = 100 and 512, rows without a target)
    and one float16 cosine matrix of more than 2³¹ elements; and ``opcheck`` of the four
    ``triton_op`` launchers with every check (the AOT-dispatch one needs compiled kernels);
(b) registers, spills and shared memory of every compiled kernel;
(c) the float16 linear backward against float32 at C = 1 M (no loss scale: coefficient s/N);
(d) bitwise repeatability of both backward passes;
(e) forward + backward times (``triton.testing.do_bench``): GB/s of the cosine kernels
    against the device's memory bandwidth (a device-to-device copy measured in the same run),
    TFLOP/s of the linear op against ``torch.mm``'s (measured in the same run), and ratios
    against the three bare matrix products, plain ``F.cross_entropy`` and the chunked-torch path;
(f) the largest C that fits in 80 % of the device's memory at N = 8192, D = 512 (bfloat16) for
    the materialised head, the cosine path and the linear op, extrapolated from the peak memory
    measured at two class counts.

Targets it reports against: cosine kernels >= 80 % of the memory bandwidth, forward + backward,
in bfloat16; the linear op's forward + backward <= 1.5x the three bare matrix products at
N = 8192, D = 512, C = 1 M in bfloat16, with no N x C buffer.

``python benchmarks/gpu.py --tiny`` runs the same code at tiny sizes on any machine (without a
GPU in Triton's interpreter, which it switches on): a smoke run, which the test suite does so
that the script cannot rot. Its timings and memory are meaningless.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

if "--tiny" in sys.argv and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import _harness as harness
import torch.nn.functional as F

from marginkit.ops import _cpu, _linear_cpu, linear_margin_cross_entropy
from marginkit.ops import margin_cross_entropy as cosine_margin_ce

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Relative error (norm of the difference over the norm of the reference) allowed per dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
SCALE = 32.0

FULL = {
    "cosine_shapes": [(1, 1000), (64, 1), (37, 8193), (256, 100_003)],
    "linear_shapes": [(1, 300, 100), (77, 1, 512), (129, 8193, 100), (256, 20_001, 512)],
    "huge_cosine": (65_600, 32_768),  # 2.15e9 float16 elements: offsets beyond int32
    "fp16_backward": (4096, 1_000_000, 512),
    "repeat": (512, 100_000, 512),
    "cosine_timing": (4096, 500_000),
    "linear_timing": (8192, 1_000_000, 512),
    "mm": 8192,
    "capacity": (8192, 512, (50_000, 100_000)),
}
TINY = {
    "cosine_shapes": [(1, 20), (9, 1), (13, 37)],
    "linear_shapes": [(1, 20, 12), (9, 1, 20), (19, 37, 33)],
    "huge_cosine": None,
    "fp16_backward": (16, 300, 32),
    "repeat": (12, 40, 16),
    "cosine_timing": (16, 200),
    "linear_timing": (16, 300, 32),
    "mm": 64,
    "capacity": (16, 32, (100, 200)),
}


class Table:
    """The one table the script prints: section, check, size, dtype, value, target, verdict."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, section, check, size="", dtype="", value="", target="", verdict="") -> None:
        self.rows.append(
            tuple(str(x) for x in (section, check, size, dtype, value, target, verdict))
        )

    def print(self) -> None:
        header = ("", "check", "size", "dtype", "value", "target", "verdict")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(len(header))]
        for row in [header, *self.rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    finite = torch.isfinite(want)
    if not torch.equal(torch.isfinite(got), finite):
        return math.inf
    if not finite.any():
        return 0.0
    denominator = want[finite].norm().item()
    difference = (got[finite] - want[finite]).norm().item()
    return difference / denominator if denominator > 0 else difference


def _verdict(error: float, dtype: torch.dtype) -> str:
    return "ok" if error <= TOLERANCE[dtype] else "FAIL"


def _targets(n_rows: int, n_classes: int, device) -> torch.Tensor:
    target = torch.arange(n_rows, device=device) * 7919 % max(n_classes, 1)
    target[::5] = -1  # rows without a target here (ignored, or on another rank)
    return target


def bench(fn: Callable[[], object], device: str) -> float:
    """Median milliseconds of ``fn``: ``triton.testing.do_bench`` on CUDA, 3 calls otherwise."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------
# (a) correctness against float64 chunked torch
# ---------------------------------------------------------------------------------------------


def check_cosine(table: Table, n_rows: int, n_cols: int, dtype, device, rows=None) -> None:
    from marginkit.ops import _triton

    logits = (torch.rand(n_rows, n_cols, device=device) * 2 - 1).to(dtype)
    target = _targets(n_rows, n_cols, device)
    lse, _ = _triton.row_statistics_excluding_target(logits, target, SCALE)
    coef = torch.full((n_rows,), SCALE / n_rows, device=device, dtype=lse.dtype)
    value = -coef
    out = _triton.write_row_softmax(
        logits, target, lse, coef, value, SCALE, torch.empty_like(logits)
    )
    picked = slice(None) if rows is None else rows
    reference = logits[picked].double()
    want_lse, _ = _cpu.row_statistics_excluding_target(reference, target[picked], SCALE)
    want_out = _cpu.write_row_softmax(
        reference,
        target[picked],
        want_lse,
        coef[picked].double(),
        value[picked].double(),
        SCALE,
        torch.empty_like(reference),
    )
    size = f"N={n_rows} C={n_cols}"
    for name, got, want in (
        ("cosine fwd", lse[picked], want_lse),
        ("cosine bwd", out[picked], want_out),
    ):
        error = relative_error(got, want)
        table.add(
            "a",
            name,
            size,
            _name(dtype),
            f"{error:.1e}",
            f"<= {TOLERANCE[dtype]:.0e}",
            _verdict(error, dtype),
        )


def check_linear(table: Table, n_rows: int, n_classes: int, dim: int, dtype, device) -> None:
    from marginkit.ops import _linear_triton

    embeddings = torch.randn(n_rows, dim, device=device).to(dtype)
    weight = torch.randn(n_classes, dim, device=device).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    inv_e = 1 / embeddings.to(acc).norm(dim=1)
    inv_w = 1 / weight.to(acc).norm(dim=1)
    target = _targets(n_rows, n_classes, device)
    args = (embeddings, weight, inv_e, inv_w, target)
    reference = (embeddings.double(), weight.double(), inv_e.double(), inv_w.double(), target)
    lse = _linear_triton.row_logsumexp_linear(*args, SCALE)
    want_lse = _linear_cpu.row_logsumexp_linear(*reference, SCALE)
    coef = torch.full((n_rows,), SCALE / n_rows, device=device, dtype=acc)
    grads = _linear_triton.row_logsumexp_linear_backward(*args, lse, coef, SCALE)
    want = _linear_cpu.row_logsumexp_linear_backward(*reference, want_lse, coef.double(), SCALE)
    size = f"N={n_rows} C={n_classes} D={dim}"
    for name, got, expected in (
        ("linear fwd", lse, want_lse),
        ("linear bwd dE", grads[0], want[0]),
        ("linear bwd dW", grads[1], want[1]),
    ):
        error = relative_error(got, expected)
        table.add(
            "a",
            name,
            size,
            _name(dtype),
            f"{error:.1e}",
            f"<= {TOLERANCE[dtype]:.0e}",
            _verdict(error, dtype),
        )


def check_opcheck(table: Table, device: str) -> None:
    from marginkit.ops import _linear_triton, _triton  # noqa: F401 (register the ops)

    checks = ["test_schema", "test_autograd_registration", "test_faketensor"]
    if device == "cuda":
        checks.append("test_aot_dispatch_dynamic")
    e, w = torch.randn(9, 8, device=device), torch.randn(13, 8, device=device)
    inv_e, inv_w = 1 / e.norm(dim=1), 1 / w.norm(dim=1)
    target = torch.tensor([0, 3, -1, 12, 5, 2, 7, 1, 4], device=device)
    logits = torch.rand(9, 13, device=device) * 2 - 1
    lse = torch.ops.marginkit.triton_linear_logsumexp(e, w, inv_e, inv_w, target, 8.0, None, None)
    ones = torch.ones(9, device=device)
    cases = {
        "triton_row_statistics": (logits, target, 4.0, True, None, None, None, None),
        "triton_write_row_softmax": (
            logits,
            target,
            ones,
            ones,
            -ones,
            4.0,
            torch.empty_like(logits),
            None,
            None,
            None,
            None,
            None,
        ),
        "triton_linear_logsumexp": (e, w, inv_e, inv_w, target, 8.0, None, None),
        "triton_linear_logsumexp_backward": (
            e,
            w,
            inv_e,
            inv_w,
            target,
            lse,
            ones,
            8.0,
            None,
            None,
            True,
        ),
    }
    for name, args in cases.items():
        op = getattr(torch.ops.marginkit, name).default
        try:
            torch.library.opcheck(op, args, test_utils=checks)
            verdict = "ok"
        except Exception as error:  # report, keep going: the table is the point
            verdict = f"FAIL: {type(error).__name__}"
        table.add(
            "a",
            f"opcheck {name}",
            "",
            "",
            ", ".join(c.removeprefix("test_") for c in checks),
            "passes",
            verdict,
        )


# ---------------------------------------------------------------------------------------------
# (b) registers, spills, shared memory
# ---------------------------------------------------------------------------------------------


def report_compiled_kernels(table: Table) -> None:
    from marginkit.ops import _linear_triton, _triton

    kernels = {
        name: getattr(module, name)
        for module in (_triton, _linear_triton)
        for name in dir(module)
        if name.endswith("_kernel")
    }
    for name, kernel in kernels.items():
        compiled = []
        for cache in getattr(kernel, "device_caches", {}).values():
            entries = cache[0] if isinstance(cache, tuple) else cache
            compiled.extend(entries.values() if isinstance(entries, dict) else [])
        if not compiled:
            table.add("b", name, "", "", "not compiled (interpreter, or not launched)")
            continue
        for binary in compiled:
            meta = getattr(binary, "metadata", None)
            shared = getattr(meta, "shared", getattr(binary, "shared", "?"))
            warps = getattr(meta, "num_warps", "?")
            value = f"regs={getattr(binary, 'n_regs', '?')} spills={getattr(binary, 'n_spills', '?')} shared={shared}B warps={warps}"
            table.add(
                "b",
                name,
                "",
                "",
                value,
                "no spills",
                "ok" if getattr(binary, "n_spills", 0) == 0 else "spills",
            )


# ---------------------------------------------------------------------------------------------
# (c) fp16 backward against fp32, (d) repeatability
# ---------------------------------------------------------------------------------------------


def fp16_backward(table: Table, sizes: dict, device: str) -> None:
    from marginkit.ops import _linear_triton

    n_rows, n_classes, dim = sizes["fp16_backward"]
    embeddings = torch.randn(n_rows, dim, device=device, dtype=torch.float16)
    weight = torch.randn(n_classes, dim, device=device, dtype=torch.float16)
    target = _targets(n_rows, n_classes, device)
    grads = {}
    for dtype in (torch.float16, torch.float32):
        e, w = embeddings.to(dtype), weight.to(dtype)
        inv_e, inv_w = 1 / e.float().norm(dim=1), 1 / w.float().norm(dim=1)
        lse = _linear_triton.row_logsumexp_linear(e, w, inv_e, inv_w, target, SCALE)
        coef = torch.full((n_rows,), SCALE / n_rows, device=device)  # a mean loss, no loss scale
        grads[dtype] = _linear_triton.row_logsumexp_linear_backward(
            e, w, inv_e, inv_w, target, lse, coef, SCALE
        )
        del lse
    for index, name in enumerate(("dE", "dW")):
        error = relative_error(grads[torch.float16][index], grads[torch.float32][index])
        zero = (grads[torch.float16][index] == 0) & (grads[torch.float32][index] != 0)
        value = f"rel {error:.1e}, flushed {zero.float().mean().item():.1%}"
        table.add(
            "c",
            f"fp16 vs fp32 linear bwd {name}",
            f"N={n_rows} C={n_classes} D={dim}",
            "float16",
            value,
            "<= 1e-2",
            "ok" if error <= 1e-2 else "FAIL",
        )


def repeatability(table: Table, sizes: dict, device: str) -> None:
    from marginkit.ops import _linear_triton, _triton

    n_rows, n_classes, dim = sizes["repeat"]
    e = torch.randn(n_rows, dim, device=device, dtype=torch.bfloat16)
    w = torch.randn(n_classes, dim, device=device, dtype=torch.bfloat16)
    inv_e, inv_w = 1 / e.float().norm(dim=1), 1 / w.float().norm(dim=1)
    target = _targets(n_rows, n_classes, device)
    lse = _linear_triton.row_logsumexp_linear(e, w, inv_e, inv_w, target, SCALE)
    coef = torch.linspace(-1, 1, n_rows, device=device)
    size = f"N={n_rows} C={n_classes} D={dim}"
    for deterministic, target_text in ((True, "bitwise equal"), (False, "(atomics: may differ)")):
        runs = [
            _linear_triton.row_logsumexp_linear_backward(
                e, w, inv_e, inv_w, target, lse, coef, SCALE, deterministic=deterministic
            )
            for _ in range(2)
        ]
        same = all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
        path = "two-pass" if deterministic else "atomics"
        verdict = ("ok" if same else "FAIL") if deterministic else ""
        value = "bitwise equal" if same else "differs"
        table.add("d", f"linear bwd twice ({path})", size, "bfloat16", value, target_text, verdict)
    logits = (torch.rand(n_rows, n_classes, device=device) * 2 - 1).to(torch.bfloat16)
    lse, _ = _triton.row_statistics_excluding_target(logits, target, SCALE)
    outs = [
        _triton.write_row_softmax(logits, target, lse, coef, -coef, SCALE, torch.empty_like(logits))
        for _ in range(2)
    ]
    same = torch.equal(*outs)
    table.add(
        "d",
        "cosine bwd twice",
        f"N={n_rows} C={n_classes}",
        "bfloat16",
        "bitwise equal" if same else "differs",
        "bitwise equal",
        "ok" if same else "FAIL",
    )


# ---------------------------------------------------------------------------------------------
# (e) times
# ---------------------------------------------------------------------------------------------


def _fwd_bwd(loss_fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        loss_fn().backward()

    return step


def cosine_timings(table: Table, sizes: dict, device: str) -> None:
    from marginkit.ops import _triton

    dtype = torch.bfloat16
    n_rows, n_cols = sizes["cosine_timing"]
    logits = (torch.rand(n_rows, n_cols, device=device) * 2 - 1).to(dtype)
    target = _targets(n_rows, n_cols, device)
    nbytes = logits.numel() * logits.element_size()
    copy_buffer = torch.empty_like(logits)
    copy_ms = bench(lambda: copy_buffer.copy_(logits), device)
    bandwidth = 2 * nbytes / copy_ms / 1e6  # GB/s, read + write
    size = f"N={n_rows} C={n_cols}"
    table.add(
        "e", "device-to-device copy", size, _name(dtype), f"{bandwidth:.0f} GB/s", "(the bandwidth)"
    )
    fwd_ms = bench(lambda: _triton.row_statistics_excluding_target(logits, target, SCALE), device)
    lse, _ = _triton.row_statistics_excluding_target(logits, target, SCALE)
    coef = torch.full((n_rows,), SCALE / n_rows, device=device)
    out = torch.empty_like(logits)
    bwd_ms = bench(
        lambda: _triton.write_row_softmax(logits, target, lse, coef, -coef, SCALE, out), device
    )
    for name, ms, moved in (
        ("cosine fwd", fwd_ms, nbytes),
        ("cosine bwd", bwd_ms, 2 * nbytes),
        ("cosine fwd+bwd", fwd_ms + bwd_ms, 3 * nbytes),
    ):
        achieved = moved / ms / 1e6
        share = achieved / bandwidth
        table.add(
            "e",
            name,
            size,
            _name(dtype),
            f"{ms:.3f} ms, {achieved:.0f} GB/s = {share:.0%}",
            ">= 80%",
            "ok" if share >= 0.8 else "below",
        )
    label = target.clamp(min=0)
    leaf = logits.detach().clone().requires_grad_()
    steps = {
        "fused (Triton)": _fwd_bwd(
            lambda: cosine_margin_ce(leaf, label, scale=SCALE, impl="triton"), [leaf]
        ),
        "fused (chunked torch)": _fwd_bwd(
            lambda: cosine_margin_ce(leaf, label, scale=SCALE, impl="torch"), [leaf]
        ),
        "F.cross_entropy": _fwd_bwd(lambda: F.cross_entropy(leaf * SCALE, label), [leaf]),
    }
    measured = {name: bench(step, device) for name, step in steps.items()}
    for name, ms in measured.items():
        ratio = ms / measured["fused (Triton)"]
        table.add(
            "e",
            f"margin CE fwd+bwd: {name}",
            size,
            _name(dtype),
            f"{ms:.3f} ms = {ratio:.2f}x fused",
        )


def linear_timings(table: Table, sizes: dict, device: str) -> None:
    dtype = torch.bfloat16
    side = sizes["mm"]
    a = torch.randn(side, side, device=device, dtype=dtype)
    mm_ms = bench(lambda: torch.mm(a, a), device)
    peak = 2 * side**3 / mm_ms / 1e9
    table.add("e", "torch.mm (dense peak)", f"{side}^3", _name(dtype), f"{peak:.1f} TFLOP/s")

    n_rows, n_classes, dim = sizes["linear_timing"]
    size = f"N={n_rows} C={n_classes} D={dim}"
    embeddings = torch.randn(n_rows, dim, device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn(n_classes, dim, device=device, dtype=dtype, requires_grad=True)
    label = torch.randint(0, n_classes, (n_rows,), device=device)
    flops = 3 * 2 * n_rows * n_classes * dim  # the three matrix products of a forward + backward
    fused = _fwd_bwd(
        lambda: linear_margin_cross_entropy(embeddings, weight, label, scale=SCALE, impl="triton"),
        [embeddings, weight],
    )
    fused_ms = bench(fused, device)
    with torch.no_grad():
        from marginkit.ops import _linear_triton

        acc = torch.float32
        inv_e = 1 / embeddings.detach().to(acc).norm(dim=1)
        inv_w = 1 / weight.detach().to(acc).norm(dim=1)
        args = (embeddings.detach(), weight.detach(), inv_e, inv_w, label)
        lse = _linear_triton.row_logsumexp_linear(*args, SCALE)
        coef = torch.full((n_rows,), SCALE / n_rows, device=device)
        for deterministic in (False, True):
            ms = bench(
                lambda d=deterministic: _linear_triton.row_logsumexp_linear_backward(
                    *args, lse, coef, SCALE, deterministic=d
                ),
                device,
            )
            path = "two passes, deterministic" if deterministic else "one pass + relaxed atomics"
            table.add("e", f"linear kernel bwd ({path})", size, _name(dtype), f"{ms:.2f} ms")
    table.add(
        "e",
        "linear op fwd+bwd (Triton)",
        size,
        _name(dtype),
        f"{fused_ms:.2f} ms, {flops / fused_ms / 1e9:.1f} TFLOP/s = {flops / fused_ms / 1e9 / peak:.0%} of mm",
    )
    with torch.no_grad():
        try:
            logits = embeddings @ weight.T

            def bare() -> None:
                torch.mm(embeddings, weight.T, out=logits)
                torch.mm(logits, weight)
                torch.mm(logits.T, embeddings)

            bare_ms = bench(bare, device)
            ratio = fused_ms / bare_ms
            table.add(
                "e",
                "linear op / three bare matmuls",
                size,
                _name(dtype),
                f"{ratio:.2f}x ({bare_ms:.2f} ms bare)",
                "<= 1.5x",
                "ok" if ratio <= 1.5 else "above",
            )
        except torch.OutOfMemoryError:
            table.add("e", "linear op / three bare matmuls", size, _name(dtype), "bare matmuls OOM")
    others = {
        "chunked torch": lambda: linear_margin_cross_entropy(
            embeddings, weight, label, scale=SCALE, impl="torch"
        ),
        "F.cross_entropy materialised": lambda: F.cross_entropy(
            F.linear(F.normalize(embeddings), F.normalize(weight)) * SCALE, label
        ),
    }
    for name, loss_fn in others.items():
        try:
            ms = bench(_fwd_bwd(loss_fn, [embeddings, weight]), device)
            table.add(
                "e",
                f"linear fwd+bwd: {name}",
                size,
                _name(dtype),
                f"{ms:.2f} ms = {ms / fused_ms:.2f}x fused",
            )
        except torch.OutOfMemoryError:
            table.add("e", f"linear fwd+bwd: {name}", size, _name(dtype), "OOM")
        if device == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# (f) capacity
# ---------------------------------------------------------------------------------------------


def capacity(table: Table, sizes: dict, device: str) -> None:
    n_rows, dim, class_counts = sizes["capacity"]
    dtype = torch.bfloat16
    label = torch.arange(n_rows, device=device) % class_counts[0]
    variants = {
        "materialised head": lambda e, w: F.cross_entropy(
            F.linear(F.normalize(e), F.normalize(w)) * SCALE, label
        ),
        "cosine path (fused CE)": lambda e, w: cosine_margin_ce(
            F.linear(F.normalize(e), F.normalize(w)), label, scale=SCALE
        ),
        "linear op": lambda e, w: linear_margin_cross_entropy(e, w, label, scale=SCALE),
    }
    total = torch.cuda.get_device_properties(device).total_memory if device == "cuda" else None
    for name, loss_fn in variants.items():
        peaks = []
        for n_classes in class_counts:
            embeddings = torch.randn(n_rows, dim, device=device, dtype=dtype, requires_grad=True)
            weight = torch.randn(n_classes, dim, device=device, dtype=dtype, requires_grad=True)
            loss_fn(embeddings, weight).backward()  # warm-up
            embeddings.grad = weight.grad = None
            peak, _method = harness.measure_peak_extra(
                lambda fn=loss_fn, e=embeddings, w=weight: fn(e, w).backward(), device=device
            )
            # What must fit: the weights, their gradient and the embeddings, plus the step's peak.
            peaks.append(peak + 2 * weight.numel() * weight.element_size() + embeddings.numel() * 2)
        per_class = (peaks[1] - peaks[0]) / (class_counts[1] - class_counts[0])
        fixed = peaks[0] - per_class * class_counts[0]
        size = f"N={n_rows} D={dim}"
        if total is None or per_class <= 0:
            table.add(
                "f",
                f"largest C: {name}",
                size,
                _name(dtype),
                f"{per_class:.0f} B/class (no CUDA: no capacity)",
            )
        else:
            largest = int((0.8 * total - fixed) / per_class)
            table.add(
                "f",
                f"largest C: {name}",
                size,
                _name(dtype),
                f"{largest:,} ({per_class:.0f} B/class)",
                "80% of memory",
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes (the interpreter without a GPU)"
    )
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        sys.exit("benchmarks/gpu.py needs a CUDA GPU (or --tiny, a smoke run in the interpreter)")
    sizes = TINY if args.tiny else FULL
    torch.manual_seed(0)
    table = Table()
    start = time.perf_counter()
    for dtype in DTYPES:
        for n_rows, n_cols in sizes["cosine_shapes"]:
            check_cosine(table, n_rows, n_cols, dtype, device)
        for n_rows, n_classes, dim in sizes["linear_shapes"]:
            check_linear(table, n_rows, n_classes, dim, dtype, device)
    if sizes["huge_cosine"] is None:
        table.add("a", "cosine > 2^31 elements", "", "float16", "skipped (--tiny)")
    else:
        n_rows, n_cols = sizes["huge_cosine"]
        picked = torch.cat([torch.arange(32), torch.arange(n_rows - 32, n_rows)]).to(device)
        check_cosine(table, n_rows, n_cols, torch.float16, device, rows=picked)
        if device == "cuda":
            torch.cuda.empty_cache()
    check_opcheck(table, device)
    report_compiled_kernels(table)
    fp16_backward(table, sizes, device)
    repeatability(table, sizes, device)
    cosine_timings(table, sizes, device)
    linear_timings(table, sizes, device)
    capacity(table, sizes, device)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter)"
    harness.print_header(
        f"benchmarks/gpu.py on {name}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s"
    )
    table.print()


if __name__ == "__main__":
    main()
