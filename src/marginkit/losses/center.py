"""Center loss: pull each embedding towards a learned centre of its class (Wen et al., ECCV 2016)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from marginkit._validation import (
    check_embeddings,
    check_label_range,
    check_labels,
    check_option,
    check_positive_int,
)
from marginkit.losses._loss_utils import check_nonnegative, reduce_loss
from marginkit.ops import REDUCTIONS


def squared_distance_to_centre(embeddings: Tensor, centers: Tensor, labels: Tensor) -> Tensor:
    r"""Row-wise :math:`\lVert x_i - c_{y_i} \rVert^2` (from the difference, exact for close pairs).

    Example:
        >>> import torch
        >>> squared_distance_to_centre(
        ...     torch.tensor([[3.0, 4.0]]), torch.zeros(2, 2), torch.tensor([1])
        ... ).tolist()
        [25.0]
    """
    return (embeddings - centers[labels]).pow(2).sum(dim=1)


class CenterLoss(nn.Module):
    r"""Center loss :math:`\ell_i = \frac{\lambda}{2}\lVert x_i - c_{y_i}\rVert_2^2`, averaged over rows.

    A regulariser that makes the features of each class compact (Wen, Zhang, Li & Qiao, "A
    Discriminative Feature Learning Approach for Deep Face Recognition", ECCV 2016). Alone it
    collapses every feature onto its centre (and all centres together); use it beside a softmax
    head, e.g. ``Combined([ArcFaceLoss(...), CenterLoss(...)])``.

    The centres are **parameters** (``centers``, shape ``(num_classes, in_features)``), learned by
    the optimizer with the rest of the model: with ``reduction="mean"`` the gradient on
    :math:`c_j` is :math:`\frac{\lambda}{N}\sum_{i: y_i = j}(c_j - x_i)`, the paper's update
    :math:`\Delta c_j` up to its per-class count normalisation. For the paper's separate centre
    learning rate :math:`\alpha`, put this module's parameters in their own optimizer parameter
    group. Parameters (not EMA buffers) keep checkpoints, DDP and ``Combined`` simple.

    Args:
        num_classes: number of training classes.
        in_features: embedding dimension.
        lamda: weight :math:`\lambda \ge 0` (the paper's name). Default 0.003 (the paper's value
            for face recognition).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> loss_fn = CenterLoss(num_classes=3, in_features=2, lamda=1.0)
        >>> with torch.no_grad():
        ...     _ = loss_fn.centers.zero_()
        >>> loss_fn(torch.tensor([[3.0, 4.0], [0.0, 2.0]]), torch.tensor([0, 2])).item()
        7.25
    """

    def __init__(
        self,
        num_classes: int,
        in_features: int,
        lamda: float = 0.003,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.in_features = check_positive_int("in_features", in_features)
        self.lamda = check_nonnegative("lamda", lamda)
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.centers = nn.Parameter(torch.empty(num_classes, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the centres from a standard normal (the scale of BN-neck embeddings)."""
        nn.init.normal_(self.centers)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Return :math:`\\frac{\\lambda}{2}\\lVert x_i - c_{y_i}\\rVert^2`, reduced over rows."""
        check_embeddings(embeddings, self.in_features)
        labels = check_labels(labels, embeddings.shape[0])
        check_label_range(labels, None, self.num_classes, None, name="labels")
        distance = squared_distance_to_centre(
            embeddings.to(self.centers.dtype), self.centers, labels
        )
        return reduce_loss(0.5 * self.lamda * distance, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, in_features={self.in_features}, "
            f"lamda={self.lamda:g}, reduction={self.reduction!r}"
        )
