"""Claims: the all-triplets loss needs O(B²) memory and no more time than listing the triplets;
the similarity pair/proxy losses need O(B · block) memory beyond their inputs.

Forward + backward of the triplet loss (margin 0.1) over **every** valid triplet of a P×K batch
(K = 8, D = 128) for

* ``materialised``: what pytorch-metric-learning's ``TripletMarginLoss`` does with its
  all-triplets default, in plain torch: the B×B distance matrix, every (a, p, n) index triplet
  from the B×B×B mask ``same[a, p] & ~same[a, n]`` (``torch.where``), gathered distances,
  ``relu(d_ap − d_an + m).mean()``;
* ``ours``: :class:`marginkit.losses.TripletLossWithMiner` with the default
  :class:`~marginkit.miners.AllTripletsMiner`, which reduces over the triplets blockwise without
  listing them (``torch.ops.marginkit.all_triplets_loss_sum``).

Each (variant, P) runs in its own fresh process (``--variant``/``--labels`` are the internal
entry point), so allocator caches and high-water marks do not leak between them; the parent
prints absolute numbers and ratios measured in one run, checks that both variants give the same
loss, and shows how the memory grows from the smallest to the largest batch (×16 for B², ×64
for B³ when B grows ×4).

* time: median (and quartiles) of ``--iters`` steps after ``--warmup`` steps, and the best
  step (the least disturbed by other processes on a shared machine); the features' gradient is
  cleared before every step. Ratios use the medians.
* peak extra memory: CPU, the resident-set high-water mark of one step (``VmHWM`` reset through
  ``/proc/self/clear_refs``) minus the resident set before it, with glibc told to map every
  allocation above 128 KiB from the OS and return it on free (``MALLOC_MMAP_THRESHOLD_``), so
  blocks freed by the warm-up are not silently reused; CUDA, ``torch.cuda.max_memory_allocated``
  minus the allocation before the step.

Second claim (``--family similarity``): MultiSimilarity, Circle, SupCon and ProxyAnchor on the
fused masked-similarity op need at most a quarter of the memory of the same loss materialised
the way pytorch-metric-learning computes it, and at most 0.7× its time, at B = 256 against a
memory bank of 65,536 (D = 128); their memory grows linearly in the reference set R. Variants:

* ``materialised``: PML's code path in plain torch (its formulas, as in its source): the B×R
  similarity matrix of the normalised embeddings, float pair masks, ``masked_fill`` and
  PML's ``logsumexp`` (``keep_mask``, ``add_one``) over whole rows, its reducers;
* ``ours``: :mod:`marginkit.losses` (``ref_embeddings=bank`` for the bank runs).

Settings: ``batch`` (P×K = 128×8, the batch is its own reference set), ``bank`` (P×K = 32×8
rows against ``--banks`` references without gradient, labels of 1,000 classes), ProxyAnchor
against C = 10,000 proxies at B = 256 and B = 1024. Each (loss, setting, variant) runs in a
fresh process for its memory (with glibc mapping large blocks from the OS, as above) and another
for its time (without: that setting charges page faults to every reused chunk buffer); the value
is also computed in float64 and the parent checks that both variants agree to 1e-5.

Usage::

    python benchmarks/pair_losses.py            # both claims, CPU
    python benchmarks/pair_losses.py --family triplet      # P = 32, 64, 128 (B = 256 .. 1024)
    python benchmarks/pair_losses.py --family similarity   # banks 16,384 and 65,536
    python benchmarks/pair_losses.py --quick    # smaller sizes, fewer steps (a smoke check)
    python benchmarks/pair_losses.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys

import _harness as harness
import torch

VARIANTS = ("materialised", "ours")
MARGIN = 0.1


def materialised_triplet_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The all-triplets loss with every triplet listed (pytorch-metric-learning's recipe)."""
    sq_norm = features.square().sum(1)
    sq = (sq_norm[:, None] + sq_norm[None, :] - 2.0 * features @ features.T).clamp_min(0.0)
    distances = torch.where(sq > 1e-12, sq.clamp_min(1e-12).sqrt(), 0.0)
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    anchors, positives, negatives = torch.where(positive[:, :, None] & ~same[:, None, :])
    d_ap, d_an = distances[anchors, positives], distances[anchors, negatives]
    return torch.relu(d_ap - d_an + MARGIN).mean()


