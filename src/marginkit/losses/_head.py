r"""The base of every head that owns class weights: validate once, per-row loss, reduce.

:class:`ClassWeightHead` holds what the softmax heads (:class:`~marginkit.losses.SoftmaxLoss`,
every :class:`~marginkit.losses.AngularMarginLoss`), L-GM and the centre regularisers
(:class:`~marginkit.losses.CenterLoss`, :class:`~marginkit.losses.GitLoss`) share:
``in_features``, ``num_classes``, ``reduction``, a ``(rows, in_features)`` weight shaped like
``nn.Linear``'s, and

.. math:: \text{forward}(x, y) = \operatorname{reduce}\big(\ell(\text{validate}(x, y))\big)

where :meth:`ClassWeightHead.validate` checks the inputs once (types, shapes, devices; the label
range and the embeddings' finiteness with one host read between them), a subclass writes only
:meth:`ClassWeightHead.per_row_loss`, and the reduction is :func:`reduce_loss`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from marginkit._validation import REDUCTIONS, check_head_inputs, check_option, check_positive_int
from marginkit.losses._loss_utils import reduce_loss


class ClassWeightHead(nn.Module):
    r"""A loss head with a ``(rows, in_features)`` class weight: validate → per-row loss → reduce.

    :math:`\mathcal L = \operatorname{reduce}_i \ell_i(x_i, y_i)` with ``reduction`` ``"mean"``,
    ``"sum"`` or ``"none"`` (the ``(N,)`` per-row losses). Subclasses implement
    :meth:`per_row_loss` on validated inputs and initialise the weight in
    :meth:`reset_parameters`.

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes, at least ``min_classes`` (2 for the softmax
            heads: with one class their loss is 0 whatever the embeddings).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Attributes:
        last_logs: ``{name: 0-d tensor}`` a head records in its forward (detached, still on the
            device: reading them is the logger's host sync, not the step's).

    Example:
        >>> import torch
        >>> from marginkit.losses import CenterLoss
        >>> head = CenterLoss(num_classes=3, in_features=2)
        >>> isinstance(head, ClassWeightHead), tuple(head.class_weight.shape)
        (True, (3, 2))
    """

    #: Name of the weight parameter (``"centers"`` for the centre regularisers).
    weight_name: ClassVar[str] = "weight"
    #: Fewest classes the head's loss means something for.
    min_classes: ClassVar[int] = 2
    #: Why fewer classes are refused (completes the error message).
    min_classes_reason: ClassVar[str] = "with one class the softmax loss is 0 whatever the input"

    def __init__(self, in_features: int, num_classes: int, reduction: str = "mean") -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.num_classes = check_positive_int("num_classes", num_classes)
        if num_classes < self.min_classes:
            raise ValueError(
                f"`num_classes` must be >= {self.min_classes} ({self.min_classes_reason}), "
                f"got {num_classes}"
            )
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.last_logs: dict[str, Tensor] = {}
        weight = nn.Parameter(torch.empty(self.num_weight_rows(), self.in_features))
        self.register_parameter(self.weight_name, weight)
        self.reset_parameters()

    @property
    def class_weight(self) -> nn.Parameter:
        """The ``(rows, in_features)`` class weight (``weight`` or ``centers``)."""
        return getattr(self, self.weight_name)

    def num_weight_rows(self) -> int:
        """Rows of the class weight: ``num_classes`` (sub-centre heads have more)."""
        return self.num_classes

    def reset_parameters(self) -> None:
        """Initialise the class weights with Xavier-uniform."""
        nn.init.xavier_uniform_(self.class_weight)

    def validate(self, embeddings: object, labels: object) -> tuple[Tensor, Tensor]:
        """Check ``(embeddings, labels)`` once; return them cast to the weight's dtype, labels 1-D.

        See :func:`marginkit._validation.check_head_inputs`.
        """
        return check_head_inputs(
            embeddings, labels, self.in_features, self.num_classes, self.class_weight.dtype
        )

    def per_row_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The ``(N,)`` losses of validated, dtype-matched inputs (before the reduction)."""
        raise NotImplementedError

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The loss of ``embeddings`` ``(N, in_features)`` for class ids ``labels`` ``(N,)``."""
        embeddings, labels = self.validate(embeddings, labels)
        return reduce_loss(self.per_row_loss(embeddings, labels), self.reduction)

    def repr_fields(self) -> list[str]:
        """The hyper-parameters :meth:`extra_repr` shows between the sizes and the reduction."""
        return []

    def extra_repr(self) -> str:
        fields = [
            f"in_features={self.in_features}",
            f"num_classes={self.num_classes}",
            *self.repr_fields(),
            f"reduction={self.reduction!r}",
        ]
        return ", ".join(fields)


def detached(value: Tensor) -> Tensor:
    """A detached copy of ``value`` for ``last_logs`` (a copy: buffers change in place)."""
    return value.detach().clone()
