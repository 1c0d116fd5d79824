"""What ``export.py`` runs: write a checkpoint's backbone alone, then check the exported model.

Formats:

* ``onnx``: ``torch.onnx.export`` (the ``torch.export``-based exporter; needs ``onnx`` and
  ``onnxscript``), one file, input ``input`` and output ``embeddings`` with a dynamic ``batch``
  axis; checked with ``onnxruntime`` on the CPU.
* ``torchscript``: ``torch.jit.trace`` + ``torch.jit.save`` (TorchScript is deprecated upstream
  in favour of ``torch.export``, but C++/mobile runtimes still load it); checked with
  ``torch.jit.load``.
* ``pt2``: ``torch.export.export`` + ``torch.export.save`` with a dynamic batch dimension;
  checked with ``torch.export.load(...).module()``.

The check runs the exported file on a batch of a different size than the traced one (so a batch
size baked into the graph fails it) and compares with the checkpoint's embeddings
``module(x)``: ``|exported - checkpoint| <= atol + rtol * max|checkpoint row|`` everywhere.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig

from marginkit.cli.checkpoint import load_module, resolve_checkpoint, with_checkpoint_data
from marginkit.cli.config import ConfigError, check_missing, exit_on_config_error, first_line
from marginkit.cli.embedding import build_datamodule, check_backbone_takes, split_dataloader
from marginkit.cli.options import SPLITS, check_choice, check_flag, output_path

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor, nn

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "pt2")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}
INPUT_NAME = "input"
OUTPUT_NAME = "embeddings"
# Items the model is traced with (2: a batch of 1 would let torch.export specialise the batch
# size) and checked with (another size, so that a batch size baked into the graph shows).
TRACE_BATCH = 2
CHECK_BATCH = 5
# Above this many bytes of weights an ONNX file keeps them in a side file (protobuf's 2 GiB cap).
_ONNX_SINGLE_FILE_BYTES = 1_800_000_000


class ExportError(RuntimeError):
    """The export failed (the exporter raised, or the check found a difference)."""


class ExportMismatchError(ExportError):
    """The exported model's embeddings differ from the checkpoint's beyond the tolerance."""


# --------------------------------------------------------------------------------------------
# Example inputs
# --------------------------------------------------------------------------------------------
def _check_input_shape(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple, ListConfig)) or not value:
        raise ConfigError(f"`input_shape` must be a list of positive ints or null, got {value!r}")
    shape = tuple(value)
    if any(isinstance(size, bool) or not isinstance(size, int) or size <= 0 for size in shape):
        raise ConfigError(f"`input_shape` must be a list of positive ints or null, got {value!r}")
    return shape


def example_inputs(cfg: DictConfig, module: Any = None) -> tuple[Tensor, str]:
    """``CHECK_BATCH`` float32 inputs and where they come from.

    Random normal inputs (seeded) of ``input_shape``, else of the shape the checkpoint records
    (``module.input_shape``), else the first items of the first batch of ``split`` of the data
    (repeated if the split is smaller).
    """
    import torch

    shape = _check_input_shape(cfg.get("input_shape"))
    source = "input_shape"
    if shape is None and getattr(module, "input_shape", None):
        shape, source = tuple(module.input_shape), "ckpt_path"
    if shape is not None:
        generator = torch.Generator().manual_seed(int(cfg.get("seed", 0)))
        return torch.randn((CHECK_BATCH, *shape), generator=generator), source
    split = check_choice(cfg, "split", SPLITS)
    datamodule = build_datamodule(cfg, split)
    loader = split_dataloader(datamodule, split)
    batch = next((batch for batch in loader if batch is not None), None)  # None: unreadable
    if batch is None:
        raise ConfigError(f"`data`: the {split} split has no readable item")
    inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise ConfigError(
            "`data`: export needs float tensor inputs, the data gives "
            f"{type(inputs).__name__} {getattr(inputs, 'dtype', '')}".rstrip()
        )
    repeats = math.ceil(CHECK_BATCH / inputs.shape[0])
    return inputs.repeat(repeats, *([1] * (inputs.ndim - 1)))[:CHECK_BATCH].float(), "data"


# --------------------------------------------------------------------------------------------
# Writers and loaders, one pair per format
# --------------------------------------------------------------------------------------------
def _import_or_config_error(name: str, why: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"`format`: {why} needs the `{name}` package (pip install onnx onnxscript "
            "onnxruntime), or choose format=torchscript or format=pt2"
        ) from None


# The ONNX exporter's passes log every step at INFO, and torch.onnx warns about each torchvision
# op it cannot register when torchvision is absent: the least level shown, per logger.
_EXPORTER_LOGGERS = {
    "torch.onnx": logging.ERROR,
    "onnx_ir": logging.WARNING,
    "onnxscript": logging.WARNING,
}


@contextlib.contextmanager
def _quiet_loggers(levels: dict[str, int]) -> Iterator[None]:
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    before = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level in before.items():
            logger.setLevel(level)


def _batch_dim() -> Any:
    import torch

    return torch.export.Dim("batch", min=1)


def write_onnx(backbone: nn.Module, example: Tensor, out: Path, opset: int | None) -> None:
    """Export with ``torch.onnx.export`` (``dynamo=True``), dynamic axis 0 named ``batch``."""
    import torch

    _import_or_config_error("onnx", "format=onnx")
    _import_or_config_error("onnxscript", "format=onnx")
    weight_bytes = sum(p.numel() * p.element_size() for p in backbone.parameters())
    with _quiet_loggers(_EXPORTER_LOGGERS):
        torch.onnx.export(
            backbone,
            (example,),
            str(out),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: _batch_dim()},),
            opset_version=opset,
            external_data=weight_bytes > _ONNX_SINGLE_FILE_BYTES,
            verbose=False,
        )


def load_onnx(out: Path) -> Any:
    """An onnxruntime CPU session, as a function ``inputs -> embeddings``."""
    import torch

    ort = _import_or_config_error("onnxruntime", "checking an ONNX export")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda inputs: torch.from_numpy(session.run(None, {name: inputs.numpy()})[0])


def write_torchscript(backbone: nn.Module, example: Tensor, out: Path, opset: int | None) -> None:
    """``torch.jit.trace`` the backbone and ``torch.jit.save`` it."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=Warning)
        traced = torch.jit.trace(backbone, (example,))
        torch.jit.save(traced, str(out))


