"""Checks run before training starts, each naming the config key at fault in one line.

Each builds or runs the cheapest thing that shows the mistake: the loss head with two classes,
the optimizer and the scheduler on a stand-in parameter, the backbone on one training item.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from marginkit.cli.config import ConfigError, first_line, instantiate_node
from marginkit.cli.parallel import parallel_mode


def check_loss(cfg: DictConfig) -> Any:
    """Build the loss once with a stand-in class count (3), before the data and Lightning load.

    A bad loss argument (``loss.m=-0.5``) then fails in about the time torch takes to import,
    not after the training stack and the data are loaded. The small instance also tells
    ``parallel=model`` the head's margins (:func:`marginkit.cli.parallel.sharded_head_config`).

    Returns:
        The stand-in head, or None when the config has no loss or leaves nested values unset.
    """
    if not cfg.get("loss"):
        return None
    parallel_mode(cfg)
    plain = OmegaConf.to_container(cfg.loss, resolve=True)
    if plain.get("num_classes") == "???":
        plain["num_classes"] = 3  # the fewest every head accepts (s="auto" needs 3)
    if OmegaConf.missing_keys(OmegaConf.create(plain)):  # e.g. nested heads: build() fills them
        return None
    return instantiate_node(OmegaConf.create({"loss": plain}), "loss")


def check_trainer_limits(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for a training length Lightning would take but cannot finish.

    ``trainer.max_epochs`` must be a positive int (Lightning reads -1 as "forever", which the
    learning-rate schedules, sized by the number of steps, cannot follow) unless
    ``trainer.max_steps`` bounds the run.
    """
    node = cfg.get("trainer") or {}
    max_steps = node.get("max_steps", -1)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < -1:
        raise ConfigError(f"`trainer.max_steps` must be a positive int or -1, got {max_steps!r}")
    max_epochs = node.get("max_epochs")
    if max_epochs is None or max_steps > 0:
        return
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ConfigError(
            f"`trainer.max_epochs` must be a positive int, got {max_epochs!r} (or bound the run "
            "with trainer.max_steps=N)"
        )


def check_optimization(cfg: DictConfig) -> None:
    """Build the optimizer and the scheduler on a stand-in parameter, before the data loads.

    A bad value (``optimizer.lr=abc``, ``optimizer.weight_decay=-1``) then fails as one line
    naming the group, not after the first epoch's data is loaded.
    """
    import inspect

    import torch

    if not cfg.get("optimizer"):
        return
    factory = instantiate_node(cfg, "optimizer")
    target = cfg.optimizer.get("_target_", "?")
    try:
        optimizer = factory([torch.nn.Parameter(torch.zeros(1))])
    except Exception as error:
        raise ConfigError(
            f"`optimizer` ({target}): {_mistyped(cfg, 'optimizer') or first_line(error)}"
        ) from error
    if not cfg.get("scheduler"):
        return
    scheduler = instantiate_node(cfg, "scheduler")
    target = cfg.scheduler.get("_target_", "?")
    try:
        if "total_steps" in inspect.signature(scheduler).parameters:
            scheduler(optimizer, total_steps=100)
        else:
            scheduler(optimizer)
    except Exception as error:
        raise ConfigError(
            f"`scheduler` ({target}): {_mistyped(cfg, 'scheduler') or first_line(error)}"
        ) from error


def _mistyped(cfg: DictConfig, group: str) -> str | None:
    """``"`optimizer.lr` must be a number, got 'abc'"`` for a text value whose default is a
    number in the target's signature, else None."""
    import inspect

    import hydra

    node = cfg.get(group) or {}
    try:
        parameters = inspect.signature(hydra.utils.get_method(node.get("_target_"))).parameters
    except Exception:
        return None
    for key, value in node.items():
        default = parameters[key].default if key in parameters else None
        number = isinstance(default, (int, float)) and not isinstance(default, bool)
        if number and isinstance(value, str):
            return f"`{group}.{key}` must be a number, got {value!r}"
    return None


def check_backbone_takes_data(cfg: DictConfig, module: Any, datamodule: Any) -> None:
    """Run the backbone on one training item; a mismatch is one line naming the backbone key.

    An RGB image folder with a one-channel backbone says ``backbone.in_channels=3``.
    """
    import torch

    from marginkit.cli.embedding import first_inputs

    try:
        loader = datamodule.train_dataloader()
    except ValueError as error:
        if str(error).startswith("`"):
            raise ConfigError(first_line(error)) from error
        raise
    inputs = first_inputs(loader)
    # The batch as the module sees it: datamodules that normalise on the device (insightface's
    # uint8 channels-last batches) do it in on_after_batch_transfer.
    inputs = datamodule.on_after_batch_transfer([inputs], 0)[0]
    backbone = cfg.get("backbone") or {}
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module.backbone(inputs)
    except Exception as error:
        channels = backbone.get("in_channels")
        if inputs.ndim == 4 and channels is not None and channels != inputs.shape[1]:
            fix = f"backbone.in_channels={inputs.shape[1]}"
            if backbone.get("image_size") is not None:
                fix += " backbone.image_size=null"
            raise ConfigError(
                f"`backbone.in_channels` is {channels} but the data gives {inputs.shape[1]}-"
                f"channel images {tuple(inputs.shape[1:])}: set {fix}"
            ) from error
        raise ConfigError(
            f"`backbone` ({backbone.get('_target_', '?')}) cannot embed the data's inputs of "
            f"shape {tuple(inputs.shape[1:])}: {first_line(error)}"
        ) from error
    finally:
        module.train(was_training)
