"""Claim: every head with class weights runs on the fused op, faster and leaner than plain torch.

For every registered loss that owns class weights (``.weight``; built from its
``conf/loss/<name>.yaml`` with ``in_features=D``, ``num_classes=C``), forward + backward from
embeddings ``(N, D)`` through the head's ``(N, C)`` cosines to its loss, at N=1024, C=50,000,
D=512 by default:

* ``ours``: the head as shipped; its N×C work runs in :func:`marginkit.ops.target_logsumexp`;
* ``composed``: the same head, the same maths, with ``target_logsumexp`` replaced by its plain
  torch composition (a one-hot mask, ``masked_fill``, ``logsumexp`` and ``gather`` over the
  N×C matrix, as one writes it by hand). A head that never calls ``target_logsumexp`` is marked
  ``n/a`` (both variants would run the same code);

and two references shared by every head, on the same cosines
(``F.linear(F.normalize(x), F.normalize(W))``):

* ``plain CE``: ``F.cross_entropy(64·cos, y)``, no margin at all (the time to beat);
* ``cosines``: the cosines alone with ``cos.sum()`` as the loss, the floor every head pays (the
  two normalisations and three matrix products).

Each variant runs in its own fresh process (``--variant`` is the internal entry point); timing
and memory as in ``benchmarks/margin_ce.py`` (see ``_harness.py``). ``extra / N×C`` is the peak
extra memory in units of one N×C matrix of the dtype.

Usage::

    python benchmarks/heads.py                        # CPU, N=1024, C=50000, D=512, float32
    python benchmarks/heads.py --quick                # small sizes, a smoke run (seconds)
    python benchmarks/heads.py --heads arcface coco   # a subset
    python benchmarks/heads.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import _harness as harness
import torch
import torch.nn.functional as F
from torch import Tensor

CONF_LOSS = Path(__file__).resolve().parents[1] / "conf" / "loss"
EMBEDDING_DIM = "${backbone.embedding_dim}"
PLAIN_SCALE = 64.0
SHARED_VARIANTS = ("plain", "cosines")
HEAD_VARIANTS = ("ours", "composed")


def build_head(name: str, classes: int, features: int) -> torch.nn.Module:
    """The loss of ``conf/loss/<name>.yaml`` with ``num_classes=classes`` and ``features`` dims."""
    import hydra
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF_LOSS / f"{name}.yaml")
    raw = OmegaConf.to_container(node, resolve=False)
    for key, value in raw.items():
        if value == EMBEDDING_DIM:
            node[key] = features
    if "num_classes" in raw:  # `in node` is False while the value is ??? (missing)
        node.num_classes = classes
    for key in ("parallel", "sample_rate"):  # read by the CLI, not by the head
        node.pop(key, None)
    target = hydra.utils.get_class(node._target_)
    if "memory_efficient" in inspect.signature(target).parameters:
        node.memory_efficient = False  # the cosine path: "ours" vs composed on the same cosines
    return hydra.utils.instantiate(node, _convert_="all")


def composed_target_logsumexp(
    cosines: Tensor,
    label: Tensor,
    scale: float,
    group: object = None,
    *,
    ignore_index: int = -100,
    row_sum: bool = False,
    column_category: Tensor | None = None,
    row_category: Tensor | None = None,
    impl: str | None = None,
):
    """``marginkit.ops.target_logsumexp``'s semantics composed from plain torch ops over N×C."""
    from marginkit.ops import TargetLogSumExp

    if group is not None:
        raise NotImplementedError("the composed variant has no process-group path")
    x = cosines.float() if cosines.dtype in (torch.float16, torch.bfloat16) else cosines
    valid = label != ignore_index
    target = torch.where(valid, label, torch.zeros_like(label))
    is_target = F.one_hot(target, x.shape[1]).bool() & valid[:, None]
    lse_rest = torch.logsumexp((scale * x).masked_fill(is_target, float("-inf")), dim=1)
    cos_target = x.gather(1, target[:, None])[:, 0] * valid
    total = None
    if row_sum:
        keep = ~is_target
        if column_category is not None:
            keep = keep & (column_category[None, :] == row_category[:, None])
        total = (x * keep).sum(dim=1)
    return TargetLogSumExp(lse_rest, cos_target, total)


def install_composed() -> dict[str, int]:
    """Replace ``target_logsumexp`` wherever the loaded losses reach it; count the calls."""
    import marginkit.ops

    original = marginkit.ops.target_logsumexp
    calls = {"n": 0}

    def counted(*args, **kwargs):
        calls["n"] += 1
        return composed_target_logsumexp(*args, **kwargs)

    for name, module in list(sys.modules.items()):
        if name.startswith("marginkit") and getattr(module, "target_logsumexp", None) is original:
            module.target_logsumexp = counted
    return calls


def measure(args: argparse.Namespace) -> dict:
    """Run one variant in this process."""
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator(device=args.device).manual_seed(0)
    x = torch.randn(args.rows, args.features, generator=generator, device=args.device)
    x = x.to(dtype).requires_grad_()
    label = torch.randint(0, args.classes, (args.rows,), generator=generator, device=args.device)
    calls = None
    if args.variant in SHARED_VARIANTS:
        weight = torch.randn(args.classes, args.features, generator=generator, device=args.device)
        weight = weight.to(dtype).requires_grad_()
        parameters = [weight]

        def loss_fn() -> Tensor:
            cos = F.linear(F.normalize(x, dim=1), F.normalize(weight, dim=1))
            if args.variant == "cosines":
                return cos.sum()
            return F.cross_entropy(PLAIN_SCALE * cos, label)
    else:
        head = build_head(args.head, args.classes, args.features).to(args.device, dtype)
        parameters = list(head.parameters())
        if args.variant == "composed":
            calls = install_composed()

        def loss_fn() -> Tensor:
            return head(x, label)

    def step() -> None:
        x.grad = None
        for parameter in parameters:
            parameter.grad = None
        loss_fn().backward()

    result = harness.measure_step(step, iters=args.iters, warmup=args.warmup, device=args.device)
    result.update(variant=args.variant, head=args.head, composed_calls=calls and calls["n"])
    return result