def load_torchscript(out: Path) -> Any:
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=Warning)
        return torch.jit.load(str(out), map_location="cpu")


def write_pt2(backbone: nn.Module, example: Tensor, out: Path, opset: int | None) -> None:
    """``torch.export.export`` with a dynamic batch dimension, then ``torch.export.save``."""
    import torch

    program = torch.export.export(backbone, (example,), dynamic_shapes=({0: _batch_dim()},))
    torch.export.save(program, str(out))


def load_pt2(out: Path) -> Any:
    import torch

    return torch.export.load(str(out)).module()


_WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript, "pt2": write_pt2}
_LOADERS = {"onnx": load_onnx, "torchscript": load_torchscript, "pt2": load_pt2}


# --------------------------------------------------------------------------------------------
# Check and command
# --------------------------------------------------------------------------------------------
def compare_embeddings(
    exported: Tensor, expected: Tensor, atol: float, rtol: float
) -> dict[str, float]:
    """Check ``|exported - expected| <= atol + rtol * max|expected row|`` element-wise.

    The relative part scales with each embedding's largest entry rather than with each entry
    (float rounding in a network's last layers scales with the row, so entries near zero carry
    the row's absolute error). Raises :class:`ExportMismatchError` beyond the tolerance or for a
    non-finite output.

    Returns:
        ``max_abs_diff``, ``max_rel_diff`` (``|diff|`` over the row's largest ``|expected|``) and
        ``min_cosine`` (the smallest cosine between an exported and an expected row).

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0, 0.0], [300.0, 400.0]], dtype=torch.float64)
        >>> error = torch.tensor([[0.0, 1e-6], [0.0, 2e-3]], dtype=torch.float64)
        >>> report = compare_embeddings(x + error, x, atol=0.0, rtol=1e-5)
        >>> round(report["max_rel_diff"], 9), report["min_cosine"] > 0.9999
        (5e-06, True)
    """
    import torch

    if exported.shape != expected.shape:
        raise ExportMismatchError(
            f"the exported model returns shape {tuple(exported.shape)}, the checkpoint "
            f"{tuple(expected.shape)}"
        )
    exported, expected = exported.double(), expected.double()
    difference = (exported - expected).abs()
    row_scale = expected.abs().amax(dim=1, keepdim=True)
    cosine = torch.nn.functional.cosine_similarity(exported, expected, dim=1)
    report = {
        "max_abs_diff": float(difference.max()),
        "max_rel_diff": float((difference / row_scale.clamp(min=1e-30)).max()),
        "min_cosine": float(cosine.min()),
    }
    if not bool(torch.isfinite(exported).all()) or bool(
        (difference > atol + rtol * row_scale).any()
    ):
        raise ExportMismatchError(
            "the exported model's embeddings differ from the checkpoint's: max |diff| "
            f"{report['max_abs_diff']:.3g}, max relative {report['max_rel_diff']:.3g} "
            f"(atol {atol:g}, rtol {rtol:g}), min cosine {report['min_cosine']:.6f}"
        )
    return report


