"""What several commands read from their config the same way: choices, flags, output files.

Also how every command writes its ``metrics.json``: strict JSON, an undefined metric as null.
Light on purpose (no torch at import): these checks answer before the training stack loads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from marginkit.cli.config import ConfigError

SPLITS = ("test", "val")
METRICS_FILE = "metrics.json"
BASELINE_PREFIX = "baseline/"


def check_choice(cfg: DictConfig, key: str, allowed: tuple[str, ...]) -> str:
    """Return ``cfg[key]`` (``key`` may be dotted) if it is one of the strings ``allowed``, else
    raise :class:`ConfigError` naming the key.

    Example:
        >>> check_choice(OmegaConf.create({"split": "val"}), "split", SPLITS)
        'val'
    """
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"`{key}` must be one of {allowed}, got {value!r}")
    return value


def check_flag(cfg: DictConfig, key: str) -> bool:
    """Return ``cfg[key]`` (``key`` may be dotted) if it is a bool, else raise :class:`ConfigError`.

    Example:
        >>> check_flag(OmegaConf.create({"eval": {"baseline": True}}), "eval.baseline")
        True
    """
    value = OmegaConf.select(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"`{key}` must be true or false, got {value!r}")
    return value


def output_path(cfg: DictConfig, default_name: str) -> Path:
    """``cfg.out`` relative to the launch directory, or ``<paths.output_dir>/<default_name>``."""
    import hydra

    out = cfg.get("out")
    if out is None:
        return Path(cfg.paths.output_dir) / default_name
    if not isinstance(out, str) or not out.strip():
        raise ConfigError(f"`out` must be a file path or null, got {out!r}")
    return Path(hydra.utils.to_absolute_path(out))


def strict_json(metrics: dict[str, float]) -> str:
    """``metrics`` as strict JSON: a non-finite value (an undefined metric) is written as null.

    Example:
        >>> print(strict_json({"test/auc": float("nan"), "test/eer": 0.25}), end="")
        {
          "test/auc": null,
          "test/eer": 0.25
        }
    """
    finite = {key: value if math.isfinite(value) else None for key, value in metrics.items()}
    return json.dumps(finite, indent=2, sort_keys=True) + "\n"


def write_metrics(cfg: DictConfig, metrics: dict[str, float]) -> Path:
    """Write ``metrics`` to ``<paths.output_dir>/metrics.json`` (strict JSON); return the path."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / METRICS_FILE
    path.write_text(strict_json(metrics))
    return path
