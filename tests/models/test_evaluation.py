"""Evaluation helpers: pair-list verification, DDP de-duplication, raw-input baseline."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DistributedSampler

from marginkit.models.evaluation import (
    baseline_metrics,
    deduplicate_by_index,
    evaluate_embeddings,
    gather_and_deduplicate,
    metric_names,
)
from tests.helpers.spawn import run_on_ranks


def _data(n: int = 23, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=generator)
    embeddings = torch.randn(n, 5, generator=generator) + 2 * F.one_hot(labels, 5).float()
    first = torch.randint(0, n, (40,), generator=generator)
    second = torch.randint(0, n, (40,), generator=generator)
    pairs = SimpleNamespace(
        first=first, second=second, issame=labels[first] == labels[second], n_folds=4
    )
    return embeddings, labels, pairs


def _brute_force_precision_at_1(embeddings, labels) -> float:
    unit = F.normalize(embeddings.double(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-float("inf"))
    return (labels[similarity.argmax(1)] == labels).double().mean().item()


def test_evaluate_embeddings_against_independent_references():
    embeddings, labels, pairs = _data()
    result = evaluate_embeddings(embeddings, labels, pairs, top_k=(1, 3), far_targets=(0.1,))
    assert list(result) == metric_names((1, 3), (0.1,))
    assert result["precision@1"] == pytest.approx(_brute_force_precision_at_1(embeddings, labels))
    unit = F.normalize(embeddings.double(), dim=1)
    scores = (unit[pairs.first] * unit[pairs.second]).sum(1)
    assert result["auc"] == pytest.approx(roc_auc_score(pairs.issame.numpy(), scores.numpy()))


def test_the_result_does_not_depend_on_the_order_of_the_items():
    embeddings, labels, pairs = _data()
    order = torch.randperm(len(labels))
    reference = evaluate_embeddings(embeddings, labels, pairs)
    shuffled = deduplicate_by_index(embeddings[order], labels[order], order)
    again = evaluate_embeddings(*shuffled[:2], pairs, indices=shuffled.indices)
    assert again == reference
    # The same from unsorted rows with their indices, without de-duplicating first.
    assert evaluate_embeddings(embeddings[order], labels[order], pairs, indices=order)[
        "auc"
    ] == pytest.approx(reference["auc"])


def test_pairs_with_an_item_missing_are_left_out():
    embeddings, labels, pairs = _data()
    kept_items = torch.arange(0, 23, 2)  # a partial evaluation: every other item
    result = evaluate_embeddings(
        embeddings[kept_items], labels[kept_items], pairs, indices=kept_items
    )
    both = (pairs.first % 2 == 0) & (pairs.second % 2 == 0)
    unit = F.normalize(embeddings.double(), dim=1)
    scores = (unit[pairs.first[both]] * unit[pairs.second[both]]).sum(1)
    assert result["auc"] == pytest.approx(roc_auc_score(pairs.issame[both].numpy(), scores.numpy()))


def test_deduplicate_by_index_keeps_one_row_per_index_in_index_order():
    indices = torch.tensor([5, 2, 9, 2, 5, 0, 7])
    embeddings = indices.float().unsqueeze(1).repeat(1, 3)
    labels = indices * 10
    items = deduplicate_by_index(embeddings, labels, indices)
    expected = sorted(set(indices.tolist()))
    assert items.indices.tolist() == expected
    assert items.labels.tolist() == [10 * i for i in expected]
    assert items.embeddings[:, 0].tolist() == [float(i) for i in expected]


def _evaluate_on_rank(rank: int, world_size: int, n: int) -> dict[str, float]:
    embeddings, labels, pairs = _data(n)
    # What Lightning does to an evaluation split under DDP: a padded, unshuffled sampler.
    sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=False)
    mine = torch.tensor(list(sampler))
    assert len(mine) == -(-n // world_size)  # padded
    items = gather_and_deduplicate(embeddings[mine], labels[mine], mine)
    assert items.indices.tolist() == list(range(n))
    return evaluate_embeddings(items.embeddings, items.labels, pairs, indices=items.indices)


@pytest.mark.distributed
def test_two_ranks_with_padding_equal_one_process(tmp_path):
    n = 23  # odd: DistributedSampler pads one duplicate
    results = run_on_ranks(_evaluate_on_rank, 2, str(tmp_path), n)
    embeddings, labels, pairs = _data(n)
    single = evaluate_embeddings(embeddings, labels, pairs)
    assert results[0] == results[1] == single


def test_baseline_metrics_are_those_of_the_raw_inputs():
    from marginkit.data import DigitsDataModule

    dm = DigitsDataModule()
    dm.setup("test")
    x, y, indices = dm.test_set.tensors
    result = baseline_metrics(dm, "test", y, indices, top_k=(1,))
    assert result["precision@1"] == pytest.approx(_brute_force_precision_at_1(x, y))
    # The numbers for the raw standardised pixels of the digits test split.
    assert result["precision@1"] == pytest.approx(0.969, abs=5e-4)
    assert result["map@r"] == pytest.approx(0.625, abs=5e-4)
    assert baseline_metrics(SimpleNamespace(), "test", y, indices) is None
