"""Every config group composes, resolves and instantiates (lightning-hydra-template style)."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from marginkit.cli import build, register_resolvers

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in {"hydra"})


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str], output_dir: Path):
    """Compose train.yaml as a run would, with the run directory pinned to ``output_dir``."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in GROUPS for o in _options(g)],
)
def test_every_group_option_composes(group, option, tmp_path):
    cfg = _compose([f"{group}={option}"], tmp_path)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert cfg.data is not None and cfg.loss._target_.startswith("marginkit.losses")


@pytest.mark.parametrize("loss", _options("loss"))
def test_every_loss_builds_with_the_module(loss, tmp_path):
    cfg = _compose([f"loss={loss}", "trainer.fast_dev_run=true"], tmp_path)
    datamodule, module, _trainer = build(cfg)
    assert module.loss.num_classes == datamodule.num_classes == 6
    assert module.loss.in_features == cfg.backbone.embedding_dim


def test_loss_configs_mirror_constructors():
    """A loss YAML holds a `_target_` and only constructor arguments."""
    import inspect

    for option in _options("loss"):
        node = OmegaConf.load(CONF / "loss" / f"{option}.yaml")
        target = hydra.utils.get_class(node._target_)
        parameters = set(inspect.signature(target).parameters)
        assert set(node) - {"_target_"} <= parameters, option


@pytest.mark.parametrize(
    "monitor,mode", [("val/precision@1", "max"), ("val/map@r", "max"), ("val/eer", "min")]
)
def test_callbacks_follow_the_monitored_metric(monitor, mode, tmp_path):
    cfg = _compose([f"model.monitor={monitor}"], tmp_path)
    for name in ("model_checkpoint", "early_stopping"):
        assert cfg.callbacks[name].monitor == monitor
        assert cfg.callbacks[name].mode == mode
