"""EmbeddingModule from plain Python (no Hydra), against brute-force and scikit-learn references."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Subset

from marginkit import EmbeddingModule
from marginkit.data import DigitsDataModule
from marginkit.losses import ArcFaceLoss, CosFaceLoss, SoftmaxLoss
from marginkit.models import cosine_with_warmup, metric_mode
from marginkit.models.backbones import MLP

BACKBONE = {
    "_target_": "marginkit.models.backbones.MLP",
    "in_features": 64,
    "hidden": [32],
    "embedding_dim": 16,
}
LOSS = {"_target_": "marginkit.losses.ArcFaceLoss", "in_features": 16, "num_classes": 6, "s": 16.0}


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


def _digits(**kwargs) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.setup("fit")
    return dm


def _brute_force_precision_at_1(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    unit = F.normalize(embeddings.double(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-float("inf"))
    return (labels[similarity.argmax(dim=1)] == labels).double().mean().item()


@pytest.mark.parametrize("head", ["arcface", "cosface", "softmax"])
def test_fit_and_test_from_plain_python(head):
    L.seed_everything(0, verbose=False)
    dm = _digits(batch_size=64)
    backbone = MLP(64, (128,), 32)
    loss = {
        "arcface": lambda: ArcFaceLoss(32, dm.num_classes, m=0.5, s=30.0),
        "cosface": lambda: CosFaceLoss(32, dm.num_classes, m=0.35, s=30.0),
        "softmax": lambda: SoftmaxLoss(32, dm.num_classes),
    }[head]()
    module = EmbeddingModule(
        backbone,
        loss,
        optimizer=functools.partial(torch.optim.AdamW, lr=2e-3),
        scheduler=functools.partial(cosine_with_warmup, warmup_steps=2),
        top_k=(1, 5),
    )
    trainer = _trainer(max_epochs=4)
    trainer.fit(module, datamodule=dm)
    assert set(module.best_val_metrics) == set(module.metric_names("val"))
    assert trainer.callback_metrics["train/loss"].isfinite()
    trainer.test(module, datamodule=dm, verbose=False)
    # The logged test precision@1 equals a brute-force computation on the test embeddings.
    module.eval()
    with torch.no_grad():
        x, y, _ = dm.test_set.tensors
        expected = _brute_force_precision_at_1(module(x), y)
    assert module.test_metrics["test/precision@1"] == pytest.approx(expected, abs=1e-6)
    assert expected > 0.8  # learns something about unseen digits in 4 short epochs


class _ShuffledTestDigits(DigitsDataModule):
    """The digits with the test split served in a shuffled order."""

    def test_dataloader(self) -> DataLoader:
        order = torch.randperm(len(self.test_set), generator=torch.Generator().manual_seed(3))
        return DataLoader(Subset(self.test_set, order.tolist()), batch_size=self.eval_batch_size)


def test_verification_scores_exactly_the_pair_list_whatever_the_batching():
    torch.manual_seed(0)
    module = EmbeddingModule(MLP(64, (32,), 16), SoftmaxLoss(16, 6), top_k=(1,))
    results = []
    for dm in (_digits(eval_batch_size=512), _digits(eval_batch_size=7), _ShuffledTestDigits()):
        dm.setup("test")
        _trainer().test(module, datamodule=dm, verbose=False)
        results.append(module.test_metrics)
    assert results[0] == results[1] == results[2]
    # Independent reference: cosine of each listed pair, scikit-learn's AUC.
    dm = _digits()
    dm.setup("test")
    pairs = dm.verification_pairs("test")
    x, _, _ = dm.test_set.tensors
    module.eval()
    with torch.no_grad():
        unit = F.normalize(module(x).double(), dim=1)
    first, second = torch.as_tensor(pairs.first), torch.as_tensor(pairs.second)
    scores = (unit[first] * unit[second]).sum(1)
    expected_auc = roc_auc_score(torch.as_tensor(pairs.issame).numpy(), scores.numpy())
    assert results[0]["test/auc"] == pytest.approx(expected_auc, abs=1e-5)


def test_load_from_checkpoint_rebuilds_the_model_alone(tmp_path):
    L.seed_everything(0, verbose=False)
    module = EmbeddingModule(
        BACKBONE,
        LOSS,
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3},
        top_k=(1,),
    )
    trainer = _trainer(max_epochs=1, limit_train_batches=3, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=_digits())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    stored = torch.load(path, weights_only=True)  # plain containers and tensors only
    assert stored["hyper_parameters"]["loss"] == LOSS
    loaded = EmbeddingModule.load_from_checkpoint(path)
    assert isinstance(loaded.loss, ArcFaceLoss) and loaded.loss.num_classes == 6
    x = torch.randn(5, 64)
    module.eval(), loaded.eval()
    assert torch.equal(module(x), loaded(x))
    assert loaded.best_val_metrics == module.best_val_metrics


def test_checkpoints_carry_the_input_shape_and_the_data_settings(tmp_path):
    module = EmbeddingModule(BACKBONE, LOSS, top_k=(1,))
    module.data_config = {"_target_": "marginkit.data.DigitsDataModule", "batch_size": 32}
    trainer = _trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=_digits())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = EmbeddingModule.load_from_checkpoint(path, weights_only=True)
    assert loaded.input_shape == (64,)  # one digits item: a flat 8x8 image
    assert loaded.data_config == module.data_config


@pytest.mark.parametrize("form", ["two shards", "merged"])
def test_a_model_parallel_checkpoint_loads_in_one_process(tmp_path, form):
    """The per-shard form (any world size) and the merged form both load, with equal weights."""
    import lightning

    from marginkit.distributed.checkpoint import merge_shards, reshard

    sharded_loss = {
        "_target_": "marginkit.losses.ShardedMarginHead",
        "in_features": 16,
        "num_classes": 7,
        "s": 16.0,
    }
    module = EmbeddingModule(BACKBONE, sharded_loss, top_k=(1,))
    state = module.state_dict()
    weight = state["loss.weight_shards.0"]
    state = reshard(state, 2) if form == "two shards" else merge_shards(state)
    assert ("loss.weight_shards.1" in state) == (form == "two shards")
    path = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    loaded = EmbeddingModule.load_from_checkpoint(path, weights_only=True)
    assert torch.equal(loaded.loss.weight, weight)
    x = torch.randn(3, 64)
    assert torch.equal(loaded.eval()(x), module.eval()(x))
    with pytest.raises(ValueError, match=r"\(7, 16\) vs \(9, 16\)"):
        EmbeddingModule.load_from_checkpoint(path, loss={**sharded_loss, "num_classes": 9})


def test_a_checkpoint_of_another_model_fails_naming_both(tmp_path):
    module = EmbeddingModule(BACKBONE, LOSS, top_k=(1,))
    trainer = _trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=_digits())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(ValueError, match=r"num_classes=6.*this module.*num_classes=10.*\(6, 16\)"):
        EmbeddingModule.load_from_checkpoint(path, loss={**LOSS, "num_classes": 10})
    with pytest.raises(ValueError, match=r"hidden=\[32\].*this module.*hidden=\[64\]"):
        EmbeddingModule.load_from_checkpoint(path, backbone={**BACKBONE, "hidden": [64]})


def test_a_module_built_from_objects_says_how_to_load_it(tmp_path):
    module = EmbeddingModule(MLP(64, (32,), 16), SoftmaxLoss(16, 6), top_k=(1,))
    trainer = _trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=_digits())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(TypeError, match="pass `backbone=` and `loss=`"):
        EmbeddingModule.load_from_checkpoint(path)
    loaded = EmbeddingModule.load_from_checkpoint(
        path, backbone=MLP(64, (32,), 16), loss=SoftmaxLoss(16, 6)
    )
    torch.testing.assert_close(loaded.loss.weight, module.loss.weight)


def test_non_finite_loss_stops_with_the_step_and_the_last_finite_loss():
    class BreaksAtStep3(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, embeddings, labels):
            self.calls += 1
            loss = embeddings.pow(2).mean()
            return loss * float("nan") if self.calls == 4 else loss

    module = EmbeddingModule(MLP(64, (16,), 8), BreaksAtStep3(), verification=False)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3 .*last finite loss was"):
        _trainer(max_epochs=1, num_sanity_val_steps=0).fit(module, datamodule=_digits())


def test_non_finite_loss_can_skip_the_batch():
    class NanEveryOther(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, embeddings, labels):
            self.calls += 1
            loss = embeddings.pow(2).mean()
            return loss * float("nan") if self.calls % 2 == 0 else loss

    module = EmbeddingModule(
        MLP(64, (16,), 8), NanEveryOther(), verification=False, on_nonfinite_loss="skip"
    )
    trainer = _trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=0)
    with pytest.warns(UserWarning, match="skipped a batch"):
        trainer.fit(module, datamodule=_digits())
    assert trainer.callback_metrics["train/skipped_batches"] == 3  # batches 2, 4 and 6
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_a_loss_s_last_logs_are_logged_under_train():
    class WithLogs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.last_logs: dict[str, float] = {}

        def forward(self, embeddings, labels):
            self.last_logs = {"mean_norm": float(embeddings.detach().norm(dim=1).mean())}
            return embeddings.pow(2).mean()

    module = EmbeddingModule(MLP(64, (16,), 8), WithLogs(), verification=False)
    trainer = _trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=_digits())
    assert "train/mean_norm" in trainer.callback_metrics


def test_any_head_with_the_forward_contract_works():
    class Center(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.centers = nn.Parameter(torch.randn(6, 8))

        def forward(self, embeddings, labels):
            return (embeddings - self.centers[labels]).pow(2).sum(1).mean()

    module = EmbeddingModule(MLP(64, (16,), 8), Center(), top_k=(1,))
    _trainer(max_epochs=1, limit_train_batches=3).fit(module, datamodule=_digits())
    assert "val/precision@1" in module.best_val_metrics


def test_verification_true_without_a_pair_list_is_an_error():
    class NoPairs(DigitsDataModule):
        def verification_pairs(self, stage):
            return None

    module = EmbeddingModule(MLP(64, (16,), 8), SoftmaxLoss(8, 6), verification=True)
    with pytest.raises(ValueError, match="has no verification pair list"):
        _trainer().test(module, datamodule=NoPairs(), verbose=False)
    module = EmbeddingModule(MLP(64, (16,), 8), SoftmaxLoss(8, 6), verification=None)
    _trainer().test(module, datamodule=NoPairs(), verbose=False)
    assert "test/auc" not in module.test_metrics and "test/map@r" in module.test_metrics


def test_metric_names_and_modes():
    module = EmbeddingModule(
        MLP(64, (16,), 8), SoftmaxLoss(8, 6), top_k=(1, 3), far_targets=(1e-3,)
    )
    names = module.metric_names("val")
    assert {"val/precision@3", "val/cmc@1", "val/map@3", "val/map@r", "val/tar@far=0.001"} <= set(
        names
    )
    assert metric_mode("val/eer") == "min" and metric_mode("val/map@r") == "max"


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"monitor": "val/precision@7"}, ValueError, "`monitor` must be one of"),
        ({"backbone": "mlp"}, TypeError, "`backbone` must be an nn.Module or a `_target_`"),
        ({"loss": None}, TypeError, "`loss` is None"),
        ({"loss": {"s": 1.0}}, TypeError, "`loss` config must have a `_target_`"),
        (
            {"loss": {**LOSS, "m": -0.5}},
            ValueError,
            r"`loss` \(marginkit.losses.ArcFaceLoss\): `m` must be in",
        ),
        ({"top_k": (1.5,)}, ValueError, "`top_k` must hold positive ints"),
        ({"far_targets": (2.0,)}, ValueError, r"`far_targets` must hold rates in \(0, 1\]"),
        ({"on_nonfinite_loss": "ignore"}, ValueError, "`on_nonfinite_loss` must be one of"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    arguments = {"backbone": MLP(64, (16,), 8), "loss": SoftmaxLoss(8, 6), **kwargs}
    with pytest.raises(error, match=match):
        EmbeddingModule(**arguments)
