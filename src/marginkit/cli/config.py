"""Turning Hydra config nodes into objects, with one-line errors for config mistakes.

Light on purpose (no torch, no Lightning at import): ``train.py --help`` and a config error
must answer before the training stack loads.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from marginkit.models.metric_direction import metric_mode

Result = TypeVar("Result")


class ConfigError(ValueError):
    """A mistake in the run's configuration, reported as one line naming the key."""


def register_resolvers() -> None:
    """Register the OmegaConf resolvers the configs use (idempotent).

    * ``${metric_mode:<name>}``: ``"min"`` or ``"max"``, whichever is better for the metric.
    * ``${num_workers:}``, ``${pin_memory:}``: loader defaults for this machine (workers: up to
      4, one per spare CPU; pinned memory: only with a CUDA device).
    * ``${resumed_subdir:<resume>}``: where Hydra records the run's config, ``.hydra`` for a new
      run and ``.hydra/resumed`` for a resumed one (the run's original config stays).
    """
    from marginkit.cli.console import default_num_workers, default_pin_memory

    OmegaConf.register_new_resolver("metric_mode", metric_mode, replace=True)
    OmegaConf.register_new_resolver("num_workers", default_num_workers, replace=True)
    OmegaConf.register_new_resolver("pin_memory", default_pin_memory, replace=True)
    OmegaConf.register_new_resolver(
        "resumed_subdir", lambda resume: ".hydra/resumed" if resume else ".hydra", replace=True
    )


def root_cause(error: BaseException) -> BaseException:
    """The innermost ``__cause__`` of ``error`` (the error itself when it has none).

    Example:
        >>> try:
        ...     try:
        ...         int("abc")
        ...     except ValueError as inner:
        ...         raise RuntimeError("while building") from inner
        ... except RuntimeError as outer:
        ...     type(root_cause(outer)).__name__
        'ValueError'
    """
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def instantiate_node(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """Instantiate ``cfg[key]`` (``None`` for a missing or empty node).

    Any error raised while building it, or by the constructor's own validation, becomes a
    :class:`ConfigError` whose message names ``key``, the target class and the cause.
    """
    import hydra

    node = cfg.get(key)
    if node is None or (isinstance(node, DictConfig) and len(node) == 0):
        return None
    target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except Exception as error:
        raise ConfigError(f"`{key}` ({target}): {first_line(root_cause(error))}") from error


def instantiate_collection(cfg: DictConfig, key: str) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers); nulls skipped."""
    node = cfg.get(key)
    if not node:
        return []
    built = [instantiate_node(node, name) for name in node if node.get(name) is not None]
    return [item for item in built if item is not None]


def check_missing(cfg: DictConfig, allowed_missing: set[str]) -> None:
    """Raise :class:`ConfigError` for a mandatory value (``???``) nobody filled in."""
    missing = sorted(key for key in OmegaConf.missing_keys(cfg) if key not in allowed_missing)
    if missing:
        raise ConfigError(
            f"missing mandatory value(s): {', '.join(missing)} (set them on the command line)"
        )


def exit_on_config_error(function: Callable[[DictConfig], Result], cfg: DictConfig) -> Result:
    """Call ``function(cfg)``; a :class:`ConfigError` becomes one line on stderr and exit 2."""
    register_resolvers()
    # Lightning 2.6 trips over its own pytree deprecation; it is not actionable.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    try:
        return function(cfg)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
