"""`python train.py loss=<name> trainer.fast_dev_run=true` for every conf/loss/*.yaml.

Run in-process: Hydra composes ``conf/train.yaml`` as ``train.py`` would and
:func:`marginkit.cli.train.train` fits one batch, validates and tests. Every YAML present is
picked up (heads, regularisers and pair losses alike).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from marginkit.cli import register_resolvers, train

CONF = Path(__file__).resolve().parents[2] / "conf"
LOSS_CONFIGS = sorted(path.stem for path in (CONF / "loss").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSS_CONFIGS)
def test_every_loss_config_trains_one_batch(loss, tmp_path):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"loss={loss}",
                "trainer.fast_dev_run=true",
                "logger=none",
                f"paths.output_dir={tmp_path}",
            ],
        )
    metrics = train(cfg)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written.keys() == metrics.keys()
    for key in ("test/precision@1", "test/map@r"):
        assert key in metrics and math.isfinite(metrics[key]) and 0.0 <= metrics[key] <= 1.0
