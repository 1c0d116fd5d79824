"""``masked_similarity_reductions`` with the references sharded over 2 gloo ranks equals the op
on the whole reference set in one process (B-vectors combined, each rank's gradient its part)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from marginkit.ops import Exponent, masked_similarity_reductions
from tests.helpers.spawn import run_on_ranks

EXPONENTS = {"pos_exponent": Exponent(-2.0, 0.5), "neg_exponent": Exponent(6.0, 0.5)}


def _problem():
    generator = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(7, 4, generator=generator, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(11, 4, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 3, (7,), generator=generator)
    ref_labels = torch.randint(0, 3, (11,), generator=generator)
    weights = torch.randn(4, 7, generator=generator, dtype=torch.float64)
    return x, y, labels, ref_labels, weights


def _objective(outputs, weights):
    return sum((part * w).sum() for part, w in zip(outputs[:4], weights, strict=True))


def _sharded(rank, world_size):
    x, y, labels, ref_labels, weights = _problem()
    shard = slice(0, 5) if rank == 0 else slice(5, 11)  # uneven shards
    xs = x.clone().requires_grad_()
    ys = y[shard].clone().requires_grad_()
    outputs = masked_similarity_reductions(
        xs, ys, labels, ref_labels[shard], group=dist.group.WORLD, **EXPONENTS
    )
    _objective(outputs, weights).backward()
    return [part.detach() for part in outputs], xs.grad, ys.grad


def test_sharded_references_equal_the_whole_reference_set(tmp_path):
    results = run_on_ranks(_sharded, 2, str(tmp_path))
    x, y, labels, ref_labels, weights = _problem()
    xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
    expected = masked_similarity_reductions(xs, ys, labels, ref_labels, **EXPONENTS)
    _objective(expected, weights).backward()
    for rank in range(2):
        outputs, _grad_x, _grad_y = results[rank]
        for got, wanted in zip(outputs, expected, strict=True):
            torch.testing.assert_close(got, wanted.detach())
    # Each rank's embedding gradient is its shard's part: they sum to the whole one.
    torch.testing.assert_close(results[0][1] + results[1][1], xs.grad)
    torch.testing.assert_close(torch.cat([results[0][2], results[1][2]]), ys.grad)
