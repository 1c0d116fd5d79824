"""Checks at the public boundary of the fused ops.

Two kinds, kept apart on purpose:

* **static** checks (:func:`check_static_arguments`): types, shapes, dtypes, devices and option
  strings. They read metadata only, never tensor data, so they cost nothing on the device, run
  in the Python wrappers, and ``torch.compile`` traces through them without a graph break.
* the **label range** check (:func:`check_label_range`), which is data dependent: it runs inside
  the op kernels (opaque to ``torch.compile``), costs O(N) and one device-to-host read of a single
  boolean (a sync on CUDA); only when it fails does it look further, to name the offending label
  and row.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")
IMPLS = (None, "torch", "triton")
LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_option(name: str, value: object, allowed: tuple) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    if not (value is None or isinstance(value, str)) or value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")


def check_finite_number(name: str, value: object, *, positive: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number (``> 0`` with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        wanted = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"`{name}` must be {wanted}, got {value}")
    return value


def check_logits_and_label(logits: object, label: object) -> Tensor:
    """Check ``logits`` (N, C) floating and ``label`` (N,) or (N, 1) integer; return label (N,)."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"`logits` must be a torch.Tensor, got {type(logits).__name__}")
    if not isinstance(label, Tensor):
        raise ValueError(f"`label` must be a torch.Tensor, got {type(label).__name__}")
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape (N, C), got {tuple(logits.shape)}")
    if logits.dtype not in LOGIT_DTYPES:
        raise ValueError(
            f"`logits` must be float16, bfloat16, float32 or float64, got {logits.dtype}"
        )
    if label.is_floating_point() or label.is_complex() or label.dtype == torch.bool:
        raise ValueError(f"`label` must be an integer tensor of class ids, got {label.dtype}")
    if label.ndim == 2 and label.shape[1] == 1:
        label = label.reshape(-1)
    if label.ndim != 1 or label.shape[0] != logits.shape[0]:
        raise ValueError(
            f"`label` must have shape ({logits.shape[0]},) or ({logits.shape[0]}, 1) to match "
            f"`logits` {tuple(logits.shape)}, got {tuple(label.shape)}"
        )
    if label.device != logits.device:
        raise ValueError(
            f"`label` must be on the device of `logits` ({logits.device}), got {label.device}"
        )
    return label


def check_margins(
    m1: object, m2: object, m3: object, names: tuple[str, str, str]
) -> tuple[float, float, float]:
    """Return the margins as floats; ``ValueError`` unless finite with the first one ``> 0``."""
    return (
        check_finite_number(names[0], m1, positive=True),
        check_finite_number(names[1], m2),
        check_finite_number(names[2], m3),
    )


def check_ignore_index(ignore_index: object) -> None:
    """Raise ``ValueError`` unless ``ignore_index`` is an ``int``."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ValueError(f"`ignore_index` must be an int, got {type(ignore_index).__name__}")


def check_label_range(
    label: Tensor,
    valid: Tensor | None,
    num_classes: int,
    ignore_index: int | None,
    name: str = "label",
) -> None:
    """Raise ``ValueError`` naming the first label outside ``[0, num_classes)`` of a valid row.

    ``valid`` marks the rows whose label is not ``ignore_index`` (``None``: every row, for
    callers without an ``ignore_index``); ``name`` is the argument the message names. O(N) work
    and one host read of a single boolean; the search for the offending row only happens on
    failure.
    """
    bad = (label < 0) | (label >= num_classes)
    if valid is not None:
        bad &= valid
    if not bool(bad.any()):
        return
    row = int(bad.nonzero()[0, 0])
    allowed = f"[0, {num_classes})"
    if ignore_index is not None:
        allowed += f" or equal to `ignore_index` ({ignore_index})"
    raise ValueError(f"`{name}` must be in {allowed}, got {int(label[row])} at row {row}")
