"""Checks of tensors: types, shapes, dtypes, devices, labels, finiteness (the data-dependent
ones cost one host read of a single boolean, and look further only on failure)."""

from __future__ import annotations

import torch
from torch import Tensor

LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, value: object) -> Tensor:
    """Return ``value`` if it is a ``torch.Tensor``, else raise ``TypeError`` naming ``name``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_floating_matrix(name: str, value: object) -> Tensor:
    """Return ``value`` if it is a floating ``(N, D)`` tensor: ``TypeError`` / ``ValueError``."""
    value = check_tensor(name, value)
    if value.ndim != 2 or not value.is_floating_point():
        raise ValueError(
            f"`{name}` must be a floating (N, D) tensor, got {value.dtype} of shape "
            f"{tuple(value.shape)}"
        )
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


def check_embeddings(embeddings: Tensor, in_features: int) -> None:
    """Raise ``ValueError`` unless ``embeddings`` is a floating (N, in_features) tensor."""
    check_tensor("embeddings", embeddings)
    if embeddings.ndim != 2 or embeddings.shape[1] != in_features:
        raise ValueError(
            f"`embeddings` must have shape (N, {in_features}), got {tuple(embeddings.shape)}"
        )
    if not embeddings.is_floating_point():
        raise ValueError(f"`embeddings` must be floating point, got {embeddings.dtype}")


def check_labels(labels: object, batch_size: int, name: str = "labels") -> Tensor:
    """Return ``labels`` as a 1-D int64 tensor after checking its batch size and dtype.

    ``(N,)`` or ``(N, 1)`` integers; ``name`` is what the messages call it. Metadata only (no
    device work); the range check is the op's :func:`check_label_range`.
    """
    check_tensor(name, labels)
    if not _is_integer(labels):
        raise ValueError(f"`{name}` must be an integer tensor, got {labels.dtype}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.shape[0] != batch_size:
        raise ValueError(
            f"`{name}` must have shape ({batch_size},) to match the embeddings, "
            f"got {tuple(labels.shape)}"
        )
    return labels.long()


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


def check_finite_rows(name: str, values: Tensor) -> None:
    """Raise ``ValueError`` naming ``name``, the first non-finite value and its row.

    One host read of a single boolean; the search for the row only happens on failure.

    Example:
        >>> check_finite_rows("scores", torch.tensor([0.5, float("nan")]))
        Traceback (most recent call last):
        ...
        ValueError: `scores` must be finite, got nan at row 1
    """
    flat = values.detach().reshape(values.shape[0], -1) if values.ndim else values.reshape(1, 1)
    finite = torch.isfinite(flat).all(1)
    if bool(finite.all()):
        return
    row = int((~finite).nonzero()[0, 0])
    bad = flat[row][~torch.isfinite(flat[row])][0].item()
    raise ValueError(f"`{name}` must be finite, got {bad} at row {row}")


def check_features_and_labels(features: object, labels: object) -> Tensor:
    """Check a (B, D) floating, finite ``features`` batch and its (B,) integer ``labels``.

    The inputs of the miners and the pair/triplet losses. Returns the labels as a 1-D int64
    tensor. One device-to-host read (the finiteness check): nothing trains on with NaN or
    infinite embeddings.
    """
    features = check_tensor("features", features)
    if features.ndim != 2:
        raise ValueError(f"`features` must have shape (B, D), got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"`features` must be floating point, got {features.dtype}")
    labels = check_labels(labels, features.shape[0])
    check_same_device("labels", labels, "features", features)
    check_finite_rows("features", features)
    return labels