def loss_function(variant: str):
    if variant == "materialised":
        return materialised_triplet_loss
    from marginkit.losses import TripletLossWithMiner

    return TripletLossWithMiner(margin=MARGIN)


def measure(variant: str, n_labels: int, args: argparse.Namespace) -> dict:
    """Run one variant at P = ``n_labels`` in this process; return time, memory and the loss."""
    generator = torch.Generator().manual_seed(0)
    batch = n_labels * args.instances
    features = torch.randn(batch, args.dim, generator=generator).to(args.device)
    features.requires_grad_()
    labels = torch.arange(n_labels).repeat_interleave(args.instances).to(args.device)
    loss_fn = loss_function(variant)
    value = []

    def step() -> None:
        features.grad = None
        loss = loss_fn(features, labels)
        loss.backward()
        value.append(loss.item())

    for _ in range(max(1, args.warmup)):  # the first call imports torch's custom-op machinery
        step()
    features.grad = None
    peak_extra, memory_method = harness.measure_peak_extra(step, device=args.device)
    times = harness.time_steps(step, iters=args.iters, device=args.device)
    summary = harness.summarise_times(times)
    return {
        "variant": variant,
        "n_labels": n_labels,
        "batch": batch,
        "median_ms": summary["median_ms"],
        "best_ms": min(times) * 1e3,
        "q25_ms": summary["q25_ms"],
        "q75_ms": summary["q75_ms"],
        "peak_extra_mib": max(peak_extra, 0) / 2**20,
        "loss": value[-1],
        "memory_method": memory_method,
        "threads": torch.get_num_threads(),
    }


