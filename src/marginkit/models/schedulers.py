"""Learning-rate schedules that need the run's total number of optimizer steps."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


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
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"`warmup_steps` must be in [0, {total_steps}), got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"`min_lr_ratio` must be in [0, 1], got {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
