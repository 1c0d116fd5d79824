"""Host reads per training step of the sharded head: the label and finite checks share one.

Counted as the dispatches of ``aten._local_scalar_dense`` / ``aten.is_nonzero`` /
``aten.item`` (what ``.item()`` and ``bool(tensor)`` run; each is a device-to-host sync on a
GPU). The head flags out-of-range labels with a NaN loss instead of reading the device, so one
finite check of the loss is the only read; only when it fails is the label range read to name
the culprit. (The row-count and shard-size exchanges of a multi-rank step are separate
collectives, not checks.)
"""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from marginkit.losses import ShardedMarginHead

HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.item.default,
}


class CountHostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in HOST_READS
        return func(*args, **(kwargs or {}))


def _step(head, labels):
    embeddings = torch.randn(6, 8, requires_grad=True)
    with CountHostReads() as reads:
        loss = head(embeddings, labels)
        loss.backward()
        finite = bool(torch.isfinite(loss.detach()).all())  # the training loop's one check
    return loss, finite, reads.count


def test_label_and_finite_checks_cost_one_host_read_per_step():
    head = ShardedMarginHead(8, 10, s=16.0)
    _loss, finite, reads = _step(head, torch.tensor([0, 1, 2, 3, 4, 9]))
    assert finite and reads == 1


def test_an_out_of_range_label_makes_the_loss_nan_and_is_named_on_failure():
    head = ShardedMarginHead(8, 10, s=16.0)
    loss, finite, reads = _step(head, torch.tensor([0, 1, 2, 10, 4, 9]))
    assert not finite and reads == 1 and torch.isnan(loss)
    with pytest.raises(ValueError, match=re.escape("`labels` must be in [0, 10), got 10 at row 3")):
        head.check_last_labels()


def test_the_module_reports_the_bad_label_instead_of_a_nan_loss():
    from marginkit import EmbeddingModule
    from marginkit.models.backbones import MLP

    module = EmbeddingModule(MLP(8, [], 8), ShardedMarginHead(8, 10, s=16.0))
    batch = (torch.randn(4, 8), torch.tensor([0, 1, -3, 2]))
    with pytest.raises(ValueError, match=re.escape("got -3 at row 2")):
        module.training_step(batch, 0)