def run_all(args: argparse.Namespace) -> list[dict]:
    results = []
    for n_labels in args.labels:
        for variant in VARIANTS:
            arguments = ["--variant", variant]
            arguments += ["--labels", str(n_labels), "--instances", str(args.instances)]
            arguments += ["--dim", str(args.dim), "--device", args.device]
            arguments += ["--iters", str(args.iters), "--warmup", str(args.warmup)]
            result = harness.run_variant_or_exit(
                __file__,
                arguments,
                name=f"variant {variant!r} at P={n_labels}",
                extra_env={"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
            )
            results.append(result)
    return results


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    print(
        f"all-triplets triplet loss forward+backward: P×K with K={args.instances}, D={args.dim}, "
        f"float32, {args.device} ({results[0]['threads']} threads), median of {args.iters} "
        f"after {args.warmup} warm-up; memory: {results[0]['memory_method']}"
    )
    header = (
        f"{'P×K':>8}{'B':>6}{'triplets':>11}  {'variant':<13}{'time ms':>10}{'q25-q75 ms':>16}"
        f"{'best ms':>9}{'extra MiB':>11}{'time/mat':>10}{'mem/mat':>9}"
    )
    harness.print_header(header)
    by_key = {(r["variant"], r["n_labels"]): r for r in results}
    for n_labels in args.labels:
        reference = by_key[("materialised", n_labels)]
        batch = reference["batch"]
        triplets = batch * (args.instances - 1) * (batch - args.instances)
        for variant in VARIANTS:
            result = by_key[(variant, n_labels)]
            print(
                f"{f'{n_labels}×{args.instances}':>8}{batch:>6}{triplets:>11,}  {variant:<13}"
                f"{result['median_ms']:>10.1f}{result['q25_ms']:>8.1f}-{result['q75_ms']:<7.1f}"
                f"{result['best_ms']:>9.1f}{result['peak_extra_mib']:>11.1f}"
                f"{result['median_ms'] / reference['median_ms']:>10.2f}"
                f"{_ratio(result['peak_extra_mib'], reference['peak_extra_mib']):>9}"
            )
        ours = by_key[("ours", n_labels)]
        difference = abs(ours["loss"] - reference["loss"])
        if difference > 1e-4 * max(1.0, abs(reference["loss"])):
            sys.exit(f"P={n_labels}: the losses differ ({ours['loss']} vs {reference['loss']})")
    small, large = min(args.labels), max(args.labels)
    if small != large:
        scale = large / small
        print(
            f"memory growth P={small}→{large} (B ×{scale:g}; B² predicts ×{scale**2:g}, "
            f"B³ ×{scale**3:g}):"
        )
        for variant in VARIANTS:
            grow = _ratio(
                by_key[(variant, large)]["peak_extra_mib"],
                by_key[(variant, small)]["peak_extra_mib"],
                digits=1,
            )
            print(f"  {variant:<13} ×{grow}")
    ours, reference = by_key[("ours", large)], by_key[("materialised", large)]
    print(
        f"targets at P={large}: time/materialised <= 1.0 "
        f"({ours['median_ms'] / reference['median_ms']:.2f}), memory/materialised <= 0.25 "
        f"({_ratio(ours['peak_extra_mib'], reference['peak_extra_mib'])}); losses equal to 1e-4"
    )


def _ratio(numerator: float, denominator: float, digits: int = 3) -> str:
    """``numerator / denominator``, or "n/a" when the denominator is below measurement (0.05 MiB)."""
    return f"{numerator / denominator:.{digits}f}" if denominator >= 0.05 else "n/a"


# ---------------------------------------------------------------------------------------------
# The similarity pair and proxy losses on the fused masked-similarity op
# ---------------------------------------------------------------------------------------------

SIMILARITY_LOSSES = ("multi_similarity", "circle", "supcon", "proxy_anchor")
PROXY_CLASSES = 10_000
BANK_CLASSES = 1_000


def pml_logsumexp(x, keep_mask, add_one, dim=1):
    """pytorch-metric-learning's ``lmu.logsumexp``: masked entries at the dtype's lowest value,
    an optional zero column, rows without kept entries set to 0."""
    x = x.masked_fill(~keep_mask, torch.finfo(x.dtype).min)
    if add_one:
        shape = list(x.shape)
        shape[dim] = 1
        x = torch.cat([x, x.new_zeros(shape)], dim=dim)
    output = torch.logsumexp(x, dim=dim, keepdim=True)
    return output.masked_fill(~torch.any(keep_mask, dim=dim, keepdim=True), 0)


def _pml_masks(labels, ref_labels, same_set):
    """PML's pair masks from ``get_all_pairs_indices`` (float B×R matrices)."""
    same = labels[:, None] == ref_labels[None, :]
    if same_set:
        same = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same.to(torch.get_default_dtype())
    negative = (labels[:, None] != ref_labels[None, :]).to(positive.dtype)
    return positive, negative


def materialised_similarity_loss(name, embeddings, labels, refs, ref_labels, proxies):
    """The loss as PML computes it, with the B×R (or B×C) matrix held (defaults of each loss)."""
    import torch.nn.functional as F

    unit = F.normalize(embeddings, dim=1)
    if name == "proxy_anchor":
        cos = unit @ F.normalize(proxies, dim=1).T
        pos_mask = F.one_hot(labels, proxies.shape[0])
        neg_mask = 1 - pos_mask
        with_pos = torch.where(pos_mask.sum(0) != 0)[0]
        pos_term = pml_logsumexp(32.0 * (0.1 - cos), pos_mask.bool(), True, dim=0)
        neg_term = pml_logsumexp(32.0 * (cos + 0.1), neg_mask.bool(), True, dim=0)
        return pos_term.sum() / len(with_pos) + neg_term.sum() / proxies.shape[0]
    same_set = refs is None
    ref_unit = unit if same_set else F.normalize(refs, dim=1)
    ref_labels = labels if same_set else ref_labels
    mat = unit @ ref_unit.T
    pos_mask, neg_mask = _pml_masks(labels, ref_labels, same_set)
    pos_mask, neg_mask = pos_mask.to(mat.dtype), neg_mask.to(mat.dtype)
    if name == "multi_similarity":
        pos_loss = pml_logsumexp(2.0 * (0.5 - mat), pos_mask.bool(), True) / 2.0
        neg_loss = pml_logsumexp(50.0 * (mat - 0.5), neg_mask.bool(), True) / 50.0
        return (pos_loss + neg_loss).mean()
    if name == "circle":
        m, gamma = 0.4, 80.0
        pos_bool, neg_bool = pos_mask.bool(), neg_mask.bool()
        anchor_positive, anchor_negative = mat[pos_bool], mat[neg_bool]
        new_mat = torch.zeros_like(mat)
        new_mat[pos_bool] = (
            -gamma * torch.relu(1 + m - anchor_positive.detach()) * (anchor_positive - (1 - m))
        )
        new_mat[neg_bool] = gamma * torch.relu(anchor_negative.detach() + m) * (anchor_negative - m)
        lse_pos = pml_logsumexp(new_mat, pos_bool, False)
        lse_neg = pml_logsumexp(new_mat, neg_bool, False)
        losses = torch.nn.functional.softplus(lse_pos + lse_neg)
        zero_rows = (pos_mask.sum(1) == 0) | (neg_mask.sum(1) == 0)
        losses = losses.squeeze(1).masked_fill(zero_rows, 0.0)
        return losses[losses > 0].mean()
    # supcon
    scaled = mat / 0.1
    scaled = scaled - scaled.max(dim=1, keepdim=True)[0].detach()
    denominator = pml_logsumexp(scaled, (pos_mask + neg_mask).bool(), False)
    log_prob = scaled - denominator
    mean_log_prob_pos = (pos_mask * log_prob).sum(1) / (
        pos_mask.sum(1) + torch.finfo(mat.dtype).tiny
    )
    losses = -mean_log_prob_pos
    return losses[losses > 0].mean()


def _ours(name, proxies):
    from marginkit import losses

    if name == "proxy_anchor":
        loss_fn = losses.ProxyAnchorLoss(proxies.shape[0], proxies.shape[1])
        with torch.no_grad():
            loss_fn.proxies.copy_(proxies)
        return loss_fn
    return {
        "multi_similarity": losses.MultiSimilarityLoss,
        "circle": losses.CircleLoss,
        "supcon": losses.SupConLoss,
    }[name]()


def _similarity_inputs(name, setting, args, dtype):
    """``(embeddings, labels, bank, bank_labels, proxies, rows)``; ``setting`` is ``batch``,
    ``bank<R>`` or ``proxies<B>``."""
    generator = torch.Generator().manual_seed(0)
    if setting == "batch":
        n_labels = max(args.labels)
    elif setting.startswith("proxies"):
        n_labels = int(setting[len("proxies") :]) // args.instances
    else:
        n_labels = 256 // args.instances
    rows = n_labels * args.instances
    classes = PROXY_CLASSES if name == "proxy_anchor" else BANK_CLASSES
    chosen = torch.randperm(classes, generator=generator)[:n_labels]
    labels = chosen.repeat_interleave(args.instances)
    embeddings = torch.randn(rows, args.dim, generator=generator, dtype=dtype)
    bank = bank_labels = proxies = None
    if setting.startswith("bank"):
        size = int(setting[len("bank") :])
        bank = torch.randn(size, args.dim, generator=generator, dtype=dtype)
        bank_labels = torch.randint(0, BANK_CLASSES, (size,), generator=generator)
    if name == "proxy_anchor":
        proxies = torch.randn(PROXY_CLASSES, args.dim, generator=generator, dtype=dtype)
    to = {"device": args.device}
    moved = [
        None if t is None else t.to(**to) for t in (embeddings, labels, bank, bank_labels, proxies)
    ]
    return (*moved, rows)


def measure_similarity(variant: str, name: str, setting: str, args) -> dict:
    """One (loss, setting, variant) in this process: time, peak memory, float32/64 values."""

    def build(dtype):
        embeddings, labels, bank, bank_labels, proxies, rows = _similarity_inputs(
            name, setting, args, dtype
        )
        embeddings.requires_grad_()
        if variant == "materialised":
            if name == "proxy_anchor":
                proxies.requires_grad_()

            def loss_of():
                return materialised_similarity_loss(
                    name, embeddings, labels, bank, bank_labels, proxies
                )
        else:
            loss_fn = _ours(name, proxies).to(device=args.device, dtype=dtype)

            def loss_of():
                if bank is None:
                    return loss_fn(embeddings, labels)
                return loss_fn(embeddings, labels, ref_embeddings=bank, ref_labels=bank_labels)

        return embeddings, loss_of, rows

    embeddings, loss_of, rows = build(torch.float32)
    value = []

    def step() -> None:
        embeddings.grad = None
        loss = loss_of()
        loss.backward()
        value.append(loss.item())

    for _ in range(max(1, args.warmup)):
        step()
    embeddings.grad = None
    if args.measure == "time":
        times = harness.time_steps(step, iters=args.iters, device=args.device)
        summary = harness.summarise_times(times)
        return {**summary, "best_ms": min(times) * 1e3, "loss": value[-1], "rows": rows}
    peak_extra, memory_method = harness.measure_peak_extra(step, device=args.device)
    _embeddings64, loss_of64, _ = build(torch.float64)
    value64 = loss_of64().item()
    return {
        "variant": variant,
        "loss_name": name,
        "setting": setting,
        "rows": rows,
        "peak_extra_mib": max(peak_extra, 0) / 2**20,
        "loss": value[-1],
        "loss64": value64,
        "memory_method": memory_method,
        "threads": torch.get_num_threads(),
    }


def _similarity_cases(args) -> list[tuple[str, str]]:
    cases = []
    for name in SIMILARITY_LOSSES:
        if name == "proxy_anchor":
            cases += [(name, "proxies256"), (name, f"proxies{max(args.labels) * args.instances}")]
        else:
            cases += [(name, "batch"), *[(name, f"bank{size}") for size in args.banks]]
    return cases


def run_similarity(args) -> list[dict]:
    results = []
    for name, setting in _similarity_cases(args):
        for variant in VARIANTS:
            arguments = ["--variant", variant, "--loss", name, "--setting", setting]
            arguments += ["--labels", *[str(p) for p in args.labels]]
            arguments += ["--instances", str(args.instances), "--dim", str(args.dim)]
            arguments += ["--device", args.device, "--iters", str(args.iters)]
            arguments += ["--warmup", str(args.warmup)]
            # Memory with every large block mapped from the OS (the high-water mark is then
            # the step's peak); time in a second process without that setting, which would
            # charge page faults to every freed-and-reallocated chunk buffer.
            result = harness.run_variant_or_exit(
                __file__,
                [*arguments, "--measure", "memory"],
                name=f"{variant!r} {name} {setting} (memory)",
                extra_env={"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
            )
            timing = harness.run_variant_or_exit(
                __file__, [*arguments, "--measure", "time"], name=f"{variant!r} {name} {setting}"
            )
            results.append({**result, **{k: v for k, v in timing.items() if k.endswith("_ms")}})
    return results


def _describe(setting: str, rows: int) -> str:
    if setting == "batch":
        return f"B={rows} vs batch"
    if setting.startswith("bank"):
        return f"B={rows} vs bank {int(setting[4:]):,}"
    return f"B={rows} vs C={PROXY_CLASSES:,}"


def print_similarity_table(results: list[dict], args) -> None:
    print(
        f"similarity losses forward+backward: D={args.dim}, float32, {args.device} "
        f"({results[0]['threads']} threads), median of {args.iters} after {args.warmup} warm-up; "
        f"memory: {results[0]['memory_method']}; values also in float64"
    )
    header = (
        f"{'loss':<17}{'setting':<24}{'variant':<13}{'time ms':>10}{'best ms':>9}"
        f"{'extra MiB':>11}{'time/mat':>10}{'mem/mat':>9}{'|Δ| float64':>13}"
    )
    harness.print_header(header)
    by_key = {(r["loss_name"], r["setting"], r["variant"]): r for r in results}
    failures = []
    for name, setting in _similarity_cases(args):
        reference = by_key[(name, setting, "materialised")]
        ours = by_key[(name, setting, "ours")]
        difference = abs(ours["loss64"] - reference["loss64"])
        if difference > 1e-5 * max(1.0, abs(reference["loss64"])):
            failures.append(f"{name} {setting}: {ours['loss64']} vs {reference['loss64']}")
        for variant in VARIANTS:
            result = by_key[(name, setting, variant)]
            print(
                f"{name:<17}{_describe(setting, result['rows']):<24}{variant:<13}"
                f"{result['median_ms']:>10.1f}{result['best_ms']:>9.1f}"
                f"{result['peak_extra_mib']:>11.1f}"
                f"{result['median_ms'] / reference['median_ms']:>10.2f}"
                f"{_ratio(result['peak_extra_mib'], reference['peak_extra_mib']):>9}"
                f"{difference if variant == 'ours' else 0.0:>13.1e}"
            )
    banks = sorted(args.banks)
    if len(banks) > 1:
        small, large = banks[0], banks[-1]
        print(
            f"memory growth bank {small:,}→{large:,} (×{large / small:g}; linear in R predicts the same):"
        )
        for name in SIMILARITY_LOSSES[:3]:
            for variant in VARIANTS:
                grow = _ratio(
                    by_key[(name, f"bank{large}", variant)]["peak_extra_mib"],
                    by_key[(name, f"bank{small}", variant)]["peak_extra_mib"],
                    digits=1,
                )
                print(f"  {name:<17}{variant:<13} ×{grow}")
    large = banks[-1]
    for name in SIMILARITY_LOSSES[:3]:
        ours, reference = (
            by_key[(name, f"bank{large}", "ours")],
            by_key[(name, f"bank{large}", "materialised")],
        )
        print(
            f"targets {name} at bank {large:,}: time/materialised <= 0.7 "
            f"({ours['median_ms'] / reference['median_ms']:.2f}), memory/materialised <= 0.25 "
            f"({_ratio(ours['peak_extra_mib'], reference['peak_extra_mib'])})"
        )
    if failures:
        sys.exit("float64 values differ: " + "; ".join(failures))
    print("float64 values of both variants equal to 1e-5 in every row")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--family", choices=("triplet", "similarity", "all"), default="all")
    parser.add_argument("--labels", type=int, nargs="+", default=None, help="the P values")
    parser.add_argument("--instances", type=int, default=8, help="K")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--banks", type=int, nargs="+", default=None, help="bank sizes R")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and 3 steps")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--loss", choices=SIMILARITY_LOSSES, help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=("memory", "time"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    harness.require_device(args.device)
    if args.quick:
        args.labels = args.labels or [8, 16, 32]
        args.banks = args.banks or [4096, 16384]
        args.iters, args.warmup = min(args.iters, 3), 1
    args.labels = args.labels or [32, 64, 128]
    args.banks = args.banks or [16384, 65536]
    if args.variant is not None:
        if args.loss is not None:
            print(json.dumps(measure_similarity(args.variant, args.loss, args.setting, args)))
        else:
            print(json.dumps(measure(args.variant, args.labels[0], args)))
        return
    if args.family in ("triplet", "all"):
        print_table(run_all(args), args)
    if args.family in ("similarity", "all"):
        if args.family == "all":
            print()
        print_similarity_table(run_similarity(args), args)


if __name__ == "__main__":
    main()
