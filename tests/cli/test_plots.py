"""eval.py plot=true's pictures (marginkit.cli.plots), and the sweep summary's mean ± std."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from marginkit.cli.plots import write_plots
from marginkit.cli.sweep_summary import aggregate_over_seeds
from marginkit.data import sample_pairs


def test_write_plots_writes_the_three_pictures(tmp_path):
    labels = torch.arange(40) % 8
    images = torch.rand(40, 1, 8, 8)
    dataset = TensorDataset(images, labels, torch.arange(40))
    loader = SimpleNamespace(dataset=dataset)
    datamodule = SimpleNamespace(test_dataloader=lambda: loader, val_dataloader=lambda: loader)
    items = SimpleNamespace(embeddings=torch.randn(40, 4), labels=labels, indices=torch.arange(40))
    pairs = sample_pairs(labels, n_folds=2, pairs_per_fold=10, seed=0)
    written = write_plots(tmp_path, items, datamodule, "test", pairs, (0.1,))
    assert sorted(p.name for p in written) == ["cmc.png", "retrieval.png", "roc.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_vectors_that_are_not_images_get_no_retrieval_picture(tmp_path):
    labels = torch.arange(20) % 4
    dataset = TensorDataset(torch.rand(20, 7), labels, torch.arange(20))
    loader = SimpleNamespace(dataset=dataset)
    datamodule = SimpleNamespace(test_dataloader=lambda: loader, val_dataloader=lambda: loader)
    items = SimpleNamespace(embeddings=torch.randn(20, 4), labels=labels, indices=torch.arange(20))
    written = write_plots(tmp_path, items, datamodule, "val", None, (0.1,))
    assert [p.name for p in written] == ["cmc.png"]


def test_seeds_are_averaged_per_setting_with_the_sample_std():
    values = {"arcface": [0.5, 0.6, 0.8], "cosface": [0.4, 0.45, 0.41]}
    rows = [
        {"job": str(i), "status": "ok", "loss": loss, "seed": str(seed), "test/map@r": value}
        for i, (loss, seed, value) in enumerate(
            (loss, seed, v) for loss, vs in values.items() for seed, v in enumerate(vs)
        )
    ]
    rows.append({"job": "9", "status": "failed", "loss": "arcface", "seed": "3"})
    summary = aggregate_over_seeds(rows)
    assert [row["loss"] for row in summary] == ["arcface", "cosface"]
    for row in summary:
        assert row["n"] == 3
        np.testing.assert_allclose(row["test/map@r"], np.mean(values[row["loss"]]))
        np.testing.assert_allclose(row["test/map@r/std"], np.std(values[row["loss"]], ddof=1))


@pytest.mark.slow
def test_eval_with_plot_true_writes_the_pngs_beside_metrics_json(tmp_path):
    """eval.py's config path end to end: a digits checkpoint, plot=true, three PNGs."""
    import lightning as L
    from hydra import compose, initialize_config_dir

    from marginkit import EmbeddingModule
    from marginkit.cli.config import register_resolvers
    from marginkit.cli.evaluate import evaluate
    from marginkit.data import DigitsDataModule

    L.seed_everything(0, verbose=False)
    module = EmbeddingModule(
        {
            "_target_": "marginkit.models.backbones.MLP",
            "in_features": 64,
            "hidden": [],
            "embedding_dim": 16,
        },
        {"_target_": "marginkit.losses.ArcFaceLoss", "in_features": 16, "num_classes": 6, "s": 16},
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=DigitsDataModule())
    ckpt = tmp_path / "best.ckpt"
    trainer.save_checkpoint(ckpt)
    register_resolvers()
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[f"ckpt_path={ckpt}", "plot=true", f"paths.output_dir={tmp_path / 'eval'}"],
        )
    evaluate(cfg)
    written = sorted(p.name for p in (tmp_path / "eval").iterdir())
    assert {"metrics.json", "retrieval.png", "cmc.png", "roc.png"} <= set(written)
