"""eval.py, embed.py and export.py on checkpoints trained here (digits; a tiny image folder).

References are independent of the code under test: embeddings recomputed with the module's
backbone, metrics from the functional twins (or a brute-force float64 nearest neighbour) on
those embeddings, exported files loaded with their own runtimes (onnxruntime, torch.jit,
torch.export).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from marginkit.cli.config import ConfigError, register_resolvers

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
FAR_TARGETS = (1e-4, 1e-3, 1e-2)


def _compose(config_name: str, overrides: list[str], output_dir: Path):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name, overrides=[*overrides, f"paths.output_dir={output_dir}"])


def _script(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(ROOT / f"{name}.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _trainer(**kwargs):
    import lightning as L

    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One epoch of ArcFace on digits 0-5; a run directory with checkpoints/best.ckpt."""
    import lightning as L

    from marginkit import EmbeddingModule
    from marginkit.data import DigitsDataModule

    L.seed_everything(0, verbose=False)
    run_dir = tmp_path_factory.mktemp("digits_run")
    datamodule = DigitsDataModule(seed=0)
    module = EmbeddingModule(
        {
            "_target_": "marginkit.models.backbones.MLP",
            "in_features": 64,
            "hidden": [32],
            "embedding_dim": 16,
        },
        {"_target_": "marginkit.losses.ArcFaceLoss", "in_features": 16, "num_classes": 6, "s": 16},
        far_targets=FAR_TARGETS,
    )
    trainer = _trainer(max_epochs=1)
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    trainer.save_checkpoint(ckpt)
    inputs, labels, _ = datamodule.datasets["test"].tensors
    with torch.no_grad():
        embeddings = module.eval().backbone(inputs)
    return SimpleNamespace(
        run_dir=run_dir,
        ckpt=ckpt,
        module=module,
        datamodule=datamodule,
        test_metrics=dict(module.test_metrics),
        inputs=inputs,
        labels=labels,
        embeddings=embeddings,
    )


