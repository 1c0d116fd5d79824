"""ShardedMarginHead on 2 gloo ranks (uneven class shards) against a float64 single-process formula.

Rank r holds 3 embeddings of its own; the global batch is both ranks' rows. The reference is the
combined-margin softmax cross-entropy written out here in float64 over the concatenated weights.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from marginkit.distributed.checkpoint import merge_shards, reshard
from marginkit.losses.sharded import ShardedMarginHead
from tests.helpers.float64_margin import angle_between, phi_of_theta
from tests.helpers.spawn import run_on_ranks

pytestmark = pytest.mark.distributed

NUM_CLASSES, DIM, ROWS_PER_RANK, WORLD = 7, 5, 3, 2  # shards of 4 and 3 classes
MARGINS, SCALE = (1.0, 0.5, 0.1), 8.0


def global_inputs():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(WORLD * ROWS_PER_RANK, DIM, generator=generator, dtype=torch.float64)
    weight = torch.randn(NUM_CLASSES, DIM, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 3, 4, 6, 1, 4])  # targets on both shards
    return embeddings, weight, labels


def reference(embeddings, weight, labels):
    """Float64 loss (mean) and gradients written out from the formula."""
    embeddings = embeddings.clone().requires_grad_()
    weight = weight.clone().requires_grad_()
    cos = F.normalize(embeddings, dim=1) @ F.normalize(weight, dim=1).T
    theta = angle_between(embeddings, weight[labels])
    phi = phi_of_theta(theta, *MARGINS, margin_fallback="monotonic")
    logits = SCALE * cos.clone()
    logits[torch.arange(len(labels)), labels] = SCALE * phi
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return loss.detach(), embeddings.grad, weight.grad


def _sharded_step(rank, world_size):
    embeddings, weight, labels = global_inputs()
    results = {}
    # The cosine path and the fused normalised-linear path of each shard.
    for memory_efficient in (False, True):
        head = ShardedMarginHead(
            DIM, NUM_CLASSES, *MARGINS, s=SCALE, memory_efficient=memory_efficient
        ).double()
        first, end = head.class_start, head.class_end
        with torch.no_grad():
            head.weight.copy_(weight[first:end])
        rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        local = embeddings[rows].clone().requires_grad_()
        loss = head(local, labels[rows])
        loss.backward()
        results[memory_efficient] = {
            "loss": loss.detach(),
            "grad_embeddings": local.grad,
            "grad_weight": head.weight.grad,
        }
    state = head.state_dict()  # a collective: every rank calls it
    return {"range": (first, end), "state": state, **results[False], "fused": results[True]}


def _partial_fc_steps(rank, world_size):
    """Two SGD steps with sample_rate=0.5: what moved, and the sampled rows."""
    torch.manual_seed(rank)
    embeddings, weight, labels = global_inputs()
    head = ShardedMarginHead(DIM, NUM_CLASSES, *MARGINS, s=SCALE, sample_rate=0.5).double()
    with torch.no_grad():
        head.weight.copy_(weight[head.class_start : head.class_end])
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    head.attach_optimizer(optimizer)
    rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
    history = []
    for _ in range(2):
        before = head.weight.detach().clone()
        momentum_before = {k: v.clone() for k, v in head._row_state.items()}
        optimizer.zero_grad()
        head(embeddings[rows], labels[rows]).backward()
        optimizer.step()
        history.append(
            {
                "index": head._active_index.clone(),
                "before": before,
                "after": head.weight.detach().clone(),
                "momentum_before": momentum_before,
                "momentum_after": {k: v.clone() for k, v in head._row_state.items()},
            }
        )
    return {"range": (head.class_start, head.class_end), "history": history}


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    return run_on_ranks(_sharded_step, WORLD, str(tmp_path_factory.mktemp("gloo")))


def test_shards_are_contiguous_and_uneven(sharded_results):
    assert [sharded_results[r]["range"] for r in range(WORLD)] == [(0, 4), (4, 7)]


def test_sharded_loss_and_gradients_equal_one_process_formula(sharded_results):
    loss, grad_embeddings, grad_weight = reference(*global_inputs())
    for rank in range(WORLD):
        result = sharded_results[rank]
        first, end = result["range"]
        torch.testing.assert_close(result["loss"], loss)
        rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        # The embedding gradient is scaled by the world size: DDP averages it back.
        torch.testing.assert_close(result["grad_embeddings"], WORLD * grad_embeddings[rows])
        torch.testing.assert_close(result["grad_weight"], grad_weight[first:end])
        fused = result["fused"]
        torch.testing.assert_close(fused["loss"], loss)
        torch.testing.assert_close(fused["grad_embeddings"], WORLD * grad_embeddings[rows])
        torch.testing.assert_close(fused["grad_weight"], grad_weight[first:end])


def test_single_process_head_equals_formula():
    embeddings, weight, labels = global_inputs()
    head = ShardedMarginHead(DIM, NUM_CLASSES, *MARGINS, s=SCALE).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    leaf = embeddings.clone().requires_grad_()
    loss = head(leaf, labels)
    loss.backward()
    ref_loss, ref_grad_embeddings, ref_grad_weight = reference(embeddings, weight, labels)
    torch.testing.assert_close(loss.detach(), ref_loss)
    torch.testing.assert_close(leaf.grad, ref_grad_embeddings)
    torch.testing.assert_close(head.weight.grad, ref_grad_weight)


def test_partial_fc_sample_rate_one_is_the_full_head():
    embeddings, weight, labels = global_inputs()
    full = ShardedMarginHead(DIM, NUM_CLASSES, *MARGINS, s=SCALE).double()
    sampled = ShardedMarginHead(DIM, NUM_CLASSES, *MARGINS, s=SCALE, sample_rate=1.0).double()
    with torch.no_grad():
        full.weight.copy_(weight)
        sampled.weight.copy_(weight)
    torch.testing.assert_close(full(embeddings, labels), sampled(embeddings, labels))


def test_partial_fc_touches_only_sampled_rows(tmp_path):
    results = run_on_ranks(_partial_fc_steps, WORLD, str(tmp_path))
    _, _, labels = global_inputs()
    for rank in range(WORLD):
        first, end = results[rank]["range"]
        local_positives = {int(y) - first for y in labels if first <= y < end}
        size = end - first
        for step in results[rank]["history"]:
            index = set(step["index"].tolist())
            assert local_positives <= index, "every positive class must be sampled"
            assert len(index) == max(math.ceil(0.5 * size), len(local_positives))
            unsampled = sorted(set(range(size)) - index)
            sampled = sorted(index)
            torch.testing.assert_close(step["after"][unsampled], step["before"][unsampled])
            assert not torch.equal(step["after"][sampled], step["before"][sampled])
            for key, after in step["momentum_after"].items():
                before = step["momentum_before"].get(key, torch.zeros_like(after))
                torch.testing.assert_close(after[unsampled], before[unsampled])


def test_checkpoint_of_two_ranks_merges_and_loads_into_one(sharded_results):
    state = sharded_results[0]["state"]
    assert sorted(state) == ["weight_shards.0", "weight_shards.1"]
    assert [tuple(state[f"weight_shards.{r}"].shape) for r in range(WORLD)] == [(4, DIM), (3, DIM)]
    embeddings, weight, labels = global_inputs()
    merged = merge_shards(state)
    torch.testing.assert_close(merged["weight"], weight)
    single = ShardedMarginHead(DIM, NUM_CLASSES, *MARGINS, s=SCALE).double()
    single.load_state_dict(merged)
    torch.testing.assert_close(single(embeddings, labels), reference(embeddings, weight, labels)[0])
    # The per-shard form loads too, and re-sharding for 3 ranks keeps the rows.
    direct = ShardedMarginHead(DIM, NUM_CLASSES, *MARGINS, s=SCALE).double()
    direct.load_state_dict(state)
    torch.testing.assert_close(direct.weight, weight)
    three = reshard(state, 3)
    assert [tuple(three[f"weight_shards.{r}"].shape) for r in range(3)] == [(3, 5), (2, 5), (2, 5)]
    torch.testing.assert_close(merge_shards(three)["weight"], weight)


def test_checkpoint_of_another_class_count_fails_naming_both():
    head = ShardedMarginHead(DIM, NUM_CLASSES, *MARGINS, s=SCALE).double()
    with pytest.raises(RuntimeError, match=r"\(9, 5\) class weights .* expects \(7, 5\)"):
        head.load_state_dict({"weight_shards.0": torch.zeros(9, DIM, dtype=torch.float64)})
