"""Building a model's parts (backbone, loss head, optimizer, scheduler) from ``_target_`` configs.

A config is a mapping with a ``_target_`` (the dotted path of a class or function) and its
arguments, the Hydra convention: ``{"_target_": "marginkit.models.backbones.MLP",
"in_features": 64, "hidden": [256], "embedding_dim": 64}``. A module built from configs stores
them in its checkpoint, so ``EmbeddingModule.load_from_checkpoint(path)`` can rebuild it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ComponentError(ValueError):
    """A part of the model could not be built from its config; the message names the part.

    Example:
        >>> str(ComponentError("`loss` (marginkit.losses.ArcFaceLoss): `m` must be ..."))[:8]
        '`loss` ('
    """


def as_plain_config(config: Any) -> dict[str, Any]:
    """Return ``config`` (a mapping or an OmegaConf node) as a plain, resolved ``dict``.

    Example:
        >>> as_plain_config({"_target_": "math.hypot", "x": 3})
        {'_target_': 'math.hypot', 'x': 3}
    """
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        DictConfig = ()  # type: ignore[assignment]
    if DictConfig and isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    return _plain(dict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def check_component_config(name: str, config: Any) -> dict[str, Any]:
    """Validate a ``_target_`` config of part ``name`` and return it as a plain dict.

    Raises:
        TypeError: ``config`` is not a mapping, or its ``_target_`` is not a string.

    Example:
        >>> check_component_config("loss", {"_target_": "marginkit.losses.SoftmaxLoss"})
        {'_target_': 'marginkit.losses.SoftmaxLoss'}
    """
    if not isinstance(config, Mapping) and type(config).__name__ != "DictConfig":
        raise TypeError(
            f"`{name}` must be an nn.Module or a `_target_` config (mapping), "
            f"got {type(config).__name__}"
        )
    plain = as_plain_config(config)
    if not isinstance(plain.get("_target_"), str):
        raise TypeError(
            f"`{name}` config must have a `_target_` string (the class to build), got keys "
            f"{sorted(plain)}"
        )
    return plain


def instantiate_component(name: str, config: Mapping[str, Any]) -> Any:
    """Build part ``name`` from its ``_target_`` config (Hydra's ``instantiate``).

    ``_partial_: true`` configs give a ``functools.partial`` (optimizer and scheduler factories).

    Raises:
        ComponentError: the target cannot be imported or its constructor rejects the
            arguments; the message is one line, ``"`<name>` (<target>): <reason>"``.

    Example:
        >>> instantiate_component("loss", {"_target_": "math.hypot", "_args_": [3, 4]})
        5.0
    """
    import hydra

    from marginkit.cli.config import first_line, root_cause

    target = config.get("_target_", "?")
    try:
        return hydra.utils.instantiate(dict(config), _convert_="all")
    except Exception as error:
        raise ComponentError(f"`{name}` ({target}): {first_line(root_cause(error))}") from error


def describe_component(config: Mapping[str, Any] | None, fallback: str) -> str:
    """One line naming a part: ``Target(key=value, ...)`` from its config, else ``fallback``.

    Example:
        >>> describe_component({"_target_": "a.b.MLP", "embedding_dim": 64}, "?")
        'a.b.MLP(embedding_dim=64)'
    """
    if not config:
        return fallback
    arguments = ", ".join(f"{key}={value!r}" for key, value in config.items() if key != "_target_")
    return f"{config['_target_']}({arguments})"
