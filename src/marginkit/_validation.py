"""Argument checks shared by the ops, the losses and the miners (one place, one error type per mistake).

A wrong *type* raises ``TypeError``, a bad *value* ``ValueError``; every message names the
argument and what was allowed.

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
    """Raise unless ``value`` is one of ``allowed``: ``TypeError`` for a non-string, else ``ValueError``.

    ``None`` is a value like the strings (allowed where ``allowed`` lists it).
    """
    if value is None or isinstance(value, str):
        if value not in allowed:
            raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")
        return
    raise TypeError(f"`{name}` must be one of {allowed}, got {type(value).__name__} {value!r}")


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``, else raise ``TypeError``."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}")
    return value


def check_process_group(group: object) -> None:
    """Raise ``TypeError`` unless ``group`` is a ``torch.distributed`` process group or ``None``."""
    import torch.distributed as dist

    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(
            f"`group` must be a torch.distributed ProcessGroup or None, got {type(group).__name__}"
        )


def check_finite_number(name: str, value: object, *, positive: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number (``> 0`` with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        wanted = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"`{name}` must be {wanted}, got {value}")
    return value


def check_tensor(name: str, value: object) -> Tensor:
    """Return ``value`` if it is a ``torch.Tensor``, else raise ``TypeError`` naming ``name``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_float_dtype(name: str, value: Tensor) -> None:
    """Raise ``ValueError`` unless ``value`` is float16, bfloat16, float32 or float64."""
    if value.dtype not in LOGIT_DTYPES:
        raise ValueError(
            f"`{name}` must be float16, bfloat16, float32 or float64, got {value.dtype}"
        )


def _is_integer(value: Tensor) -> bool:
    """Whether ``value`` holds integers (not floating, complex or bool)."""
    return not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)


def check_row_labels(label: Tensor, rows: Tensor, rows_name: str) -> Tensor:
    """Check integer ``label`` (N,) or (N, 1) against the N rows of ``rows``; return label (N,).

    ``rows_name`` is what the messages call ``rows`` (``"logits"``, ``"embeddings"``, ...).
    """
    if not _is_integer(label):
        raise ValueError(f"`label` must be an integer tensor of class ids, got {label.dtype}")
    n_rows = rows.shape[0]
    if label.ndim == 2 and label.shape[1] == 1:
        label = label.reshape(-1)
    if label.ndim != 1 or label.shape[0] != n_rows:
        raise ValueError(
            f"`label` must have shape ({n_rows},) or ({n_rows}, 1) to match "
            f"`{rows_name}` {tuple(rows.shape)}, got {tuple(label.shape)}"
        )
    check_same_device("label", label, rows_name, rows)
    return label


def check_same_device(name: str, value: Tensor, reference_name: str, reference: Tensor) -> None:
    """Raise ``ValueError`` unless ``value`` is on the device of ``reference``."""
    if value.device != reference.device:
        raise ValueError(
            f"`{name}` must be on the device of `{reference_name}` ({reference.device}), "
            f"got {value.device}"
        )


def check_logits_and_label(logits: object, label: object, *, name: str = "logits") -> Tensor:
    """Check ``logits`` (N, C) floating and ``label`` (N,) or (N, 1) integer; return label (N,).

    ``name`` is what the messages call the (N, C) argument (``"cosines"`` for
    :func:`~marginkit.ops.target_logsumexp`).
    """
    logits = check_tensor(name, logits)
    label = check_tensor("label", label)
    if logits.ndim != 2:
        raise ValueError(f"`{name}` must have shape (N, C), got {tuple(logits.shape)}")
    check_float_dtype(name, logits)
    return check_row_labels(label, logits, name)


def check_embeddings_weight_and_label(
    embeddings: object, weight: object, label: object
) -> tuple[Tensor, Tensor]:
    """Check ``embeddings`` (N, D), ``weight`` (C, D) and ``label``; return ``(embeddings, label (N,))``.

    The inputs of the normalised-linear ops: both matrices floating and on one device.
    ``embeddings`` are cast to ``weight``'s dtype (the computation dtype) when they differ.
    """
    embeddings = check_tensor("embeddings", embeddings)
    weight = check_tensor("weight", weight)
    label = check_tensor("label", label)
    if embeddings.ndim != 2:
        raise ValueError(f"`embeddings` must have shape (N, D), got {tuple(embeddings.shape)}")
    if weight.ndim != 2 or weight.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"`weight` must have shape (C, {embeddings.shape[1]}) to match `embeddings` "
            f"{tuple(embeddings.shape)}, got {tuple(weight.shape)}"
        )
    check_float_dtype("embeddings", embeddings)
    check_float_dtype("weight", weight)
    check_same_device("weight", weight, "embeddings", embeddings)
    label = check_row_labels(label, embeddings, "embeddings")
    return embeddings.to(weight.dtype), label


