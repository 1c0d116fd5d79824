"""Ring loss: a soft feature normalisation towards a learned radius (Zheng et al., CVPR 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from marginkit._validation import (
    check_finite_number,
    check_floating_matrix,
    check_labels,
    check_nonnegative,
    check_option,
)
from marginkit.losses._head import detached
from marginkit.losses._loss_utils import reduce_loss
from marginkit.ops import REDUCTIONS


class RingLoss(nn.Module):
    r"""Ring loss :math:`\ell_i = \frac{\lambda}{2}(\lVert x_i\rVert_2 - R)^2` with a learnable radius R.

    Zheng, Pal & Savvides, "Ring loss: Convex Feature Normalization for Face Recognition",
    CVPR 2018: instead of normalising features hard, penalise the distance of their norm to a
    radius :math:`R` learned with the model. Used beside a softmax head
    (``Combined([SoftmaxLoss(...), RingLoss(...)])``); labels are accepted for the common
    ``forward(embeddings, labels)`` signature and not used.

    Args:
        lamda: weight :math:`\lambda \ge 0` (the paper's name). Default 0.01.
        r_init: initial radius ``> 0``; ``None`` (default) sets :math:`R` to the mean feature norm
            of the first batch the loss sees, so the regulariser starts at the features' scale.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Attributes:
        radius: the learnable :math:`R` (a 0-d parameter).
        last_logs: ``{"radius": R}`` after each call.

    Example:
        >>> import torch
        >>> loss_fn = RingLoss(lamda=1.0, r_init=2.0)
        >>> loss_fn(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.tensor([0, 1])).item()  # ½·mean(3², 1²)
        2.5
    """

    def __init__(
        self, lamda: float = 0.01, r_init: float | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.lamda = check_nonnegative("lamda", lamda)
        if r_init is not None:
            r_init = check_finite_number("r_init", r_init, positive=True)
        check_option("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.r_init = r_init
        self.radius = nn.Parameter(torch.tensor(1.0 if r_init is None else r_init))
        # In the state dict, so a resumed run does not re-initialise R from its first batch.
        self.register_buffer("radius_initialised", torch.tensor(r_init is not None))
        self._initialisation_checked = r_init is not None
        self.last_logs: dict[str, Tensor | float] = {}

    def forward(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """Return :math:`\\frac{\\lambda}{2}(\\lVert x_i\\rVert - R)^2`, reduced over rows."""
        check_floating_matrix("embeddings", embeddings)
        if labels is not None:
            check_labels(labels, embeddings.shape[0])
        norms = torch.linalg.vector_norm(embeddings.to(self.radius.dtype), dim=1)
        if not self._initialisation_checked:
            if not bool(self.radius_initialised):
                with torch.no_grad():
                    self.radius.fill_(norms.mean())
                    self.radius_initialised.fill_(True)
            self._initialisation_checked = True
        loss = 0.5 * self.lamda * (norms - self.radius).pow(2)
        self.last_logs = {"radius": detached(self.radius)}
        return reduce_loss(loss, self.reduction)

    def extra_repr(self) -> str:
        return f"lamda={self.lamda:g}, r_init={self.r_init}, reduction={self.reduction!r}"
