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
    if "num_classes" in cfg.loss:  # a head with class weights
        assert module.loss.num_classes == datamodule.num_classes == 6
    if getattr(type(module.loss), "requires_balanced_batches", False):  # P×K batches
        k = datamodule.n_instances
        assert k >= 2 and cfg.data.batch_size % k == 0 and cfg.data.batch_size // k <= 6
    # The checkpoint holds what rebuilds the model: the resolved configs.
    assert module.hparams.loss["_target_"] == cfg.loss._target_
    assert module.hparams.backbone["embedding_dim"] == cfg.backbone.embedding_dim


def test_loss_configs_mirror_constructors():
    """A loss YAML holds a `_target_` and only constructor arguments."""
    import inspect

    for option in _options("loss"):
        node = OmegaConf.load(CONF / "loss" / f"{option}.yaml")
        target = hydra.utils.get_class(node._target_)
        parameters = set(inspect.signature(target).parameters)
        assert set(node) - {"_target_"} <= parameters, option


@pytest.mark.parametrize("loss", ["arcface", "cosface", "normface", "combined_margin"])
def test_parallel_model_shards_the_head_with_the_same_loss(loss, tmp_path):
    """`parallel=model` builds the ShardedMarginHead that computes the replicated head's loss."""
    import torch

    replicated = _compose([f"loss={loss}", "loss.s=16"], tmp_path)
    sharded = _compose([f"loss={loss}", "loss.s=16", "parallel=model"], tmp_path)
    before = OmegaConf.to_yaml(sharded)
    _, head_module, _ = build(replicated)
    _, sharded_module, _ = build(sharded)
    assert OmegaConf.to_yaml(sharded) == before  # the config is not changed in place
    head, sharded_head = head_module.loss, sharded_module.loss
    assert type(sharded_head).__name__ == "ShardedMarginHead"
    assert sharded_module.hparams.loss["_target_"] == "marginkit.losses.ShardedMarginHead"
    sharded_head.load_state_dict({"weight_shards.0": head.weight.detach()})
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(32, head.in_features, generator=generator)
    labels = torch.randint(0, head.num_classes, (32,), generator=generator)
    torch.testing.assert_close(sharded_head(embeddings, labels), head(embeddings, labels))


def test_parallel_model_refuses_a_head_without_a_combined_margin(tmp_path):
    from marginkit.cli import ConfigError

    with pytest.raises(ConfigError, match=r"`parallel=model` needs a combined-margin head"):
        build(_compose(["loss=softmax", "parallel=model"], tmp_path))
    with pytest.raises(ConfigError, match=r"`parallel.sample_rate` < 1 .* needs `parallel=model`"):
        build(_compose(["+parallel.sample_rate=0.5"], tmp_path))


@pytest.mark.parametrize(
    "monitor,mode", [("val/precision@1", "max"), ("val/map@r", "max"), ("val/eer", "min")]
)
def test_callbacks_follow_the_monitored_metric(monitor, mode, tmp_path):
    cfg = _compose([f"model.monitor={monitor}"], tmp_path)
    for name in ("model_checkpoint", "early_stopping"):
        assert cfg.callbacks[name].monitor == monitor
        assert cfg.callbacks[name].mode == mode


def test_the_digits_default_gets_its_tuned_settings_and_other_choices_do_not(tmp_path):
    default = _compose([], tmp_path)
    assert list(default.backbone.hidden) == [] and default.backbone.embedding_dim == 256
    assert (default.loss.s, default.loss.m) == (32.0, 0.3)
    softmax = _compose(["loss=softmax"], tmp_path)
    assert "s" not in softmax.loss and list(softmax.backbone.hidden) == []
    cnn = _compose(["backbone=small_cnn"], tmp_path)
    assert "hidden" not in cnn.backbone and cnn.loss.s == 32.0
    synthetic = _compose(["data=synthetic"], tmp_path)
    assert list(synthetic.backbone.hidden) == [256] and synthetic.loss.s == 64.0


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_trainer_configs(trainer, tmp_path):
    cfg = _compose([f"trainer={trainer}"], tmp_path)
    expected = {"cpu": "32-true", "gpu": "bf16-mixed", "ddp": "32-true"}[trainer]
    assert cfg.trainer.precision == expected
    assert cfg.trainer.get("strategy") == ("ddp" if trainer == "ddp" else None)
    half = _compose([f"trainer={trainer}", "trainer.precision=16-mixed"], tmp_path)
    assert half.trainer.precision == "16-mixed"


