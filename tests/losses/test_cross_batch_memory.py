"""CrossBatchMemory: the FIFO queue, the loss against it (a float64 loop over anchors and the
queue's slots, the anchor's own slot excluded), enqueue_mask, reset, checkpoints, a miner, and
2 gloo ranks enqueueing the all-gathered batch."""

from __future__ import annotations

import pytest
import torch

from marginkit.losses import CrossBatchMemory, MultiSimilarityLoss, NTXentLoss, SupConLoss
from tests.helpers.spawn import run_on_ranks
from tests.losses import float64_pairs as ref


def _ms_against_queue(x, labels, queue, queue_labels, own_slots):
    """MultiSimilarity per anchor against the queue, each anchor's own slot left out."""
    u, r = ref.unit(list(x)), ref.unit(list(queue))
    losses = []
    for i in range(len(u)):
        pos = ref.zero()
        neg = ref.zero()
        for j in range(len(r)):
            if own_slots is not None and j == own_slots[i]:
                continue
            s = ref.value(u[i], r[j], "cosine")
            if labels[i] == queue_labels[j]:
                pos = pos + torch.exp(-2.0 * (s - 0.5))
            else:
                neg = neg + torch.exp(50.0 * (s - 0.5))
        losses.append(torch.log(1 + pos) / 2.0 + torch.log(1 + neg) / 50.0)
    return sum(losses) / len(losses)


def _batches(n_batches=4, size=6, dim=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, dim, generator=generator, dtype=torch.float64),
            torch.randint(0, 3, (size,), generator=generator),
        )
        for _ in range(n_batches)
    ]


def test_queue_is_fifo_and_the_loss_uses_it_without_self_pairs():
    memory = CrossBatchMemory(MultiSimilarityLoss(), embedding_size=3, memory_size=10).double()
    queue, queue_labels, written = [None] * 10, [None] * 10, 0
    for x, labels in _batches():
        own = [(written + i) % 10 for i in range(len(labels))]
        for row, label in zip(x, labels.tolist(), strict=True):
            queue[written % 10], queue_labels[written % 10] = row, label
            written += 1
        filled = min(written, 10)
        queue_rows, queue_row_labels = torch.stack(queue[:filled]), queue_labels[:filled]
        v = x.clone().requires_grad_()
        loss = memory(v, labels)
        expected = _ms_against_queue(x, labels.tolist(), queue_rows, queue_row_labels, own)
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(memory.embedding_memory[:filled], queue_rows)
        loss.backward()  # the gradient reaches the batch only (the queue is detached)
        assert v.grad is not None and not memory.embedding_memory.requires_grad
    assert bool(memory.has_been_filled) and int(memory.queue_idx) == 24 % 10


def test_enqueue_mask_enqueues_keys_and_scores_queries():
    memory = CrossBatchMemory(SupConLoss(), embedding_size=3, memory_size=8).double()
    ((x, labels),) = _batches(1, size=6)
    mask = torch.tensor([True, False, True, False, True, False])
    loss = memory(x, labels, enqueue_mask=mask)
    assert int(memory.queue_idx) == 3
    torch.testing.assert_close(memory.embedding_memory[:3], x[mask])
    expected = ref.supcon(
        list(x[~mask]), labels[~mask].tolist(), 0.1, refs=list(x[mask]),
        ref_labels=labels[mask].tolist(),
    )  # fmt: skip
    torch.testing.assert_close(loss, expected)


def test_state_is_in_the_state_dict_and_resume_continues_the_queue():
    batches = _batches(5)
    straight = CrossBatchMemory(NTXentLoss(), embedding_size=3, memory_size=16).double()
    for x, labels in batches[:3]:
        straight(x, labels)
    resumed = CrossBatchMemory(NTXentLoss(), embedding_size=3, memory_size=16).double()
    resumed.load_state_dict(straight.state_dict())
    assert set(straight.state_dict()) == {
        "embedding_memory", "label_memory", "queue_idx", "has_been_filled"
    }  # fmt: skip
    for x, labels in batches[3:]:
        torch.testing.assert_close(resumed(x, labels), straight(x, labels))
    resumed.reset_queue()
    assert int(resumed.queue_idx) == 0 and not bool(resumed.has_been_filled)
    assert resumed.embedding_memory.abs().sum() == 0


def test_a_miner_sees_the_queue_and_self_pairs_are_removed():
    seen = {}

    def miner(embeddings, labels, ref_embeddings, ref_labels):
        seen["refs"] = len(ref_labels)
        rows, cols = torch.meshgrid(
            torch.arange(len(labels)), torch.arange(len(ref_labels)), indexing="ij"
        )
        same = labels[:, None] == ref_labels[None, :]
        return rows[same], cols[same], rows[~same], cols[~same]

    memory = CrossBatchMemory(MultiSimilarityLoss(), 3, memory_size=12, miner=miner).double()
    plain = CrossBatchMemory(MultiSimilarityLoss(), 3, memory_size=12).double()
    for x, labels in _batches(3):
        torch.testing.assert_close(memory(x, labels), plain(x, labels))
    assert seen["refs"] == 12


def test_bad_arguments():
    with pytest.raises(TypeError, match="`loss`"):
        CrossBatchMemory(torch.nn.MSELoss(), 3)
    from marginkit.losses import LiftedStructureLoss

    with pytest.raises(TypeError, match="`loss`"):
        CrossBatchMemory(LiftedStructureLoss(), 3)
    memory = CrossBatchMemory(MultiSimilarityLoss(), 3, memory_size=4)
    with pytest.raises(ValueError, match="`memory_size`"):
        memory(torch.randn(6, 3), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="`embeddings`"):
        memory(torch.randn(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="`enqueue_mask`"):
        memory(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), enqueue_mask=torch.ones(2))
    with pytest.raises(ValueError, match="`indices_tuple`"):
        memory(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), indices_tuple=())


def _two_ranks(rank, world_size, batches):
    torch.manual_seed(0)
    memory = CrossBatchMemory(MultiSimilarityLoss(), embedding_size=3, memory_size=20).double()
    losses = []
    for step_batches in batches:
        x, labels = step_batches[rank]
        losses.append(memory(x, labels).detach())
    return {"losses": losses, "state": memory.state_dict()}


def test_two_gloo_ranks_hold_the_same_queue(tmp_path):
    """Each rank enqueues the all-gathered batch (rank order); its loss is its rows vs the queue."""
    steps = [
        [_batches(1, size=4, seed=10 * step + rank)[0] for rank in range(2)] for step in range(3)
    ]
    results = run_on_ranks(_two_ranks, 2, str(tmp_path), steps)
    for key in ("embedding_memory", "label_memory", "queue_idx", "has_been_filled"):
        torch.testing.assert_close(results[0]["state"][key], results[1]["state"][key])
    # The same ring of 20 slots in one process: both ranks' rows in rank order, step by step.
    queue, queue_labels, written = [None] * 20, [None] * 20, 0
    for step, per_rank in enumerate(steps):
        start = written
        for x, labels in per_rank:
            for row, label in zip(x, labels.tolist(), strict=True):
                queue[written % 20], queue_labels[written % 20] = row, label
                written += 1
        filled = min(written, 20)
        for rank in range(2):
            x, labels = per_rank[rank]
            own = [(start + 4 * rank + i) % 20 for i in range(4)]
            expected = _ms_against_queue(
                x, labels.tolist(), torch.stack(queue[:filled]), queue_labels[:filled], own
            )
            torch.testing.assert_close(results[rank]["losses"][step], expected)
    torch.testing.assert_close(results[0]["state"]["embedding_memory"], torch.stack(queue))
