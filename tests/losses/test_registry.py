"""The loss registry: get_loss / get_loss_list (gluon-face's interface), names = conf/loss/ files."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

import marginkit.losses as losses
from marginkit.losses import get_loss, get_loss_list
from marginkit.losses.registry import _REGISTRY, registered_name

CONF_LOSS = Path(__file__).resolve().parents[2] / "conf" / "loss"
YAML_NAMES = sorted(path.stem for path in CONF_LOSS.glob("*.yaml"))


@pytest.mark.parametrize(
    "name,kwargs,cls",
    [
        ("coco", {"in_features": 8, "num_classes": 3, "alpha": 4.0}, "COCOLoss"),
        ("lgm", {"num_classes": 3, "in_features": 8}, "LGMLoss"),
        ("lgm", {"num_classes": 3, "in_features": 8}, "LGMLoss"),
        ("mps", {"m": 0.2}, "MPSLoss"),
        ("center", {"num_classes": 3, "in_features": 8}, "CenterLoss"),
        ("ring", {"lamda": 0.1, "r_init": 2.0}, "RingLoss"),
        ("git", {"num_classes": 3, "in_features": 8}, "GitLoss"),
        ("GIT", {"num_classes": 3, "in_features": 8}, "GitLoss"),
        ("softmax", {"in_features": 8, "num_classes": 3}, "SoftmaxLoss"),
    ],
)
def test_get_loss_builds_the_registered_class_with_its_arguments(name, kwargs, cls):
    loss = get_loss(name, **kwargs)
    assert type(loss) is getattr(losses, cls)
    for key, value in kwargs.items():
        assert getattr(loss, key) == value


def test_get_loss_passes_constructor_errors_through():
    with pytest.raises(ValueError, match="`lamda`"):
        get_loss("center", num_classes=3, in_features=8, lamda=-1.0)
    with pytest.raises(TypeError):
        get_loss("center", num_classes=3)  # missing in_features


def test_get_loss_list_is_sorted_and_complete():
    names = get_loss_list()
    assert names == sorted(names) == sorted(_REGISTRY)
    for name in ("softmax", "arcface", "cosface", "coco", "lgm", "mps", "center", "ring", "git"):
        assert name in names


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="`name` must be one of") as error:
        get_loss("arcfase", in_features=8, num_classes=3)
    assert "'arcfase'" in str(error.value)
    for name in get_loss_list():
        assert f"'{name}'" in str(error.value)
    with pytest.raises(TypeError, match="`name` must be a str"):
        get_loss(None)


def test_registry_and_lazy_exports_agree():
    """Every registered class is exported by marginkit.losses from the module the registry names."""
    for name, entry in _REGISTRY.items():
        module, cls = entry.split(":")
        assert losses._EXPORTS.get(cls) == module, name
        assert cls in losses.__all__, name


def test_registered_name_is_the_inverse_of_the_registry():
    assert registered_name(losses.CenterLoss) == "center"
    assert registered_name(losses.GitLoss) == "git"
    assert registered_name(losses.Combined) is None  # a container, not a registered loss
    assert registered_name(dict) is None


def test_every_loss_config_targets_its_registered_class():
    for name in YAML_NAMES:
        node = OmegaConf.load(CONF_LOSS / f"{name}.yaml")
        assert name in _REGISTRY, f"conf/loss/{name}.yaml has no registry entry"
        assert hydra.utils.get_class(node._target_) is losses.registry._resolve(name), name


def test_registry_names_are_the_config_file_names():
    """`python train.py loss=<name>` exists for every registered loss, and nothing else does."""
    missing = sorted(set(_REGISTRY) - set(YAML_NAMES))
    unregistered = sorted(set(YAML_NAMES) - set(_REGISTRY))
    assert not missing and not unregistered, (
        f"registered without conf/loss/<name>.yaml: {missing}; YAML without registry: {unregistered}"
    )


@pytest.mark.parametrize("name", sorted(_REGISTRY))
def test_every_registered_class_imports(name):
    cls = losses.registry._resolve(name)
    assert cls.__name__ == _REGISTRY[name].split(":")[1]