def check_categories(
    column_category: object,
    row_category: object,
    n_columns: int,
    n_rows: int,
    device_of: tuple[str, Tensor],
) -> None:
    """Check the optional ``column_category`` (C,) and ``row_category`` (N,) integer tensors.

    Both or neither; on the device of ``device_of = (name, tensor)``.
    """
    if column_category is None and row_category is None:
        return
    if column_category is None or row_category is None:
        raise ValueError("`column_category` and `row_category` must be given together")
    expected = {"column_category": n_columns, "row_category": n_rows}
    for name, value in (("column_category", column_category), ("row_category", row_category)):
        value = check_tensor(name, value)
        if not _is_integer(value):
            raise ValueError(f"`{name}` must be an integer tensor, got {value.dtype}")
        if value.shape != (expected[name],):
            raise ValueError(
                f"`{name}` must have shape ({expected[name]},), got {tuple(value.shape)}"
            )
        check_same_device(name, value, *device_of)


def check_margins(
    m1: object, m2: object, m3: object, names: tuple[str, str, str]
) -> tuple[float, float, float]:
    """Return the margins as floats: ``TypeError`` for a non-number, ``ValueError`` unless finite
    with the first one ``> 0``."""
    return (
        check_finite_number(names[0], m1, positive=True),
        check_finite_number(names[1], m2),
        check_finite_number(names[2], m3),
    )


def check_ignore_index(ignore_index: object) -> None:
    """Raise ``TypeError`` unless ``ignore_index`` is an ``int``."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"`ignore_index` must be an int, got {type(ignore_index).__name__}")


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


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is a positive ``int``, else raise ``TypeError``/``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"`{name}` must be positive, got {value}")
    return value


def check_embeddings(embeddings: Tensor, in_features: int) -> None:
    """Raise ``ValueError`` unless ``embeddings`` is a floating (N, in_features) tensor."""
    check_tensor("embeddings", embeddings)
    if embeddings.ndim != 2 or embeddings.shape[1] != in_features:
        raise ValueError(
            f"`embeddings` must have shape (N, {in_features}), got {tuple(embeddings.shape)}"
        )
    if not embeddings.is_floating_point():
        raise ValueError(f"`embeddings` must be floating point, got {embeddings.dtype}")


def check_labels(labels: Tensor, batch_size: int) -> Tensor:
    """Return ``labels`` as a 1-D int64 tensor after checking its batch size and dtype.

    Metadata only (no device work); the range check is the op's
    :func:`check_label_range`.
    """
    check_tensor("labels", labels)
    if not _is_integer(labels):
        raise ValueError(f"`labels` must be an integer tensor, got {labels.dtype}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != batch_size:
        raise ValueError(
            f"`labels` must have shape ({batch_size},) to match the embeddings, "
            f"got {tuple(labels.shape)}"
        )
    return labels.long()


def check_nonnegative(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite real number ``>= 0``.

    Raises:
        TypeError: ``value`` is not a real number.
        ValueError: ``value`` is negative, infinite or NaN.

    Example:
        >>> check_nonnegative("lamda", 0.5)
        0.5
    """
    value = check_finite_number(name, value)
    if value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value}")
    return value


def check_scale(s: object) -> float:
    """Return the logit scale ``s`` as a float; ``ValueError`` unless finite and ``> 0``.

    Example:
        >>> check_scale(64)
        64.0
    """
    return check_finite_number("s", s, positive=True)