def test_resume_finds_the_run_directory_s_last_checkpoint(tmp_path):
    from marginkit.cli import ConfigError
    from marginkit.cli.checkpoint import resume_checkpoint as resolve_checkpoint

    cfg = _compose(["resume=true", "paths.task_dir=" + str(tmp_path / "task")], tmp_path / "now")
    with pytest.raises(ConfigError, match=r"`resume` is true but there is no last\.ckpt"):
        resolve_checkpoint(cfg)
    older = tmp_path / "task" / "run_a" / "checkpoints" / "last.ckpt"
    newer = tmp_path / "task" / "run_b" / "checkpoints" / "last.ckpt"
    for path in (older, newer):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    import os

    os.utime(older, (1, 1))
    assert resolve_checkpoint(cfg) == newer  # the task's latest run
    own = tmp_path / "now" / "checkpoints" / "last.ckpt"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"")
    assert resolve_checkpoint(cfg) == own  # the run directory's own comes first
    explicit = _compose([f"ckpt_path={older}", "resume=true"], tmp_path / "now")
    assert resolve_checkpoint(explicit) == older
    named = _compose(["resume=true", "run_name=exp1"], tmp_path / "exp1")
    with pytest.raises(ConfigError, match=r"run 'exp1' has no checkpoints/last\.ckpt"):
        resolve_checkpoint(named)


def test_resume_without_a_name_skips_checkpoints_of_another_model(tmp_path):
    import os

    import torch

    from marginkit.cli import ConfigError
    from marginkit.cli.checkpoint import resume_checkpoint
    from marginkit.cli.train import _wanted_model

    cfg = _compose(["resume=true", "paths.task_dir=" + str(tmp_path / "task")], tmp_path / "now")
    wanted = _wanted_model(cfg)
    fits = {"backbone": wanted["backbone"], "loss": {**wanted["loss"], "num_classes": 6}}
    sharded = {**fits, "loss": {"_target_": "marginkit.losses.ShardedMarginHead"}}
    paths = {}
    for age, (name, hparams) in enumerate([("fits", fits), ("sharded", sharded)]):
        path = tmp_path / "task" / name / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        torch.save({"hyper_parameters": hparams}, path)
        os.utime(path, (age + 1, age + 1))
        paths[name] = path
    # The newest run is model parallel: it does not fit the default, replicated head.
    assert resume_checkpoint(cfg, wanted=wanted) == paths["fits"]
    paths["fits"].unlink()
    with pytest.raises(ConfigError, match=r"none of the 1 last\.ckpt"):
        resume_checkpoint(cfg, wanted=wanted)


@pytest.mark.parametrize("data", ["image_folder", "pairs"])
def test_loader_defaults_come_from_the_machine(data, tmp_path):
    import os

    import torch

    cfg = _compose([f"data={data}"], tmp_path)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # Up to 4 workers, leaving one CPU to the training loop: torch warns above its suggestion.
    assert cfg.data.num_workers == max(0, min(4, cpus - 1))
    assert cfg.data.pin_memory is torch.cuda.is_available()


def test_digits_compare_without_multirun_trains_what_its_comment_says(tmp_path):
    cfg = _compose(["experiment=digits_compare"], tmp_path)
    comment = (CONF / "experiment" / "digits_compare.yaml").read_text()
    said = comment.split("Without -m", 1)[1].splitlines()[0]
    assert cfg.loss._target_ == "marginkit.losses.ArcFaceLoss" and "(arcface)" in said