def discover_heads(selected: list[str] | None) -> tuple[list[str], list[str]]:
    """The registered losses with class weights, and a note for each one skipped."""
    from marginkit.losses import get_loss_list

    heads, notes, without_weights = [], [], []
    for name in selected or get_loss_list():
        if not (CONF_LOSS / f"{name}.yaml").exists():
            notes.append(f"{name}: skipped, no conf/loss/{name}.yaml")
            continue
        try:
            head = build_head(name, 4, 8)
        except Exception as error:
            notes.append(f"{name}: skipped, cannot be built ({type(error).__name__}: {error})")
            continue
        if isinstance(getattr(head, "weight", None), Tensor):
            heads.append(name)
        else:
            without_weights.append(name)
    if without_weights:
        notes.append(f"no class weights (`.weight`), not measured: {', '.join(without_weights)}")
    return heads, notes


def run_all(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    heads, notes = discover_heads(args.heads)
    common = ["--device", args.device, "--dtype", args.dtype, "--rows", str(args.rows)]
    common += ["--classes", str(args.classes), "--features", str(args.features)]
    common += ["--iters", str(args.iters), "--warmup", str(args.warmup)]
    if args.threads is not None:
        common += ["--threads", str(args.threads)]
    runs = [("", variant) for variant in SHARED_VARIANTS]
    runs += [(head, variant) for head in heads for variant in HEAD_VARIANTS]
    results = []
    for head, variant in runs:
        print(f"  running {head or '(shared)'} {variant} ...", file=sys.stderr, flush=True)
        result = harness.run_variant(__file__, [*common, "--variant", variant, "--head", head])
        results.append({"head": head, "variant": variant, **result})
    return results, notes


def print_table(results: list[dict], notes: list[str], args: argparse.Namespace) -> None:
    itemsize = torch.finfo(getattr(torch, args.dtype)).bits // 8
    matrix_mib = args.rows * args.classes * itemsize / 2**20
    shared = {r["variant"]: r for r in results if not r["head"]}
    plain = shared["plain"]
    if "error" in plain:
        sys.exit(f"the plain cross-entropy variant failed: {plain['error']}")
    measured = next(r for r in results if "error" not in r)
    print(
        f"heads forward+backward from embeddings: N={args.rows}, C={args.classes}, "
        f"D={args.features}, {args.dtype}, {args.device} ({measured['threads']} threads), "
        f"median of {args.iters} after {args.warmup} warm-up; one N×C matrix = "
        f"{matrix_mib:.1f} MiB; memory: {measured['memory_method']}"
    )
    header = (
        f"{'head':<20}{'variant':<10}{'time ms':>10}{'q25-q75 ms':>18}{'extra MiB':>11}"
        f"{'extra/N×C':>11}{'time/CE':>9}{'mem/CE':>8}{'composed/ours':>15}"
    )
    harness.print_header(header)
    by_head: dict[str, dict[str, dict]] = {}
    for r in results:
        by_head.setdefault(r["head"], {})[r["variant"]] = r
    failed_targets = []
    for r in results:
        label = r["head"] or {"plain": "(plain CE)", "cosines": "(cosines)"}[r["variant"]]
        if "error" in r:
            print(f"{label:<20}{r['variant']:<10}  failed: {r['error']}")
            continue
        if r["variant"] == "composed" and not r.get("composed_calls"):
            print(f"{label:<20}{'composed':<10}  n/a (the head does not call target_logsumexp)")
            continue
        speedup = ""
        if r["variant"] == "ours":
            composed = by_head[r["head"]].get("composed", {})
            if "median_ms" in composed and composed.get("composed_calls"):
                speedup = f"{composed['median_ms'] / r['median_ms']:.2f}"
            if r["median_ms"] > plain["median_ms"]:
                failed_targets.append(
                    f"{r['head']} time/CE {r['median_ms'] / plain['median_ms']:.2f}"
                )
        print(
            f"{label:<20}{r['variant']:<10}{r['median_ms']:>10.1f}"
            f"{r['q25_ms']:>10.1f}-{r['q75_ms']:<7.1f}{r['peak_extra_mib']:>11.0f}"
            f"{r['peak_extra_mib'] / matrix_mib:>11.2f}"
            f"{r['median_ms'] / plain['median_ms']:>9.2f}"
            f"{r['peak_extra_mib'] / plain['peak_extra_mib']:>8.2f}{speedup:>15}"
        )
    print(
        "target: every head's `ours` at <= 1.0x plain CE time: "
        + ("met" if not failed_targets else "NOT met for " + ", ".join(failed_targets))
    )
    for note in notes:
        print(f"note: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_step_arguments(parser, iters=5, warmup=1)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument("--heads", nargs="+", help="registry names (default: every head)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="N=64, C=2000, D=32, 3 iterations, 1 thread: a smoke run",
    )
    parser.add_argument(
        "--variant", choices=SHARED_VARIANTS + HEAD_VARIANTS, help=argparse.SUPPRESS
    )
    parser.add_argument("--head", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.classes, args.features, args.iters, args.warmup = 64, 2000, 32, 3, 1
        args.threads = 1 if args.threads is None else args.threads
    harness.require_device(args.device)
    if args.variant is not None:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        print(json.dumps(measure(args)))
        return
    results, notes = run_all(args)
    print_table(results, notes, args)


if __name__ == "__main__":
    main()
