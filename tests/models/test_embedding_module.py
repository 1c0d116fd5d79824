"""EmbeddingModule from plain Python (no Hydra), against brute-force retrieval references."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from marginkit import EmbeddingModule
from marginkit.data import DigitsDataModule
from marginkit.losses import ArcFaceLoss, CosFaceLoss, SoftmaxLoss
from marginkit.models import cosine_with_warmup, metric_mode
from marginkit.models.backbones import MLP


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


def _brute_force_precision_at_1(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    unit = F.normalize(embeddings.double(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-float("inf"))
    return (labels[similarity.argmax(dim=1)] == labels).double().mean().item()


@pytest.mark.parametrize("head", ["arcface", "cosface", "softmax"])
def test_fit_and_test_from_plain_python(head):
    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=64)
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
        x, y = dm.test_set.tensors
        expected = _brute_force_precision_at_1(module(x), y)
    assert module.test_metrics["test/precision@1"] == pytest.approx(expected, abs=1e-6)
    assert expected > 0.8  # learns something about unseen digits in 4 short epochs


def test_non_finite_loss_stops_training():
    class Broken(nn.Module):
        def forward(self, embeddings, labels):
            return embeddings.sum() * float("nan")

    module = EmbeddingModule(MLP(64, (16,), 8), Broken(), verification=False)
    with pytest.raises(FloatingPointError, match="training loss is nan at step 0"):
        _trainer(max_epochs=1, num_sanity_val_steps=0).fit(module, datamodule=DigitsDataModule())


def test_any_head_with_the_forward_contract_works():
    class Center(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.centers = nn.Parameter(torch.randn(6, 8))

        def forward(self, embeddings, labels):
            return (embeddings - self.centers[labels]).pow(2).sum(1).mean()

    module = EmbeddingModule(MLP(64, (16,), 8), Center(), top_k=(1,))
    _trainer(max_epochs=1, limit_train_batches=3).fit(module, datamodule=DigitsDataModule())
    assert "val/precision@1" in module.best_val_metrics


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
        ({"backbone": "mlp"}, TypeError, "`backbone` must be an nn.Module"),
        ({"loss": None}, TypeError, "`loss` must be an nn.Module"),
        ({"top_k": (1.5,)}, ValueError, "`top_k` must hold positive ints"),
        ({"far_targets": (2.0,)}, ValueError, r"`far_targets` must hold rates in \(0, 1\]"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    arguments = {"backbone": MLP(64, (16,), 8), "loss": SoftmaxLoss(8, 6), **kwargs}
    with pytest.raises(error, match=match):
        EmbeddingModule(**arguments)
