"""Where each row's target lies in this rank's columns, and its cosine (for every op's kernel).

Every op that leaves out the target column starts the same way: check the labels against the
(global) number of classes, then turn each global label into a column of this rank's shard of
the classes, ``-1`` where the row has none here (an ignored row, or a target on another rank).
"""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit._validation import check_label_range
from marginkit.ops._distributed import class_shard_offset, resolve_group


def local_target_column(
    label: Tensor,
    ignore_index: int,
    n_local_classes: int,
    group_name: str,
    check_labels: bool = True,
) -> Tensor:
    """The int64 column of each row's target in this rank's shard, ``-1`` where it has none.

    Checks the label range against all classes of the group (``ValueError`` naming the label
    and its row; one host read): ``[0, n_local_classes)`` in a single process. Rank ``r`` of
    the group named ``group_name`` holds the classes after those of ranks ``< r``. With
    ``check_labels=False`` (a caller that flags bad labels itself, without a host read) a label
    outside the range simply has no column anywhere.

    Example:
        >>> local_target_column(torch.tensor([2, -100, 0]), -100, 3, "").tolist()
        [2, -1, 0]
    """
    label = label.long()
    valid = label != ignore_index
    group = resolve_group(group_name)
    if group is None:
        offset, num_classes = 0, n_local_classes
    else:
        offset, num_classes = class_shard_offset(n_local_classes, group, label.device)
    if check_labels:
        check_label_range(label, valid, num_classes, ignore_index)
    local_label = label - offset
    owned = valid & (local_label >= 0) & (local_label < n_local_classes)
    return torch.where(owned, local_label, -1)


def gather_target(matrix: Tensor, target_col: Tensor, dtype: torch.dtype) -> Tensor:
    """``matrix[i, target_col[i]]`` in ``dtype``, 0 where ``target_col`` is ``-1``.

    Example:
        >>> x = torch.tensor([[0.5, 0.25], [1.0, 0.0]])
        >>> gather_target(x, torch.tensor([1, -1]), torch.float64).tolist()
        [0.25, 0.0]
    """
    values = torch.zeros(matrix.shape[0], dtype=dtype, device=matrix.device)
    if matrix.shape[1] == 0:
        return values
    gathered = matrix.gather(1, target_col.clamp(min=0)[:, None])[:, 0].to(dtype)
    return torch.where(target_col >= 0, gathered, values)
