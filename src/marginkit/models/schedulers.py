"""Learning-rate schedules that need the run's total number of optimizer steps."""

from __future__ import annotations

import math
import warnings

import torch
from torch.optim.lr_scheduler import LambdaLR


def _fit_warmup(warmup_steps: int, total_steps: int) -> int:
    """``warmup_steps``, shortened (with a warning) to fit a run of ``total_steps`` steps."""
    if warmup_steps < 0:
        raise ValueError(f"`warmup_steps` must be >= 0, got {warmup_steps}")
    if warmup_steps >= total_steps:
        warnings.warn(
            f"`warmup_steps` ({warmup_steps}) is not shorter than the run ({total_steps} steps); "
            f"warming up for {total_steps - 1} steps",
            stacklevel=3,
        )
        return total_steps - 1
    return warmup_steps


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    r"""Linear warm-up, then cosine decay to ``min_lr_ratio`` × the base learning rate.

    .. math::
        f(t) = \begin{cases} (t + 1) / w & t < w \\
        r + (1 - r)\,\tfrac12\bigl(1 + \cos(\pi\,\tfrac{t - w}{T - w})\bigr) & t \ge w \end{cases}

    with :math:`w` = ``warmup_steps``, :math:`T` = ``total_steps``, :math:`r` = ``min_lr_ratio``.
    :class:`~marginkit.models.EmbeddingModule` fills ``total_steps`` from the trainer.

    Example:
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = cosine_with_warmup(opt, total_steps=10, warmup_steps=2)
        >>> [round(f(t), 3) for f in sched.lr_lambdas for t in (0, 1, 2, 10)]
        [0.5, 1.0, 1.0, 0.0]
    """
    if total_steps <= 0:
        raise ValueError(f"`total_steps` must be positive, got {total_steps}")
    warmup_steps = _fit_warmup(warmup_steps, total_steps)
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"`min_lr_ratio` must be in [0, 1], got {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def polynomial_with_warmup(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    power: float = 2.0,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    r"""Linear warm-up, then polynomial decay to ``min_lr_ratio`` × the base learning rate.

    .. math::
        f(t) = \begin{cases} (t + 1) / w & t < w \\
        r + (1 - r)\,\bigl(1 - \tfrac{t - w}{T - w}\bigr)^{p} & t \ge w \end{cases}

    with :math:`w` = ``warmup_steps``, :math:`T` = ``total_steps``, :math:`p` = ``power``,
    :math:`r` = ``min_lr_ratio``: insightface's ``PolyScheduler`` (power 2) for face
    recognition. :class:`~marginkit.models.EmbeddingModule` fills ``total_steps`` from the trainer.

    Example:
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = polynomial_with_warmup(opt, total_steps=10, warmup_steps=2, power=2.0)
        >>> [round(f(t), 4) for f in sched.lr_lambdas for t in (0, 1, 2, 6, 10)]
        [0.5, 1.0, 1.0, 0.25, 0.0]
    """
    if total_steps <= 0:
        raise ValueError(f"`total_steps` must be positive, got {total_steps}")
    warmup_steps = _fit_warmup(warmup_steps, total_steps)
    if not power > 0:
        raise ValueError(f"`power` must be positive, got {power}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"`min_lr_ratio` must be in [0, 1], got {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress) ** power

    return LambdaLR(optimizer, factor)
