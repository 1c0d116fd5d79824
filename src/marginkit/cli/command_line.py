"""The command line checked before Hydra runs: a mistake is one line with the close names.

Hydra reports an unknown key (``trainer.max_epoch=3``) or option (``loss=arcfce``) in several
lines and exits 1. :func:`check_command_line` composes the config the same way first (about a
tenth of a second) and turns such a mistake into ``config error: ...; did you mean ...?``
on one line, exit code 2. Sweeps (``-m``) and Hydra's own flags are left to Hydra.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

# Hydra flags after which composing the config here is not what the command does.
_HYDRA_FLAGS = ("-m", "--multirun", "-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info")
_OVERRIDE = re.compile(r"Could not override '(?P<key>[^']+)'")
_MISSING_OPTION = re.compile(r"Could not find '(?P<group>[^']+)/(?P<option>[^'/]+)'")


def _close(word: str, candidates: Sequence[str]) -> list[str]:
    return difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)


def explain(error: Exception, config_dir: Path, config_name: str, overrides: list[str]) -> str:
    """One line describing a Hydra composition error, with close names where there are some.

    Example:
        >>> from hydra.errors import ConfigCompositionException
        >>> conf = Path(__file__).resolve().parents[3] / "conf"
        >>> explain(ConfigCompositionException("Could not override 'trainer.max_epoch'."),
        ...         conf, "train", ["trainer.max_epoch=3"])
        '`trainer.max_epoch` is not a key of `trainer`; did you mean trainer.max_epochs? (to add a new key: +trainer.max_epoch=...)'
    """
    text = str(error)
    match = _MISSING_OPTION.search(text)
    if match:
        group, option = match["group"], match["option"]
        options = sorted(path.stem for path in (config_dir / group).glob("*.yaml"))
        close = _close(option, options)
        hint = f"did you mean {' or '.join(f'{group}={name}' for name in close)}? " if close else ""
        return f"Could not find '{group}/{option}': {hint}(options: {', '.join(options)})"
    match = _OVERRIDE.search(text)
    if match:
        key = match["key"]
        parent, _, leaf = key.rpartition(".")
        keys = _keys_of(config_dir, config_name, overrides, key, parent)
        where = f"`{parent}`" if parent else "the config"
        close = _close(leaf, keys)
        hint = (
            f"; did you mean {' or '.join(_join(parent, name) for name in close)}?" if close else ""
        )
        return f"`{key}` is not a key of {where}{hint} (to add a new key: +{key}=...)"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _keys_of(
    config_dir: Path, config_name: str, overrides: list[str], bad_key: str, parent: str
) -> list[str]:
    """The keys of node ``parent`` in the config composed without the override of ``bad_key``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != bad_key]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            cfg = compose(config_name, overrides=rest)
    except Exception:  # another mistake too: no suggestions
        return []
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return [str(key) for key in node] if OmegaConf.is_dict(node) else []


def check_command_line(config_dir: Path, config_name: str, argv: Sequence[str]) -> None:
    """Compose ``config_name`` with the overrides of ``argv`` (``sys.argv``) as Hydra will.

    A composition mistake is printed as one ``config error:`` line naming the key (with close
    names) and exits 2; everything else is left to Hydra.
    """
    args = list(argv[1:])
    if any(arg in _HYDRA_FLAGS or arg.startswith("--") for arg in args):
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from marginkit.cli.config import register_resolvers

    register_resolvers()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            compose(config_name, overrides=args, return_hydra_config=True)
    except HydraException as error:
        print(f"config error: {explain(error, config_dir, config_name, args)}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        GlobalHydra.instance().clear()
