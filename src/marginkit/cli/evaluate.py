"""What ``eval.py`` runs: a checkpoint's retrieval and verification metrics on one split.

The split is embedded as ``embed.py`` does (:func:`marginkit.cli.embedding.embed_from_config`), then
scored by :func:`marginkit.models.evaluation.evaluate_embeddings`, the function the training
module's own validation and test use: leave-one-out retrieval over every item of the split and
verification on exactly the data's pair list (``datamodule.verification_pairs(split)``: a pair
file's pairs and folds, or the seeded list), independent of the batch size. With
``eval.baseline`` the raw inputs of the split are scored the same way
(:func:`marginkit.models.evaluation.baseline_metrics`). Torch loads after the config is checked.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from marginkit.cli.checkpoint import describe, resolve_checkpoint
from marginkit.cli.config import ConfigError, exit_on_config_error, first_line
from marginkit.cli.embedding import check_embedding_config, embed_from_config
from marginkit.cli.options import BASELINE_PREFIX, check_flag, write_metrics
from marginkit.cli.results import RunFacts, negative_pair_count, print_metrics

log = logging.getLogger(__name__)


def _check_verification(cfg: DictConfig) -> bool | None:
    value = OmegaConf.select(cfg, "eval.verification")
    if not (value is None or isinstance(value, bool)):
        raise ConfigError(f"`eval.verification` must be true, false or null, got {value!r}")
    return value


def _metric_option(cfg: DictConfig, key: str) -> tuple[Any, ...] | None:
    """``eval.<key>`` (``top_k`` or ``far_targets``) as a checked tuple, or None when null."""
    from marginkit.models.evaluation import metric_names

    value = OmegaConf.select(cfg, f"eval.{key}")
    if value is None:
        return None
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    try:
        metric_names(**{key: value})
    except (TypeError, ValueError) as error:
        raise ConfigError(f"`eval.{key}`: {first_line(error)}") from error
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _pair_list(cfg: DictConfig, datamodule: Any, split: str, verification: bool | None) -> Any:
    """The data's pair list of ``split`` (None when off or absent; an error if required)."""
    if verification is False:
        return None
    pairs_of = getattr(datamodule, "verification_pairs", None)
    pairs = pairs_of(split) if callable(pairs_of) else None
    if pairs is None and verification:
        raise ConfigError(
            f"`eval.verification` is true but `data` ({cfg.data.get('_target_', '?')}) has no "
            f"verification pair list for the {split} split; set eval.verification=null or false"
        )
    return pairs


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Embed ``cfg.split`` with ``cfg.ckpt_path``, score it, write ``metrics.json``.

    Returns:
        A flat dict: ``<split>/<name>`` for the model and, with ``eval.baseline`` and data that
        gives raw features, ``baseline/<name>`` for the raw inputs of the same items and pairs;
        retrieval names only with ``eval.retrieval``, verification names only with a pair list.
        The same dict is written as strict JSON (NaN as null) to
        ``<paths.output_dir>/metrics.json``.
    """
    if "val_targets" in cfg.data:  # insightface's .bin sets: their own protocol and table
        from marginkit.cli.targets import evaluate_targets_from_config

        return evaluate_targets_from_config(cfg)
    retrieval = check_flag(cfg, "eval.retrieval")
    verification = _check_verification(cfg)
    baseline = check_flag(cfg, "eval.baseline")
    plot = check_flag(cfg, "plot")
    if not retrieval and verification is False:
        raise ConfigError("`eval.retrieval` and `eval.verification` are both false: nothing to do")
    check_embedding_config(cfg)  # before the slower checks below
    top_k, far_targets = _metric_option(cfg, "top_k"), _metric_option(cfg, "far_targets")
    module, datamodule, items = embed_from_config(cfg)
    from marginkit.models.evaluation import baseline_metrics, evaluate_embeddings

    split = cfg.split
    top_k = top_k or tuple(module.top_k)  # null: the checkpoint's
    far_targets = far_targets or tuple(module.far_targets)
    pairs = _pair_list(cfg, datamodule, split, verification)
    if not retrieval and pairs is None:
        raise ConfigError(
            f"`eval.retrieval` is false and `data` has no verification pair list for the {split} "
            "split: nothing to evaluate"
        )
    results = evaluate_embeddings(
        items.embeddings, items.labels, pairs, top_k, far_targets, items.indices
    )
    wanted = _wanted_names(results, top_k, far_targets, retrieval)
    metrics = {f"{split}/{name}": results[name] for name in wanted}
    if baseline:
        raw = baseline_metrics(datamodule, split, items.labels, items.indices, top_k, far_targets)
        if raw is None:
            log.info("eval.baseline: the data gives no raw features; no baseline")
        else:
            metrics.update(
                {f"{BASELINE_PREFIX}{name}": raw[name] for name in wanted if name in raw}
            )
    path = write_metrics(cfg, metrics)
    facts = RunFacts(
        monitor=module.monitor,
        negative_pairs={split: negative_pair_count(pairs)} if pairs is not None else {},
        checkpoints=[("checkpoint", str(resolve_checkpoint(cfg.ckpt_path)))],
    )
    print_metrics(metrics, title=_title(cfg, items, pairs), facts=facts)
    if plot:  # retrieval.png, cmc.png, roc.png beside metrics.json
        from marginkit.cli.plots import write_plots

        write_plots(path.parent, items, datamodule, split, pairs, far_targets, cfg.get("seed", 0))
    log.info("%s; metrics written to %s", describe(module), path)
    return metrics


def _title(cfg: DictConfig, items: Any, pairs: Any) -> str:
    """``best.ckpt on the test split: 357 items, 2000 pairs`` (pairs scored of those listed)."""
    from marginkit.models.evaluation import pair_scores

    title = f"{resolve_checkpoint(cfg.ckpt_path).name} on the {cfg.split} split: "
    title += f"{len(items.labels)} items"
    if pairs is not None:
        listed = len(pairs.issame)
        scored = len(pair_scores(items.embeddings, pairs, items.indices)[0])
        title += f", {scored} pairs" if scored == listed else f", {scored} of {listed} pairs"
    return title + (" (flip test)" if cfg.flip else "")


def _wanted_names(
    results: dict[str, float],
    top_k: tuple[int, ...],
    far_targets: tuple[float, ...],
    retrieval: bool,
) -> list[str]:
    """The result names to report: without ``retrieval``, only the verification ones."""
    if retrieval:
        return list(results)
    from marginkit.models.evaluation import metric_names

    retrieval_names = set(metric_names(top_k, far_targets, verification=False))
    return [name for name in results if name not in retrieval_names]


def run(cfg: DictConfig) -> dict[str, float]:
    """Entry point of ``eval.py``: evaluate, or one line + exit 2 for a config mistake."""
    return exit_on_config_error(evaluate, cfg)