def check_margin(
    name: str, value: object, upper: float | None = None, *, lower: float = 0.0
) -> float:
    """Return ``value`` as a float if ``lower <= value (< upper)``, else raise ``ValueError``.

    Example:
        >>> check_margin("m", 0.5, upper=3.14)
        0.5
    """
    value = check_finite_number(name, value)
    if value < lower or (upper is not None and value >= upper):
        allowed = f"[{lower:g}, {upper:g})" if upper is not None else f">= {lower:g}"
        raise ValueError(f"`{name}` must be in {allowed}, got {value}")
    return value


def check_memory_efficient(value: object) -> bool | str:
    """Return ``value`` if it is ``True``, ``False`` or ``"auto"``, else raise ``ValueError``."""
    if not (isinstance(value, bool) or value == "auto"):
        raise ValueError(f"`memory_efficient` must be True, False or 'auto', got {value!r}")
    return value


def check_labels_and_finite_rows(labels: Tensor, embeddings: Tensor, num_classes: int) -> None:
    """Raise ``ValueError`` for a label outside ``[0, num_classes)`` or a non-finite embedding row.

    Both checks share one host read of a single boolean (the one the label range check costs on
    its own); only on failure does it look further, to name the label or the row.
    """
    bad_label = (labels < 0) | (labels >= num_classes)
    nonfinite = ~torch.isfinite(embeddings).all(dim=1)
    if not bool((bad_label | nonfinite).any()):
        return
    check_label_range(labels, None, num_classes, None, name="labels")
    row = int(nonfinite.nonzero()[0, 0])
    value = embeddings[row][~torch.isfinite(embeddings[row])][0].item()
    raise ValueError(
        f"`embeddings` must be finite, got {value} at row {row} (a diverged backbone or a bad "
        "input sample)"
    )


def check_head_inputs(
    embeddings: object, labels: object, in_features: int, num_classes: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Validate a head's ``(embeddings, labels)`` once; cast the embeddings to the head's ``dtype``.

    ``embeddings``: a non-empty floating ``(N, in_features)`` tensor of finite values;
    ``labels``: ``(N,)`` or ``(N, 1)`` integer class ids in ``[0, num_classes)`` on the same
    device. Embeddings of another floating dtype (float16 into a float32 head) are computed in
    the head's dtype. One host read for the data-dependent part
    (:func:`check_labels_and_finite_rows`).

    Example:
        >>> x, y = check_head_inputs(torch.ones(2, 3), torch.tensor([0, 1]), 3, 2, torch.float64)
        >>> x.dtype, y.tolist()
        (torch.float64, [0, 1])
    """
    check_embeddings(embeddings, in_features)
    if embeddings.shape[0] == 0:
        raise ValueError(
            f"`embeddings` must hold at least one row, got an empty batch {tuple(embeddings.shape)}"
        )
    labels = check_labels(labels, embeddings.shape[0])
    check_same_device("labels", labels, "embeddings", embeddings)
    check_labels_and_finite_rows(labels, embeddings, num_classes)
    if embeddings.dtype != dtype:
        embeddings = embeddings.to(dtype)
    return embeddings, labels


def check_arcface_fallback(margin_fallback: str, m1: object) -> None:
    r"""Raise ``ValueError`` for ``margin_fallback="arcface"`` with ``m1`` other than the float 1.

    insightface's continuation :math:`\cos\theta - m_2\sin m_2 - m_3` past
    :math:`m_1\theta + m_2 = \pi` is made for :math:`m_1 = 1`; with :math:`m_1 \ne 1` the target
    logit jumps up at :math:`\theta^* = (\pi - m_2)/m_1` (for ``(2, 0.3, 0)``: −1.0 just before,
    +0.06 just after), so the loss would fall as a sample leaves its class.
    ``margin_fallback="monotonic"`` is continuous and decreasing for every ``m1``.

    Example:
        >>> check_arcface_fallback("arcface", 1.0)
        >>> check_arcface_fallback("monotonic", 2.0)
    """
    if margin_fallback != "arcface":
        return
    if isinstance(m1, bool) or not isinstance(m1, numbers.Real) or float(m1) != 1.0:
        shown = f"a {type(m1).__name__}" if isinstance(m1, Tensor) else repr(m1)
        raise ValueError(
            "`margin_fallback='arcface'` needs `m1` = 1 (its continuation cos θ − m2·sin(m2) − "
            "m3 makes the target logit jump up at θ = (π − m2)/m1 otherwise); use "
            f"margin_fallback='monotonic' for m1 != 1, got m1={shown}"
        )