# --------------------------------------------------------------------------------------------
# eval.py
# --------------------------------------------------------------------------------------------
def test_eval_cli_matches_the_module_and_the_functional_metrics(digits_run, tmp_path):
    from marginkit.metrics.functional import retrieval_metrics, verification_metrics

    # A run directory stands for its checkpoints/best.ckpt.
    result = _script(
        "eval", [f"ckpt_path={digits_run.run_dir}", f"hydra.run.dir={tmp_path}"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "precision@1" in result.stdout  # the printed table
    metrics = _strict_json(tmp_path / "metrics.json")

    # 1. The module's own test metrics (trainer.test) on the same checkpoint.
    assert digits_run.test_metrics
    for key, value in digits_run.test_metrics.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key

    # 2. Functional twins on embeddings recomputed here, pairs scored here in float64.
    retrieval = retrieval_metrics(digits_run.embeddings, digits_run.labels, top_k=(1, 5, 10))
    pairs = digits_run.datamodule.verification_pairs("test")
    unit = torch.nn.functional.normalize(digits_run.embeddings.double(), dim=1)
    scores = (unit[pairs.first] * unit[pairs.second]).sum(1)
    verification = verification_metrics(scores, pairs.issame, FAR_TARGETS, pairs.n_folds)
    for name, value in {**retrieval, **verification}.items():
        assert metrics[f"test/{name}"] == pytest.approx(float(value), abs=1e-6), name

    # 3. precision@1 by brute force: each item's most similar other item, in float64.
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-math.inf)
    nearest = similarity.argmax(1)
    precision_at_1 = (digits_run.labels[nearest] == digits_run.labels).double().mean()
    assert metrics["test/precision@1"] == pytest.approx(float(precision_at_1), abs=1e-6)

    # 4. The raw-input baseline: the same metrics on the standardised pixels.
    raw = retrieval_metrics(digits_run.inputs, digits_run.labels, top_k=(1, 5, 10))
    assert metrics["baseline/precision@1"] == pytest.approx(float(raw["precision@1"]), abs=1e-6)
    assert metrics["baseline/map@r"] == pytest.approx(float(raw["map@r"]), abs=1e-6)


def test_eval_val_split_verification_only(digits_run, tmp_path):
    from marginkit.cli.evaluate import evaluate
    from marginkit.metrics.functional import verification_metrics

    cfg = _compose(
        "eval",
        [
            f"ckpt_path={digits_run.ckpt}",
            "split=val",
            "eval.retrieval=false",
            "eval.baseline=false",
            "eval.far_targets=[0.01]",
        ],
        tmp_path,
    )
    metrics = evaluate(cfg)
    assert set(metrics) == {
        "val/auc",
        "val/eer",
        "val/tar@far=0.01",
        "val/accuracy",
        "val/accuracy_std",
    }
    assert _strict_json(tmp_path / "metrics.json") == pytest.approx(metrics)
    inputs, _, _ = digits_run.datamodule.datasets["val"].tensors
    with torch.no_grad():
        unit = torch.nn.functional.normalize(digits_run.module.backbone(inputs).double(), dim=1)
    pairs = digits_run.datamodule.verification_pairs("val")
    scores = (unit[pairs.first] * unit[pairs.second]).sum(1)
    expected = verification_metrics(scores, pairs.issame, (0.01,), pairs.n_folds)
    for name, value in expected.items():
        assert metrics[f"val/{name}"] == pytest.approx(float(value), abs=1e-6), name


# --------------------------------------------------------------------------------------------
# embed.py
# --------------------------------------------------------------------------------------------
def test_embed_cli_round_trip(digits_run, tmp_path):
    out = tmp_path / "sub" / "embeddings.pt"
    result = _script(
        "embed",
        [f"ckpt_path={digits_run.ckpt}", f"out={out}", f"hydra.run.dir={tmp_path}"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {"embeddings", "labels", "paths", "indices", "class_names"}
    assert saved["embeddings"].dtype == torch.float32
    assert saved["embeddings"].shape == (len(digits_run.labels), 16)
    torch.testing.assert_close(saved["embeddings"], digits_run.embeddings, rtol=1e-6, atol=1e-6)
    assert torch.equal(saved["labels"], digits_run.labels)
    assert torch.equal(saved["indices"], torch.arange(len(digits_run.labels)))
    assert saved["paths"] is None and saved["class_names"] is None


def test_embed_normalize(digits_run, tmp_path):
    from marginkit.cli.embed import embed

    cfg = _compose(
        "embed",
        [f"ckpt_path={digits_run.ckpt}", "normalize=true"],
        tmp_path,
    )
    saved = torch.load(embed(cfg), weights_only=True)  # out=null: <run dir>/embeddings.pt
    expected = torch.nn.functional.normalize(digits_run.embeddings, dim=1)
    torch.testing.assert_close(saved["embeddings"], expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# export.py
# --------------------------------------------------------------------------------------------
def _other_batch(width: int = 64, size: int = 7) -> torch.Tensor:
    # A batch size other than the ones the exporter traced (2) and checked (5).
    return torch.randn(size, width, generator=torch.Generator().manual_seed(1))


def test_export_onnx_cli(digits_run, tmp_path):
    import onnx
    import onnxruntime

    out = tmp_path / "model.onnx"
    result = _script(
        "export",
        [f"ckpt_path={digits_run.ckpt}", "format=onnx", f"out={out}", f"hydra.run.dir={tmp_path}"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checked on 5 inputs" in result.stdout
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.name == "input" and isinstance(model_input.shape[0], str)  # dynamic batch
    inputs = _other_batch()
    (outputs,) = session.run(None, {"input": inputs.numpy()})
    with torch.no_grad():
        expected = digits_run.module.backbone(inputs)
    torch.testing.assert_close(torch.from_numpy(outputs), expected, rtol=1e-4, atol=1e-5)
    # The head (6 x 16 class weights) is not in the file.
    head_weight = digits_run.module.loss.weight.detach()
    for initializer in onnx.load(str(out)).graph.initializer:
        assert tuple(initializer.dims) != tuple(head_weight.shape), initializer.name


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_export_torchscript_and_pt2(digits_run, tmp_path, fmt):
    from marginkit.cli.export import export

    cfg = _compose("export", [f"ckpt_path={digits_run.ckpt}", f"format={fmt}"], tmp_path)
    out = export(cfg)
    assert out == tmp_path / f"backbone.{'pt' if fmt == 'torchscript' else 'pt2'}"
    if fmt == "torchscript":
        with warnings.catch_warnings():  # TorchScript is deprecated upstream, still loadable
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(out))
        stored = loaded.state_dict()
    else:
        program = torch.export.load(str(out))
        loaded = program.module()
        stored = program.state_dict
    backbone = digits_run.module.backbone
    # The backbone's weights only (the head is dropped), equal to the checkpoint's.
    assert sorted(stored) == sorted(backbone.state_dict())
    for name, value in backbone.state_dict().items():
        assert torch.equal(stored[name], value), name
    inputs = _other_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs), backbone(inputs), rtol=1e-5, atol=1e-6)


def test_export_from_input_shape_does_not_load_the_data(digits_run, tmp_path):
    from marginkit.cli.export import export

    # data=image_folder has a mandatory `data.root`; with input_shape the data is not needed.
    cfg = _compose(
        "export",
        [
            f"ckpt_path={digits_run.ckpt}",
            "format=pt2",
            "input_shape=[64]",
            "data=image_folder",
            f"out={tmp_path / 'm.pt2'}",
        ],
        tmp_path,
    )
    loaded = torch.export.load(str(export(cfg))).module()
    inputs = _other_batch(size=1)  # batch of one: the batch dimension was not specialised
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs), digits_run.module.backbone(inputs))


def test_export_check_catches_a_wrong_export(digits_run, tmp_path, monkeypatch, capsys):
    from marginkit.cli import export as export_cli

    # An exported model that is off by 1e-3 in one entry of one embedding.
    load = export_cli._LOADERS["pt2"]

    def off_by_a_little(out):
        model = load(out)

        def run(inputs):
            outputs = model(inputs).clone()
            outputs[3, 5] += 1e-3
            return outputs

        return run

    monkeypatch.setitem(export_cli._LOADERS, "pt2", off_by_a_little)
    cfg = _compose("export", [f"ckpt_path={digits_run.ckpt}", "format=pt2"], tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        export_cli.run(cfg)
    assert exit_info.value.code == 1
    assert "export failed: the exported model's embeddings differ" in capsys.readouterr().err
    # Within a looser tolerance the same export passes.
    cfg = _compose("export", [f"ckpt_path={digits_run.ckpt}", "format=pt2", "rtol=1e-2"], tmp_path)
    assert export_cli.export(cfg).is_file()


# --------------------------------------------------------------------------------------------
# Images: a pair file over a folder (the LFW protocol), flip test, unreadable file, paths
# --------------------------------------------------------------------------------------------
def _image(path: Path, seed: int) -> None:
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(12, 12, 3, generator=generator) * 255).to(torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.numpy()).save(path)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A SmallCNN checkpoint (one step on 8 identity folders) and an LFW-like pair-file set."""
    import lightning as L

    from marginkit import EmbeddingModule
    from marginkit.data import ImageFolderDataModule

    L.seed_everything(0, verbose=False)
    folder = tmp_path_factory.mktemp("images")
    for identity in range(8):  # 4 to train, 2 to validate, 2 to test (2 classes at least)
        for number in range(3):
            _image(folder / "train" / f"id{identity}" / f"{number}.png", 10 * identity + number)
    lfw = folder / "lfw"
    for identity in range(3):
        for number in range(3):
            _image(lfw / f"p{identity}" / f"{number}.png", 100 + 10 * identity + number)
    (lfw / "p2" / "broken.png").write_bytes(b"not an image")
    rows = ["first,second,issame"]
    for identity in range(3):
        rows += [f"p{identity}/0.png,p{identity}/1.png,1", f"p{identity}/1.png,p{identity}/2.png,1"]
        rows += [f"p{identity}/0.png,p{(identity + 1) % 3}/2.png,0"]
        rows += [f"p{identity}/2.png,p{(identity + 2) % 3}/1.png,0"]
    rows += ["p2/broken.png,p2/0.png,1", "p2/broken.png,p0/0.png,0"]
    (lfw / "pairs.csv").write_text("\n".join(rows) + "\n")

    datamodule = ImageFolderDataModule(
        root=str(folder / "train"),
        val_ratio=0.25,
        test_ratio=0.25,
        image_size=(12, 12),
        batch_size=4,
        eval_batch_size=4,
        num_workers=0,
    )
    module = EmbeddingModule(
        {
            "_target_": "marginkit.models.backbones.SmallCNN",
            "in_channels": 3,
            "image_size": None,
            "channels": [4],
            "embedding_dim": 8,
        },
        {"_target_": "marginkit.losses.ArcFaceLoss", "in_features": 8, "num_classes": 4, "s": 16},
    )
    trainer = _trainer(max_steps=1)
    trainer.fit(module, datamodule=datamodule)
    ckpt = folder / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    return SimpleNamespace(ckpt=ckpt, module=module.eval(), lfw=lfw)


def _pair_overrides(image_run) -> list[str]:
    return [
        f"ckpt_path={image_run.ckpt}",
        "data=pairs",
        "data.root=null",
        f"data.test_root={image_run.lfw}",
        f"data.test_pairs={image_run.lfw / 'pairs.csv'}",
        "data.image_size=[12,12]",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.persistent_workers=false",
        "data.eval_batch_size=3",
        "data.n_folds=2",
        "flip=true",
    ]


def _reference_flip_embeddings(image_run, paths: list[str]) -> torch.Tensor:
    """backbone(x) + backbone(mirrored x) of each file, x decoded and normalised here."""
    from PIL import Image

    with torch.no_grad():
        rows = []
        for path in paths:
            with Image.open(path) as image:
                pixels = torch.from_numpy(np.array(image.convert("RGB"))).double()
            x = ((pixels.permute(2, 0, 1) / 255 - 0.5) / 0.5).float()[None]
            backbone = image_run.module.backbone
            rows.append(backbone(x) + backbone(x.flip(-1)))
    return torch.cat(rows)


def test_eval_on_a_pair_file_with_flip_and_an_unreadable_image(image_run, tmp_path):
    from marginkit.cli.evaluate import evaluate
    from marginkit.data import read_pairs
    from marginkit.metrics.functional import verification_metrics

    cfg = _compose("eval", [*_pair_overrides(image_run), "eval.far_targets=[0.5]"], tmp_path)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        metrics = evaluate(cfg)
    # Exactly the file's pairs, less the two naming the unreadable image, in file order, 2 folds.
    pairs = [p for p in read_pairs(image_run.lfw / "pairs.csv") if "broken" not in p.first]
    files = sorted({p.first for p in pairs} | {p.second for p in pairs})
    embeddings = _reference_flip_embeddings(image_run, [str(image_run.lfw / f) for f in files])
    unit = dict(zip(files, torch.nn.functional.normalize(embeddings.double(), dim=1), strict=True))
    scores = torch.stack([unit[p.first] @ unit[p.second] for p in pairs])
    issame = torch.tensor([p.issame for p in pairs])
    expected = verification_metrics(scores, issame, (0.5,), n_folds=2)
    for name, value in expected.items():
        assert metrics[f"test/{name}"] == pytest.approx(float(value), abs=1e-5), name
    assert "test/precision@1" in metrics  # labels: the identity folders


def test_embed_images_writes_paths_in_dataset_order(image_run, tmp_path):
    from marginkit.cli.embed import embed

    cfg = _compose("embed", [*_pair_overrides(image_run), f"out={tmp_path / 'e.pt'}"], tmp_path)
    with pytest.warns(RuntimeWarning, match="unreadable"):
        saved = torch.load(embed(cfg), weights_only=True)
    # The split lists the files in order of first appearance in the pair file.
    order: list[str] = []
    for line in (image_run.lfw / "pairs.csv").read_text().splitlines()[1:]:
        for name in line.split(",")[:2]:
            if name not in order:
                order.append(name)
    broken = order.index("p2/broken.png")
    kept = [index for index in range(len(order)) if index != broken]
    assert saved["indices"].tolist() == kept
    assert saved["paths"] == [str(image_run.lfw / order[index]) for index in kept]
    names = saved["class_names"]
    assert sorted(names) == ["p0", "p1", "p2"]
    assert [names[label] for label in saved["labels"]] == [order[i][:2] for i in kept]
    expected = _reference_flip_embeddings(image_run, saved["paths"])
    torch.testing.assert_close(saved["embeddings"], expected, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Mistakes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config_name,overrides,message",
    [
        ("eval", [], "missing mandatory value(s): ckpt_path"),
        ("eval", ["ckpt_path=nowhere.ckpt"], "`ckpt_path` 'nowhere.ckpt': no such file"),
        ("embed", ["ckpt_path={empty_dir}"], "is a directory without checkpoints/best.ckpt"),
        ("eval", ["ckpt_path={not_a_ckpt}"], "cannot rebuild the model from it"),
        ("embed", ["ckpt_path={ckpt}", "split=train"], "`split` must be one of ('test', 'val')"),
        ("export", ["ckpt_path={ckpt}", "format=tflite"], "`format` must be one of"),
        ("export", ["ckpt_path={ckpt}", "input_shape=[0]"], "`input_shape` must be a list"),
        (
            "eval",
            ["ckpt_path={ckpt}", "data.train_classes=[0,1,2,3]"],
            "`data` (marginkit.data.DigitsDataModule) has 4 training classes but the "
            "checkpoint's head",
        ),
        (
            "embed",
            ["ckpt_path={ckpt}", "data=synthetic", "data.num_classes=6", "data.dim=32"],
            "`data`: the checkpoint's model (backbone marginkit.models.backbones.MLP(",
        ),
        (
            "export",
            ["ckpt_path={ckpt}", "input_shape=[3,8,8]"],
            "`input_shape`: the checkpoint's model",
        ),
        ("eval", ["ckpt_path={ckpt}", "flip=true"], "`flip` needs image inputs (N, C, H, W)"),
        ("eval", ["ckpt_path={ckpt}", "eval.top_k=[0]"], "`eval.top_k`: `top_k` must hold"),
        ("eval", ["ckpt_path={ckpt}", "eval.verification=maybe"], "`eval.verification` must be"),
        ("embed", ["ckpt_path={ckpt}", "trainer.devices=2"], "`trainer.devices`"),
    ],
)
def test_config_mistakes_are_config_errors_naming_the_key(
    digits_run, tmp_path, config_name, overrides, message
):
    from marginkit.cli.embed import embed
    from marginkit.cli.evaluate import evaluate
    from marginkit.cli.export import export

    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.ckpt").write_bytes(b"not a checkpoint")
    values = {
        "ckpt": digits_run.ckpt,
        "empty_dir": tmp_path / "empty",
        "not_a_ckpt": tmp_path / "weights.ckpt",
    }
    cfg = _compose(config_name, [o.format(**values) for o in overrides], tmp_path)
    command = {"eval": evaluate, "embed": embed, "export": export}[config_name]
    with pytest.raises(ConfigError) as error:
        command(cfg)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("config_name", ["eval", "embed", "export"])
@pytest.mark.parametrize("data", sorted(p.stem for p in (CONF / "data").glob("*.yaml")))
def test_configs_compose_with_every_data_option(tmp_path, config_name, data):
    from omegaconf import OmegaConf

    cfg = _compose(config_name, [f"data={data}", "ckpt_path=model.ckpt"], tmp_path)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert cfg.data._target_.startswith("marginkit.data.")


def test_a_config_error_exits_2_in_one_line(tmp_path):
    result = _script("eval", ["ckpt_path=missing.ckpt", f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert result.returncode == 2
    assert "config error: `ckpt_path` 'missing.ckpt': no such file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_misspelt_key_is_one_line_with_the_close_name(tmp_path):
    result = _script("eval", ["ckpt_path=missing.ckpt", "fip=true"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "config error: `fip` is not a key of the config; did you mean flip? (to add a new key: "
        "+fip=...)"
    )


def test_a_missing_data_folder_is_one_line(digits_run, tmp_path):
    command = [f"ckpt_path={digits_run.ckpt}", "data=image_folder"]
    command += [f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path}/run"]
    result = _script("eval", command, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("config error: `data` (marginkit.data.ImageFolderDataModule)")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("script", ["eval", "embed", "export"])
def test_help_answers_without_importing_torch(tmp_path, script):
    result = _script(script, ["--help"], tmp_path)
    assert result.returncode == 0 and f"python {script}.py ckpt_path=" in result.stdout
    # The entry point imports Hydra only; torch and Lightning load inside main().
    code = (
        f"import runpy, sys; runpy.run_path({str(ROOT / f'{script}.py')!r}, run_name='entry'); "
        "print('lightning' in sys.modules, 'torch' in sys.modules)"
    )
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert imported.stdout.split() == ["False", "False"], imported.stderr[-2000:]


# --------------------------------------------------------------------------------------------
# Checkpoints carry what evaluation needs
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_and_export_take_the_data_settings_from_the_checkpoint(tmp_path):
    """Trained at 12x12 RGB: eval given only ckpt_path and the data folder evaluates at 12x12
    (the training run's own test metrics), export given only ckpt_path takes (3, 12, 12)."""
    root = tmp_path / "images"
    for identity in range(12):
        for number in range(4):
            _image(root / f"id{identity:02d}" / f"{number}.png", 10 * identity + number)
    run = tmp_path / "run"
    train = [
        "logger=none",
        "callbacks.progress_bar=null",
        "data=image_folder",
        f"data.root={root}",
        "data.image_size=[12,12]",
        "data.val_ratio=0.25",
        "data.test_ratio=0.25",
        "data.batch_size=8",
        "data.eval_batch_size=8",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.persistent_workers=false",
        "data.pairs_per_fold=2",
        "data.n_folds=2",
        "backbone=small_cnn",
        "backbone.in_channels=3",
        "backbone.image_size=null",
        "backbone.channels=[4]",
        "backbone.embedding_dim=8",
        "trainer.max_epochs=1",
        "eval.baseline=false",
        f"hydra.run.dir={run}",
    ]
    trained = _script("train", train, tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    expected = _strict_json(run / "metrics.json")
    command = [f"ckpt_path={run}", "data=image_folder", f"data.root={root}"]
    command += ["eval.baseline=false", f"hydra.run.dir={tmp_path / 'eval'}"]
    evaluated = _script("eval", command, tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = _strict_json(tmp_path / "eval" / "metrics.json")
    for name in ("test/precision@1", "test/map@r", "test/r_precision"):
        assert metrics[name] == pytest.approx(expected[name], abs=1e-6), name
    out = tmp_path / "backbone.pt2"
    exported = _script("export", [f"ckpt_path={run}", "format=pt2", f"out={out}"], tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "input (batch, 3, 12, 12)" in exported.stdout
    program = torch.export.load(str(out)).module()
    assert program(torch.randn(3, 3, 12, 12)).shape == (3, 8)


def test_a_checkpoint_giving_non_finite_embeddings_is_said_once(digits_run, tmp_path):
    from marginkit.cli.embed import embed
    from marginkit.cli.evaluate import evaluate
    from marginkit.cli.export import export

    checkpoint = torch.load(digits_run.ckpt, weights_only=True)
    state = checkpoint["state_dict"]
    first = next(key for key in state if key.startswith("backbone.") and key.endswith("weight"))
    state[first] = torch.full_like(state[first], float("nan"))
    broken = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, broken)
    for name, command in (("embed", embed), ("eval", evaluate), ("export", export)):
        cfg = _compose(
            name, [f"ckpt_path={broken}", "format=pt2"][: 2 if name == "export" else 1], tmp_path
        )
        with pytest.raises(ConfigError, match="the checkpoint produces non-finite embeddings"):
            command(cfg)
    assert not (tmp_path / "metrics.json").exists()