def _check_tolerance(cfg: DictConfig, key: str) -> float:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"`{key}` must be a number >= 0, got {value!r}")
    return float(value)


def export(cfg: DictConfig) -> Path:
    """Write ``cfg.format`` of the checkpoint's backbone to ``cfg.out`` and check it.

    Returns:
        The path written (``cfg.out``, or ``<paths.output_dir>/backbone.<suffix>``).

    Raises:
        ConfigError: a config mistake (missing checkpoint, unknown format, inputs the backbone
            cannot take, a missing optional package).
        ExportError: the exporter failed, or (:class:`ExportMismatchError`) the exported model
            disagrees with the checkpoint (the file stays, for inspection).
    """
    # With `input_shape` the data is not loaded: its mandatory values may stay unset.
    shape = _check_input_shape(cfg.get("input_shape"))
    data_keys = {f"data.{key}" for key in cfg.data} if shape is not None else set()
    check_missing(cfg, allowed_missing=data_keys)
    fmt = check_choice(cfg, "format", FORMATS)
    check = check_flag(cfg, "check")
    atol, rtol = _check_tolerance(cfg, "atol"), _check_tolerance(cfg, "rtol")
    opset = cfg.get("opset")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)):
        raise ConfigError(f"`opset` must be an int or null, got {opset!r}")
    if shape is None:
        check_choice(cfg, "split", SPLITS)
    out = output_path(cfg, f"backbone{SUFFIXES[fmt]}")
    resolve_checkpoint(cfg.get("ckpt_path"))
    import lightning as L
    import torch

    L.seed_everything(cfg.get("seed", 0), verbose=False)
    module = load_module(cfg)
    backbone = module.backbone
    cfg = with_checkpoint_data(cfg, module)
    inputs, source = example_inputs(cfg, module)
    check_backbone_takes(cfg, module, inputs, key=source)
    with torch.no_grad():
        expected = module(inputs).float()
    if not bool(torch.isfinite(expected).all()):
        raise ConfigError(
            f"`ckpt_path` {cfg.ckpt_path!r}: the checkpoint produces non-finite embeddings "
            "(NaN or infinite) on the example inputs; its weights are not usable (a diverged run?)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        _WRITERS[fmt](backbone, inputs[:TRACE_BATCH], out, opset)
    except ConfigError:
        raise
    except Exception as error:
        raise ExportError(
            f"{fmt} export of {type(backbone).__name__} failed: {first_line(error)}"
        ) from error
    item_shape = ", ".join(str(size) for size in inputs.shape[1:])
    print(
        f"{fmt} backbone ({type(backbone).__name__}, input (batch, {item_shape})) written to {out}"
    )
    if check:
        model = _LOADERS[fmt](out)
        with torch.no_grad():
            exported = model(inputs)
        report = compare_embeddings(exported, expected, atol, rtol)
        print(
            f"checked on {inputs.shape[0]} inputs (traced with {TRACE_BATCH}): max |diff| "
            f"{report['max_abs_diff']:.2e}, max relative {report['max_rel_diff']:.2e}, "
            f"min cosine {report['min_cosine']:.6f}"
        )
    return out


def run(cfg: DictConfig) -> str:
    """Entry point of ``export.py``: export; one line + exit 2 for a config mistake, one line +
    exit 1 when the exporter fails or the exported model disagrees with the checkpoint."""
    try:
        return str(exit_on_config_error(export, cfg))
    except ExportError as error:
        print(f"export failed: {error}", file=sys.stderr)
        raise SystemExit(1) from None
