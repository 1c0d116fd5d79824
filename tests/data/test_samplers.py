"""BalancedBatchSampler: P×K balance, coverage, determinism, DDP disjointness, len, errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from marginkit.data import BalancedBatchSampler


def _labels(sizes: list[int], seed: int = 0) -> np.ndarray:
    """Class ``c`` has ``sizes[c]`` items, in a shuffled dataset order."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(seed).permutation(labels)


def _largest_batch_count_by_search(chunks: list[int], n_labels: int) -> int:
    """Brute force: the most batches of P distinct classes, greedy largest-first (optimal)."""
    remaining = sorted(chunks, reverse=True)
    count = 0
    while sum(1 for c in remaining if c > 0) >= n_labels:
        for i in range(n_labels):
            remaining[i] -= 1
        remaining.sort(reverse=True)
        count += 1
    return count


@pytest.mark.parametrize(
    "sizes,n_labels,n_instances",
    [
        ([8] * 6, 3, 4),  # every class a multiple of K
        ([10, 7, 9, 12, 5, 8], 3, 4),  # short last chunks
        ([1, 2, 9, 9, 9, 3], 2, 4),  # classes smaller than K are repeated
        ([40, 3, 3, 3], 2, 2),  # one class outweighs the rest
        ([5, 5, 5], 3, 5),  # P = every class
    ],
)
def test_batches_are_balanced_and_cover_the_epoch(sizes, n_labels, n_instances):
    labels = _labels(sizes)
    sampler = BalancedBatchSampler(labels, n_labels, n_instances, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    chunks = [-(-s // n_instances) for s in sizes]
    assert len(sampler) == _largest_batch_count_by_search(chunks, n_labels)
    for batch in batches:
        per_class = Counter(labels[batch].tolist())
        assert len(per_class) == n_labels
        assert set(per_class.values()) == {n_instances}
        for label in per_class:  # no item twice in a batch unless its class is smaller than K
            items = [i for i in batch if labels[i] == label]
            if sizes[label] >= n_instances:
                assert len(set(items)) == n_instances
    # Coverage: only the chunks that cannot fit are missing — at most P - 1 chunks of leftovers
    # plus, per class, its chunks beyond the number of batches.
    seen = {i for batch in batches for i in batch}
    n_batches = len(batches)
    fitting = sum(min(c, n_batches) for c in chunks)
    assert fitting - n_batches * n_labels < n_labels
    max_unseen = (
        sum(max(0, s - min(c, n_batches) * n_instances) for s, c in zip(sizes, chunks, strict=True))
        + (fitting - n_batches * n_labels) * n_instances
    )
    assert len(labels) - len(seen) <= max_unseen
    if sizes == [8] * 6:  # everything fits: every item exactly once
        assert sorted(i for batch in batches for i in batch) == list(range(len(labels)))


def test_every_item_is_seen_when_chunks_fit():
    sizes = [12, 8, 8, 4, 4, 4]  # 3 + 2 + 2 + 1 + 1 + 1 = 10 chunks of 4 = 5 batches of P = 2
    labels = _labels(sizes)
    sampler = BalancedBatchSampler(labels, 2, 4)
    items = sorted(i for batch in sampler for i in batch)
    assert items == list(range(len(labels)))


def test_small_classes_are_repeated_not_dropped():
    labels = _labels([1, 2, 8, 8])
    sampler = BalancedBatchSampler(labels, 2, 4)
    seen = Counter(i for epoch in range(20) for batch in _epoch(sampler, epoch) for i in batch)
    for small in np.flatnonzero(labels < 2):
        assert seen[int(small)] > 0


def _epoch(sampler: BalancedBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_deterministic_per_seed_and_epoch():
    labels = _labels([10, 7, 9, 12, 5, 8])
    first = BalancedBatchSampler(labels, 3, 4, seed=7)
    second = BalancedBatchSampler(labels, 3, 4, seed=7)
    assert _epoch(first, 2) == _epoch(second, 2)
    assert list(first) == list(second)  # iterating twice gives the same epoch
    assert _epoch(first, 2) != _epoch(first, 3)
    assert _epoch(BalancedBatchSampler(labels, 3, 4, seed=8), 2) != _epoch(first, 2)


@pytest.mark.parametrize("drop_last", [True, False])
def test_two_ranks_get_disjoint_batches_of_the_same_count(drop_last):
    sizes = [8, 8, 8, 8, 8, 12, 4]  # multiples of K: no padding repeats across chunks
    labels = _labels(sizes)
    ranks = [
        BalancedBatchSampler(labels, 3, 4, drop_last, seed=1, num_replicas=2, rank=r)
        for r in (0, 1)
    ]
    for sampler in ranks:
        sampler.set_epoch(5)
    batches = [list(sampler) for sampler in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == len(ranks[1])
    single = BalancedBatchSampler(labels, 3, 4, drop_last, seed=1, num_replicas=1, rank=0)
    n_global = len(single)
    expected = n_global // 2 if drop_last else -(-n_global // 2)
    assert len(ranks[0]) == expected
    items = [{i for batch in rank_batches for i in batch} for rank_batches in batches]
    if drop_last or n_global % 2 == 0:
        assert not items[0] & items[1]
    # The ranks' batches are batches of the same global epoch.
    single.set_epoch(5)
    global_batches = [tuple(b) for b in single]
    assert {tuple(b) for rank_batches in batches for b in rank_batches} <= set(global_batches)


def test_drop_last_false_yields_the_leftover_batch():
    sizes = [4, 4, 4, 4, 4]  # 5 chunks, P = 2: 2 full batches + one batch of 1 class
    labels = _labels(sizes)
    kept = BalancedBatchSampler(labels, 2, 4, drop_last=False)
    dropped = BalancedBatchSampler(labels, 2, 4, drop_last=True)
    assert (len(kept), len(dropped)) == (3, 2)
    assert sorted(len(b) for b in kept) == [4, 8, 8]
    assert sorted(i for b in kept for i in b) == list(range(20))


def test_reads_the_layout_from_torch_distributed_when_not_given():
    sampler = BalancedBatchSampler(_labels([4, 4]), 2, 2)
    assert (sampler.num_replicas, sampler.rank) == (1, 0)


def test_works_as_a_dataloader_batch_sampler():
    labels = torch.as_tensor(_labels([6, 6, 6, 6]))
    dataset = TensorDataset(torch.arange(len(labels)), labels)
    loader = DataLoader(dataset, batch_sampler=BalancedBatchSampler(labels, 2, 3))
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    for _, batch_labels in batches:
        assert sorted(Counter(batch_labels.tolist()).values()) == [3, 3]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_labels": 5}, "`n_labels` must be at most the number of classes"),
        ({"n_instances": 9}, "`n_instances` must be at most the size of the largest class"),
        ({"n_labels": 0}, "`n_labels` must be positive"),
        ({"n_instances": 0}, "`n_instances` must be positive"),
        ({"rank": 2, "num_replicas": 2}, r"`rank` must be in \[0, 2\)"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    arguments = {"labels": _labels([8, 5, 3, 2]), "n_labels": 2, "n_instances": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        BalancedBatchSampler(**arguments)


def test_bad_labels():
    with pytest.raises(ValueError, match="`labels` must hold integer"):
        BalancedBatchSampler(torch.rand(8), 2, 2)
    with pytest.raises(ValueError, match="`labels` must be 1-D"):
        BalancedBatchSampler(np.zeros((4, 2), dtype=int), 1, 2)
    with pytest.raises(TypeError, match="`seed` must be an int"):
        BalancedBatchSampler([0, 0, 1, 1], 2, 2, seed=0.5)
