r"""The base of every angular-margin softmax head: one N×C step, one "modify the target" hook.

A head computes, for unit embeddings :math:`\hat x_i` and unit class weights :math:`\hat W_j`,

1. the N×C part, margin-agnostic (:meth:`AngularMarginLoss.non_target_logsumexp`): the cosines
   :math:`\cos\theta_{ij} = \hat W_j\cdot\hat x_i` reduced by
   :func:`marginkit.ops.target_logsumexp` to the row log-sum-exp of the scaled non-target
   logits (and, for label smoothing, their row sum);
2. the target angle exactly from the vectors (:func:`marginkit.ops.target_angle`, exact
   gradient down to :math:`\theta = 0`);
3. the margin, on N-vectors (:meth:`AngularMarginLoss.target_logit`, the one hook a head
   overrides): :math:`\phi_i = \phi(\theta_{i,y_i})`;
4. :func:`marginkit.ops.margin_softmax_loss`: :math:`\operatorname{softplus}(R_i - s\phi_i)`,
   with optional label smoothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from marginkit._validation import (
    check_embeddings,
    check_finite_number,
    check_margin,
    check_memory_efficient,
    check_scale,
)
from marginkit.losses._head import ClassWeightHead
from marginkit.ops import (
    TargetLogSumExp,
    linear_target_logsumexp,
    margin_softmax_loss,
    target_angle,
    target_logsumexp,
)
from marginkit.ops._dtypes import accumulation_dtype

# ``memory_efficient="auto"`` switches to the fused normalised-linear op from this many classes
# on: measured by benchmarks/linear_margin.py --crossover (N=512, D=256, CPU, against the
# cosines + fused target_logsumexp): fused / cosine-path time 1.11 at C=5k, 0.91 at 10k, 0.71 at
# 20k, 0.64 at 50k; the fused path holds a third of the memory or less from 5k on.
MEMORY_EFFICIENT_MIN_CLASSES = 8192


def resolve_memory_efficient(setting: bool | str, num_classes: int) -> bool:
    """Whether ``memory_efficient=setting`` means the fused op for ``num_classes`` classes.

    Example:
        >>> resolve_memory_efficient("auto", 100), resolve_memory_efficient("auto", 10**6)
        (False, True)
    """
    if setting == "auto":
        return num_classes >= MEMORY_EFFICIENT_MIN_CLASSES
    return bool(setting)


def fixed_adacos_scale(num_classes: int) -> float:
    r"""AdaCos's fixed scale :math:`\tilde s_f = \sqrt{2}\,\log(C - 1)` (``s="auto"``).

    Zhang, Zhao, Wang, Li & Yan, "AdaCos: Adaptively Scaling Cosine Logits for Effectively
    Learning Deep Face Representations", CVPR 2019 (eq. 13): the scale at which the target
    probability changes fastest around :math:`\theta = \pi/4` when the non-target cosines sit
    near 0. For :math:`C = 2` it is 0: ``ValueError``.

    Example:
        >>> round(fixed_adacos_scale(1000), 4), round(fixed_adacos_scale(10**6), 2)
        (9.7676, 19.54)
    """
    if num_classes < 3:
        raise ValueError(
            f"`s='auto'` needs `num_classes` >= 3 (sqrt(2)·log(C - 1) is 0 for two classes), "
            f"got {num_classes}"
        )
    return math.sqrt(2.0) * math.log(num_classes - 1)


def resolve_scale(s: object, num_classes: int, name: str = "s") -> float:
    """The logit scale for ``s``: a finite number ``> 0``, or ``"auto"`` (:func:`fixed_adacos_scale`).

    Example:
        >>> resolve_scale(30, 10), round(resolve_scale("auto", 101), 4)
        (30.0, 6.5127)
    """
    if isinstance(s, str):
        if s != "auto":
            raise TypeError(f"`{name}` must be a real number or 'auto', got str {s!r}")
        return fixed_adacos_scale(num_classes)
    return check_finite_number(name, s, positive=True)


__all__ = [
    "MEMORY_EFFICIENT_MIN_CLASSES",
    "AngularMarginLoss",
    "check_margin",
    "check_memory_efficient",
    "check_scale",
    "fixed_adacos_scale",
    "hard_negative_softmax_loss",
    "resolve_memory_efficient",
    "resolve_scale",
]


def category_index(label2category: Mapping, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(column_category (C,), category_size (n_categories,))`` from ``{label: category}``.

    Every label in ``[0, num_classes)`` must be a key; categories may be any hashables.
    """
    if not isinstance(label2category, Mapping):
        raise TypeError(
            "`label2category` must be a mapping label -> category, got "
            f"{type(label2category).__name__}"
        )
    labels = set(label2category)
    missing = [label for label in range(num_classes) if label not in labels]
    unexpected = [k for k in labels if not (isinstance(k, int) and 0 <= k < num_classes)]
    if missing or unexpected:
        raise ValueError(
            f"`label2category` must map every label in [0, {num_classes}) to a category, "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    ids: dict[Hashable, int] = {}
    column_category = torch.tensor(
        [ids.setdefault(label2category[label], len(ids)) for label in range(num_classes)],
        dtype=torch.long,
    )
    return column_category, torch.bincount(column_category, minlength=len(ids))


def hard_negative_softmax_loss(
    cosines: Tensor,
    labels: Tensor,
    target_logit: Tensor,
    threshold: Tensor,
    rewrite: Callable[[Tensor], Tensor],
    s: float,
) -> Tensor:
    r"""The composed path of heads that rewrite hard negatives (CurricularFace, MV-Softmax).

    .. math::
        z_{ij} = \begin{cases} \phi_i & j = y_i \\ g(\cos\theta_{ij}) &
        j \ne y_i,\ \cos\theta_{ij} > \tau_i \\ \cos\theta_{ij} & \text{otherwise}
        \end{cases}, \qquad \ell_i = -\log\operatorname{softmax}(s z_i)_{y_i}

    Plain torch on the materialised ``(N, C)`` logits, so it costs more memory than the fused
    heads: the forward creates about four N×C temporaries (the rewritten values, the mask, the
    logits with the target, the scaled logits) and keeps up to three N×C buffers for the
    backward (measured for CurricularFace: 3.25 N×C float32-sized buffers saved, against 1 for
    :class:`AngularMarginLoss` heads; 1.25 for SV-X-Softmax, whose rewrite is linear).

    Args:
        cosines: ``(N, C)`` cosines (float32/float64).
        labels: ``(N,)`` class ids.
        target_logit: ``(N,)`` unscaled target logit :math:`\phi_i`.
        threshold: ``(N,)`` :math:`\tau_i`: negatives above it are hard.
        rewrite: :math:`g`, applied elementwise to the cosines.
        s: logit scale.

    Returns:
        ``(N,)`` losses.
    """
    logits = torch.where(cosines > threshold[:, None], rewrite(cosines), cosines)
    # The target column is overwritten (so a target above the threshold is never rewritten).
    logits = logits.scatter(1, labels[:, None], target_logit[:, None].to(logits.dtype))
    return F.cross_entropy(s * logits, labels, reduction="none")


class AngularMarginLoss(ClassWeightHead):
    r"""Base of the angular-margin softmax heads (ArcFace, CosFace, SphereFace, AdaFace, ...).

    With :math:`\hat x_i = x_i/\lVert x_i\rVert`, :math:`\hat W_j = W_j/\lVert W_j\rVert`,
    :math:`\theta_{ij} = \angle(\hat x_i, \hat W_j)` and the target logit
    :math:`\phi_i = \phi(\theta_{i y_i})` given by the subclass,

    .. math::
        \ell_i = -\log \frac{e^{s\phi_i}}{e^{s\phi_i} + \sum_{j\ne y_i} e^{s\cos\theta_{ij}}}
        = \operatorname{softplus}\Big(\log\sum_{j \ne y_i} e^{s\cos\theta_{ij}} - s\phi_i\Big).

    With label smoothing :math:`\varepsilon` the target distribution is
    :math:`1-\varepsilon+\varepsilon/K` on the label and :math:`\varepsilon/K` on the other
    :math:`K-1` classes (:math:`K` = ``num_classes``, or the size of the label's category with
    ``label2category``, the other categories getting 0).

    A subclass overrides :meth:`target_logit` (the margin, on N-vectors). The N×C work is the
    single method :meth:`non_target_logsumexp`, so a fused normalised-linear op can replace it
    without touching the margin. No N×C temporary holds the margin: the one N×C buffer of the
    backward is the gradient of the cosines.

    Embeddings of another floating dtype than the head are cast to the head's dtype (under
    autocast the matmul runs in the autocast dtype and the reductions in float32).

    Args:
        in_features: embedding dimension.
        num_classes: number of training classes; ``weight`` is ``(num_classes, in_features)``
            like ``nn.Linear``.
        s: logit scale, ``> 0``, or ``"auto"``: AdaCos's fixed scale
            :math:`\sqrt{2}\log(C - 1)` (:func:`fixed_adacos_scale`; 9.77 for 1,000 classes,
            where insightface's 64 is made for :math:`10^5`–:math:`10^6`).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        smoothing_epsilon: label smoothing :math:`\varepsilon \in [0, 1)`.
        label2category: ``{label: category}`` covering every label; smoothing then stays inside
            the label's category.
        memory_efficient: ``True``: the N×C step runs on the fused normalised-linear op
            (:func:`marginkit.ops.linear_target_logsumexp`: blockwise from embeddings and
            weights, the ``(N, C)`` cosines never exist, peak extra memory O(N·block + C·D));
            ``False``: cosines + :func:`marginkit.ops.target_logsumexp` (one N×C gradient);
            ``"auto"``: fused from ``MEMORY_EFFICIENT_MIN_CLASSES`` (8192) classes on. Same
            loss and gradients either way. Heads whose cosines are not plain normalised
            products (sub-centres, hard-negative rewrites) always use the cosines.

    Example:
        >>> import torch
        >>> from marginkit.losses import NormFaceLoss
        >>> head = NormFaceLoss(in_features=4, num_classes=3, s=10.0)
        >>> head(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])).shape
        torch.Size([])
        >>> head.logits(torch.randn(5, 4)).shape
        torch.Size([5, 3])
    """

    #: Whether the N×C step may run on the fused normalised-linear op (``memory_efficient``).
    supports_memory_efficient: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        s: float | str = 64.0,
        reduction: str = "mean",
        *,
        smoothing_epsilon: float = 0.0,
        label2category: Mapping | None = None,
        memory_efficient: bool | str = "auto",
    ) -> None:
        self.memory_efficient = check_memory_efficient(memory_efficient)
        self.smoothing_epsilon = check_margin("smoothing_epsilon", smoothing_epsilon, upper=1.0)
        super().__init__(in_features, num_classes, reduction)
        self.s = resolve_scale(s, self.num_classes)
        if label2category is None:
            self.label2category = None
            self.register_buffer("column_category", None)
            self.register_buffer("category_size", None)
        else:
            column_category, category_size = category_index(label2category, num_classes)
            self.label2category = dict(label2category)
            self.register_buffer("column_category", column_category, persistent=False)
            self.register_buffer("category_size", category_size, persistent=False)

    # ---- the N×C part -------------------------------------------------------------------
    def cosine(self, embeddings: Tensor) -> Tensor:
        """The ``(N, num_classes)`` cosines between embeddings and class weights."""
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def logits(self, embeddings: Tensor) -> Tensor:
        r"""The scaled cosine logits :math:`s\cos\theta_{ij}` a classifier uses at inference."""
        check_embeddings(embeddings, self.in_features)
        return self.s * self.cosine(embeddings.to(self.weight.dtype))

    def non_target_logsumexp(self, embeddings: Tensor, labels: Tensor) -> TargetLogSumExp:
        r"""The N×C step: :math:`R_i = \log\sum_{j\ne y_i} e^{s\cos\theta_{ij}}` (+ row sum).

        The only place the ``(N, C)`` cosines exist (and with ``memory_efficient`` they do not:
        the fused normalised-linear op computes the same from embeddings and weights). Returns
        :class:`marginkit.ops.TargetLogSumExp` (``row_sum`` only with label smoothing).
        ``labels`` were range-checked by :meth:`validate`, so the op does not read them back
        again.
        """
        smoothing = self.smoothing_epsilon > 0
        options = {
            "row_sum": smoothing,
            "column_category": self.column_category if smoothing else None,
            "row_category": self._row_category(labels) if smoothing else None,
            "check_labels": False,
        }
        if self.uses_memory_efficient():
            return linear_target_logsumexp(embeddings, self.weight, labels, self.s, **options)
        return target_logsumexp(self.cosine(embeddings), labels, self.s, **options)

    def uses_memory_efficient(self) -> bool:
        """Whether :meth:`non_target_logsumexp` runs on the fused normalised-linear op."""
        return self.supports_memory_efficient and resolve_memory_efficient(
            self.memory_efficient, self.num_classes
        )

    def _row_category(self, labels: Tensor) -> Tensor | None:
        return None if self.column_category is None else self.column_category[labels]

    # ---- the target (N-vectors) -----------------------------------------------------------
    def unit_target_weights(self, unit_embeddings: Tensor, labels: Tensor) -> Tensor:
        """The ``(N, D)`` unit weight of each row's label, in the dtype of ``unit_embeddings``."""
        return F.normalize(self.weight[labels].to(unit_embeddings.dtype), dim=1)

    def target_angle(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``(cos, theta)`` of each row's target, exactly from the vectors, in float32/64."""
        acc = accumulation_dtype(self.weight.dtype)
        unit_embeddings = F.normalize(embeddings.to(acc), dim=1)
        return target_angle(unit_embeddings, self.unit_target_weights(unit_embeddings, labels))

    def target_logit(
        self, cos: Tensor, theta: Tensor, embeddings: Tensor, labels: Tensor
    ) -> Tensor:
        r"""The hook: the unscaled target logit :math:`\phi_i` (``(N,)``) of each row.

        Args:
            cos: ``(N,)`` target cosines.
            theta: ``(N,)`` target angles (exact gradient).
            embeddings: ``(N, D)`` the (unnormalised) embeddings, for norm-aware margins.
            labels: ``(N,)`` class ids.

        The base class has no margin: :math:`\phi = \cos\theta` (normalised softmax).
        """
        return cos

    # ---- the loss -----------------------------------------------------------------------
    def per_row_loss(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The ``(N,)`` losses of validated, dtype-matched inputs (before the reduction)."""
        rest = self.non_target_logsumexp(embeddings, labels)
        cos, theta = self.target_angle(embeddings, labels)
        phi = self.target_logit(cos, theta, embeddings, labels).to(rest.lse_rest.dtype)
        if self.smoothing_epsilon == 0:
            return margin_softmax_loss(rest.lse_rest, self.s * phi)
        if self.category_size is None:
            classes: Tensor | float = float(self.num_classes)
        else:
            classes = self.category_size[self._row_category(labels)].to(phi.dtype)
        return margin_softmax_loss(
            rest.lse_rest,
            self.s * phi,
            smoothing=self.smoothing_epsilon,
            row_sum_rest=self.s * rest.row_sum,
            smoothing_classes=classes,
        )

    def repr_fields(self) -> list[str]:
        fields = [f"s={self.s:g}"]
        if self.smoothing_epsilon:
            fields.append(f"smoothing_epsilon={self.smoothing_epsilon:g}")
        return fields
