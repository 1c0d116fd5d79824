"""Checks of the retrieval and verification metrics' arguments and inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from marginkit._validation.tensors import check_finite_rows, check_labels


def check_choice(name: str, value: object, allowed: tuple) -> object:
    """Return ``value`` if it is one of ``allowed``, else raise ``ValueError`` naming them."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")
    return value


def check_top_k(top_k: int | Sequence[int]) -> tuple[int, ...]:
    """Return ``top_k`` (an int or ints ``> 0``) as a sorted tuple without repeats.

    Example:
        >>> check_top_k([5, 1, 5])
        (1, 5)
    """
    if isinstance(top_k, int) and not isinstance(top_k, bool):
        top_k = (top_k,)
    try:
        values = tuple(top_k)
    except TypeError:
        raise ValueError(f"`top_k` must be an int or a sequence of ints, got {top_k!r}") from None
    if not values:
        raise ValueError("`top_k` must hold at least one k, got an empty sequence")
    for k in values:
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ValueError(f"`top_k` must hold positive ints, got {k!r} in {list(values)}")
    return tuple(sorted(set(values)))


def check_metric_names(
    metrics: str | Sequence[str] | None, allowed: tuple[str, ...]
) -> tuple[str, ...]:
    """Return the names in ``metrics`` (``None``: all of ``allowed``) in the order of ``allowed``."""
    if metrics is None:
        return allowed
    if isinstance(metrics, str):
        metrics = (metrics,)
    values = tuple(metrics)
    if not values:
        raise ValueError(f"`metrics` must name at least one of {allowed}, got []")
    for name in values:
        if name not in allowed:
            raise ValueError(f"`metrics` must hold names from {allowed}, got {name!r}")
    return tuple(name for name in allowed if name in values)


def check_chunking(chunk_size: int | None, memory_budget: int) -> None:
    """Raise ``ValueError`` unless ``chunk_size`` is a positive int or ``None`` and
    ``memory_budget`` a positive int (bytes)."""
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0
    ):
        raise ValueError(f"`chunk_size` must be a positive int or None, got {chunk_size!r}")
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget <= 0:
        raise ValueError(f"`memory_budget` must be a positive int (bytes), got {memory_budget!r}")


def check_embedding_matrix(name: str, embeddings: object, dim: int | None = None) -> None:
    """Raise unless ``embeddings`` is a non-empty, finite, floating ``(N, D)`` tensor (``D = dim``)."""
    if not isinstance(embeddings, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.ndim != 2:
        raise ValueError(f"`{name}` must have shape (N, D), got {tuple(embeddings.shape)}")
    if embeddings.shape[0] == 0:
        raise ValueError(f"`{name}` is empty: shape {tuple(embeddings.shape)}")
    if embeddings.shape[1] == 0:
        raise ValueError(f"`{name}` has no features: shape {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise ValueError(f"`{name}` must be floating point, got {embeddings.dtype}")
    if dim is not None and embeddings.shape[1] != dim:
        raise ValueError(
            f"`{name}` must have {dim} features like the earlier embeddings, "
            f"got shape {tuple(embeddings.shape)}"
        )
    check_finite_rows(name, embeddings)


def check_label_vector(name: str, labels: object, size: int, device: torch.device) -> Tensor:
    """Return ``labels`` ``(size,)`` (or ``(size, 1)``) integer as int64 on ``device``."""
    return check_labels(labels, size, name).to(device)


def check_flags(name: str, flags: object, size: int, device: torch.device) -> Tensor:
    """Return the bool ``(size,)`` ``flags`` on ``device`` (``None``: all ``True``)."""
    if flags is None:
        return torch.ones(size, dtype=torch.bool, device=device)
    if not isinstance(flags, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor or None, got {type(flags).__name__}")
    if flags.dtype != torch.bool:
        raise ValueError(f"`{name}` must be a bool tensor, got {flags.dtype}")
    if flags.ndim != 1 or flags.shape[0] != size:
        raise ValueError(
            f"`{name}` must have shape ({size},) to match the embeddings, got {tuple(flags.shape)}"
        )
    return flags.to(device)


def check_far_targets(far_targets: float | Sequence[float]) -> tuple[float, ...]:
    """Return the false-accept rates (each in ``(0, 1]``) as a tuple of floats.

    Example:
        >>> check_far_targets(1e-3)
        (0.001,)
    """
    if isinstance(far_targets, (int, float)) and not isinstance(far_targets, bool):
        far_targets = (far_targets,)
    values = tuple(far_targets)
    if not values:
        raise ValueError("`far_targets` must hold at least one false-accept rate, got []")
    for far in values:
        if isinstance(far, bool) or not isinstance(far, (int, float)) or not 0 < far <= 1:
            raise ValueError(f"`far_targets` must hold rates in (0, 1], got {far!r}")
    return tuple(float(far) for far in values)


def check_n_folds(n_folds: object) -> int:
    """Return ``n_folds`` if it is an int ``>= 2``, else raise ``ValueError``."""
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"`n_folds` must be an int >= 2, got {n_folds!r}")
    return n_folds


def check_issame(issame: object, size: int, device: torch.device) -> Tensor:
    """Return the ``(size,)`` same/different pair flags (bool, or 0/1 integers) as bool."""
    if not isinstance(issame, Tensor):
        raise TypeError(f"`issame` must be a torch.Tensor, got {type(issame).__name__}")
    if issame.ndim != 1 or issame.shape[0] != size:
        raise ValueError(
            f"`issame` must have shape ({size},) to match the pairs, got {tuple(issame.shape)}"
        )
    if issame.dtype != torch.bool:
        if issame.is_floating_point() or issame.is_complex():
            raise ValueError(f"`issame` must be a bool or 0/1 integer tensor, got {issame.dtype}")
        bad = (issame != 0) & (issame != 1)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"`issame` must be 0 or 1, got {int(issame[row])} at row {row}")
        issame = issame.bool()
    return issame.to(device)
