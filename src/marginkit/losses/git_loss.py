"""Git loss: center loss plus a push away from the other classes' centres (Calefati et al., 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from marginkit._validation import check_nonnegative
from marginkit.losses._head import ClassWeightHead, detached
from marginkit.losses.center import squared_distance_to_centre
from marginkit.ops._dtypes import accumulation_dtype


class GitLoss(ClassWeightHead):
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
    the ``(N, num_classes)`` matrix of distances from the differences :math:`x_i - c_j` (exact
    for large features near a centre, without an N×C×D temporary): one N×C buffer and its
    gradient.

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

    weight_name = "centers"
    min_classes_reason = "the push term needs other centres"

    def __init__(
        self,
        num_classes: int,
        in_features: int,
        lamda_c: float = 0.01,
        lamda_g: float = 0.1,
        reduction: str = "mean",
    ) -> None:
        self.lamda_c = check_nonnegative("lamda_c", lamda_c)
        self.lamda_g = check_nonnegative("lamda_g", lamda_g)
        super().__init__(in_features, num_classes, reduction)

    def reset_parameters(self) -> None:
        """Draw the centres from a standard normal (as :class:`~marginkit.losses.CenterLoss`)."""
        nn.init.normal_(self.centers)

    def per_row_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        x = embeddings
        pull = 0.5 * self.lamda_c * squared_distance_to_centre(x, self.centers, labels)
        # From the differences (as CenterLoss), not ‖x‖² + ‖c‖² − 2x·c, which cancels for large
        # features close to a centre (8% off in float32 at |x| ≈ 3e3).
        # (in float32 at least: cdist has no half-precision CPU kernel).
        acc = accumulation_dtype(x.dtype)
        distance = torch.cdist(
            x[None].to(acc), self.centers[None].to(acc), compute_mode="donot_use_mm_for_euclid_dist"
        )[0]
        squared = distance.pow(2).to(x.dtype)
        closeness = torch.reciprocal(1.0 + squared)
        rows = torch.arange(x.shape[0], device=x.device)
        closeness = closeness.index_put((rows, labels), torch.zeros((), dtype=closeness.dtype))
        push = self.lamda_g / (self.num_classes - 1) * closeness.sum(dim=1)
        self.last_logs = {"center": detached(pull.mean()), "push": detached(push.mean())}
        return pull + push

    def repr_fields(self) -> list[str]:
        return [f"lamda_c={self.lamda_c:g}", f"lamda_g={self.lamda_g:g}"]
