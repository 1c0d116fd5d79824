"""Git loss: center loss plus a push away from the other classes' centres (Calefati et al., 2018)."""

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
from marginkit.losses.center import squared_distance_to_centre
from marginkit.ops import REDUCTIONS


class GitLoss(nn.Module):
    r"""Git loss: pull each feature to its class centre, push it away from the other centres.

    .. math::
        \ell_i = \frac{\lambda_c}{2}\lVert x_i - c_{y_i}\rVert_2^2
        + \frac{\lambda_g}{C - 1}\sum_{j \ne y_i} \frac{1}{1 + \lVert x_i - c_j\rVert_2^2}

    Calefati, Janjua, Nawaz & Gallo, "Git Loss for Deep Face Recognition", BMVC 2018: the center
    loss (:class:`~marginkit.losses.CenterLoss`) plus a bounded "push" term that is largest for
    a feature sitting on another class's centre. The push is averaged over the :math:`C - 1`
    other centres, so :math:`\lambda_g` does not depend on the number of classes (the authors'
    code averages over the centres of the other samples of the batch instead). Used beside a
    softmax head (``Combined([SoftmaxLoss(...), GitLoss(...)])``).

    The centres are parameters (see :class:`~marginkit.losses.CenterLoss`). The push term forms
    the ``(N, num_classes)`` matrix of squared distances (:math:`\lVert x\rVert^2 +
    \lVert c\rVert^2 - 2x\cdot c`, clamped at 0): one N×C buffer and its gradient.

    Args:
        num_classes: number of training classes, ``>= 2``.
        in_features: embedding dimension.
        lamda_c: weight of the centre (pull) term, ``>= 0``. Default 0.01.
        lamda_g: weight of the push term, ``>= 0``. Default 0.1 (the authors' MNIST run uses
            0.01 and 0.1).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Attributes:
        centers: ``(num_classes, in_features)`` learnable class centres.
        last_logs: ``{"center": mean pull term, "push": mean push term}`` (weighted) after each call.

    Example:
        >>> import torch
        >>> loss_fn = GitLoss(num_classes=2, in_features=2, lamda_c=1.0, lamda_g=1.0)
        >>> with torch.no_grad():
        ...     _ = loss_fn.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        >>> loss_fn(torch.tensor([[0.0, 0.0]]), torch.tensor([0])).item()  # 0 + 1 / (1 + 1)
        0.5
    """

    def __init__(
        self,
        num_classes: int,
        in_features: int,
        lamda_c: float = 0.01,
        lamda_g: float = 0.1,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.num_classes = check_positive_int("num_classes", num_classes)
        if num_classes < 2:
            raise ValueError(
                f"`num_classes` must be >= 2 (the push term needs other centres), got {num_classes}"
            )
        self.in_features = check_positive_int("in_features", in_features)
        self.lamda_c = check_nonnegative("lamda_c", lamda_c)
        self.lamda_g = check_nonnegative("lamda_g", lamda_g)
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.centers = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.centers)
        self.last_logs: dict[str, float] = {}

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Return the pull + push loss of ``embeddings`` (N, in_features), reduced over rows."""
        check_embeddings(embeddings, self.in_features)
        labels = check_labels(labels, embeddings.shape[0])
        check_label_range(labels, None, self.num_classes, None, name="labels")
        x = embeddings.to(self.centers.dtype)
        pull = 0.5 * self.lamda_c * squared_distance_to_centre(x, self.centers, labels)
        squared = (
            x.pow(2).sum(1, keepdim=True)
            + self.centers.pow(2).sum(1)[None, :]
            - 2.0 * (x @ self.centers.T)
        ).clamp(min=0.0)
        closeness = torch.reciprocal(1.0 + squared)
        rows = torch.arange(x.shape[0], device=x.device)
        closeness = closeness.index_put((rows, labels), torch.zeros((), dtype=closeness.dtype))
        push = self.lamda_g / (self.num_classes - 1) * closeness.sum(dim=1)
        self.last_logs = {
            "center": float(pull.detach().mean()),
            "push": float(push.detach().mean()),
        }
        return reduce_loss(pull + push, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, in_features={self.in_features}, "
            f"lamda_c={self.lamda_c:g}, lamda_g={self.lamda_g:g}, reduction={self.reduction!r}"
        )
