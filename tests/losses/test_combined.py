"""Combined: the weighted sum of its parts, one head for the Lightning module and for Hydra."""

from __future__ import annotations

import functools

import hydra
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from marginkit import EmbeddingModule
from marginkit.losses import CenterLoss, COCOLoss, Combined, GitLoss, MPSLoss, RingLoss
from tests.losses.digits_training import assert_trains, train_on_digits


def test_value_is_the_weighted_sum_written_out():
    """COCO + center + ring, each term written out in float64 (not through the parts)."""
    coco, center, ring = COCOLoss(4, 3, alpha=3.0), CenterLoss(3, 4, lamda=0.5), RingLoss(1.0, 2.0)
    loss_fn = Combined([coco, center, ring], weights=[1.0, 0.25, 2.0]).double()
    x, labels = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1, 0])
    w, c = coco.weight.detach(), center.centers.detach()
    cos = (x / x.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T
    coco_rows = torch.logsumexp(3.0 * cos, dim=1) - 3.0 * cos[torch.arange(6), labels]
    center_rows = 0.25 * ((x - c[labels]) ** 2).sum(1)
    ring_rows = 0.5 * (x.norm(dim=1) - 2.0) ** 2
    expected = coco_rows.mean() + 0.25 * center_rows.mean() + 2.0 * ring_rows.mean()
    torch.testing.assert_close(loss_fn(x, labels), expected, rtol=1e-12, atol=1e-12)
    logs = loss_fn.last_logs
    assert logs["coco/loss"] == pytest.approx(float(coco_rows.mean()))
    assert logs["center/loss"] == pytest.approx(float(center_rows.mean()))
    assert logs["ring/loss"] == pytest.approx(float(ring_rows.mean()))
    assert logs["ring/radius"] == 2.0


def test_gradients_reach_every_part():
    loss_fn = Combined([COCOLoss(4, 3), CenterLoss(3, 4), RingLoss(r_init=1.0)])
    x = torch.randn(5, 4, requires_grad=True)
    loss_fn(x, torch.tensor([0, 1, 2, 0, 1])).backward()
    grads = {name: p.grad for name, p in loss_fn.named_parameters()}
    assert set(grads) == {"losses.0.weight", "losses.1.centers", "losses.2.radius"}
    assert all(
        g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values()
    )


def test_head_interface_comes_from_the_first_part_that_has_it():
    coco, center = COCOLoss(4, 3), CenterLoss(3, 4)
    loss_fn = Combined([center, coco])
    assert loss_fn.weight is coco.weight
    assert loss_fn.in_features == 4 and loss_fn.num_classes == 3
    x = torch.randn(2, 4)
    torch.testing.assert_close(loss_fn.logits(x), coco.logits(x))
    ring_only = Combined([RingLoss()])
    with pytest.raises(AttributeError):
        ring_only.weight  # noqa: B018
    with pytest.raises(AttributeError):
        ring_only.logits(x)


def test_logs_merge_parts_with_unique_prefixes():
    loss_fn = Combined([GitLoss(3, 2), GitLoss(3, 2, lamda_g=0.0)], weights=[1.0, 1.0])
    loss_fn(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))
    assert sorted(loss_fn.last_logs) == [
        "git/center", "git/loss", "git/push", "git_2/center", "git_2/loss", "git_2/push",
    ]  # fmt: skip
    assert loss_fn.last_logs["git_2/push"] == 0.0


def test_balanced_batches_propagate():
    assert not Combined([CenterLoss(3, 4)]).requires_balanced_batches
    both = Combined([COCOLoss(4, 3), MPSLoss()])
    assert both.requires_balanced_batches and both.min_instances_per_class == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="`losses` must hold at least one loss"):
        Combined([])
    with pytest.raises(TypeError, match=r"`losses\[1\]` must be an nn.Module"):
        Combined([CenterLoss(3, 4), "ring"])
    with pytest.raises(TypeError, match="`losses` must be a list"):
        Combined(CenterLoss(3, 4))
    with pytest.raises(ValueError, match="`weights` must have one entry per loss \\(2\\), got 1"):
        Combined([CenterLoss(3, 4), RingLoss()], weights=[1.0])
    with pytest.raises(ValueError, match="`weights\\[0\\]` must be >= 0"):
        Combined([CenterLoss(3, 4)], weights=[-1.0])
    with pytest.raises(ValueError, match="`weights\\[0\\]`"):
        Combined([CenterLoss(3, 4)], weights=[float("nan")])
    with pytest.raises(TypeError, match="`weights\\[0\\]`"):
        Combined([CenterLoss(3, 4)], weights=["1"])


def test_mismatched_reductions_are_an_error_not_a_broadcast():
    loss_fn = Combined([CenterLoss(3, 4, reduction="none"), RingLoss()])
    with pytest.raises(ValueError, match="`ring` returned \\(\\) and the ones before \\(5,\\)"):
        loss_fn(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))


YAML = """
_target_: marginkit.losses.Combined
losses:
  - _target_: marginkit.losses.COCOLoss
    in_features: 16
    num_classes: 6
  - _target_: marginkit.losses.CenterLoss
    num_classes: 6
    in_features: 16
    lamda: 0.01
weights: [1.0, 0.5]
"""


def test_hydra_config_is_a_list_of_target_nodes():
    loss_fn = hydra.utils.instantiate(OmegaConf.create(YAML), _convert_="all")
    assert isinstance(loss_fn, Combined)
    assert [type(p).__name__ for p in loss_fn.losses] == ["COCOLoss", "CenterLoss"]
    assert loss_fn.loss_weights == [1.0, 0.5]
    assert_trains(train_on_digits(loss_fn))


def test_lightning_module_trains_it_as_one_head(tmp_path):
    from marginkit.data import DigitsDataModule
    from marginkit.models.backbones import MLP

    loss_fn = hydra.utils.instantiate(OmegaConf.create(YAML), _convert_="all")
    module = EmbeddingModule(
        MLP(64, (32,), 16), loss_fn, optimizer=functools.partial(torch.optim.SGD, lr=0.1)
    )
    names = {name for name, _ in module.named_parameters()}
    assert {"loss.losses.0.weight", "loss.losses.1.centers"} <= names
    before = {k: v.detach().clone() for k, v in loss_fn.state_dict().items()}
    trainer = L.Trainer(
        fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    after = loss_fn.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    assert set(loss_fn.last_logs) == {"coco/loss", "center/loss"}


def test_class_level_attributes_read_as_plain_defaults():
    """The CLI reads `requires_balanced_batches` on the class, before any part exists."""
    assert Combined.requires_balanced_batches is False
    assert Combined.min_instances_per_class == 1
