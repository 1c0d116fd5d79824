"""Center loss: pull each embedding towards a learned centre of its class (Wen et al., ECCV 2016)."""

from __future__ import annotations

from torch import Tensor, nn

from marginkit._validation import check_nonnegative
from marginkit.losses._head import ClassWeightHead


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


class CenterLoss(ClassWeightHead):
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

    weight_name = "centers"
    min_classes = 1
    min_classes_reason = "a class to pull to"

    def __init__(
        self,
        num_classes: int,
        in_features: int,
        lamda: float = 0.003,
        reduction: str = "mean",
    ) -> None:
        self.lamda = check_nonnegative("lamda", lamda)
        super().__init__(in_features, num_classes, reduction)

    def reset_parameters(self) -> None:
        """Draw the centres from a standard normal (the scale of BN-neck embeddings)."""
        nn.init.normal_(self.centers)

    def per_row_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """:math:`\frac{\\lambda}{2}\\lVert x_i - c_{y_i}\rVert^2` of each row."""
        return 0.5 * self.lamda * squared_distance_to_centre(embeddings, self.centers, labels)

    def repr_fields(self) -> list[str]:
        return [f"lamda={self.lamda:g}"]
