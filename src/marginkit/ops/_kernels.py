r"""The interfaces the kernel twins implement, declared once (chunked torch and Triton).

* :class:`CosineKernels`: the two passes over an ``(N, C)`` cosine matrix of
  :func:`~marginkit.ops.target_logsumexp`, implemented by :mod:`marginkit.ops._cpu` and
  :mod:`marginkit.ops._triton`;
* :class:`LinearKernels`: the normalised-linear log-sum-exp and its backward of
  :func:`~marginkit.ops.linear_target_terms`, implemented by :mod:`marginkit.ops._linear_cpu`
  and :mod:`marginkit.ops._linear_triton`.

The modules themselves are the implementations (a module satisfies a ``Protocol`` through its
functions); the docstrings below are the contract, and each twin documents only how it
computes it. The Triton twins add keyword-only launch overrides (tile sizes, splits) for the
tests. Throughout, the accumulation dtype is float64 for float64 inputs and float32 otherwise
(:func:`marginkit.ops._dtypes.accumulation_dtype`), and a target column outside ``[0, C)``
(``-1``, or a class of another rank's shard) excludes nothing.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

__all__ = ["CosineKernels", "LinearKernels"]


class CosineKernels(Protocol):
    """The N×C passes of :func:`~marginkit.ops.target_logsumexp` (forward and backward)."""

    def row_statistics_excluding_target(
        self,
        logits: Tensor,
        target_col: Tensor,
        scale: float,
        row_sum: bool = False,
        column_category: Tensor | None = None,
        row_category: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        r"""Row log-sum-exp of the scaled logits and row sum, leaving out each row's target.

        .. math::
            R_i = \log \sum_{j \ne t_i} \exp(s \cdot x_{ij}), \qquad
            S_i = \sum_{j \ne t_i,\ \kappa(j) = \rho_i} x_{ij}

        A row whose every column is excluded (``C == 1`` and ``t_i == 0``) gets ``R = -inf``
        and ``S = 0``.

        Args:
            logits: ``(N, C)`` float16 / bfloat16 / float32 / float64.
            target_col: ``(N,)`` int64 column to leave out per row.
            scale: the factor ``s`` applied to every logit.
            row_sum: also compute :math:`S` (else ``None`` is returned for it).
            column_category: ``(C,)`` integer :math:`\kappa`, or ``None`` (every column counts).
            row_category: ``(N,)`` integer :math:`\rho` (with ``column_category``).

        Returns:
            ``(R, S)``, ``(N,)`` in the accumulation dtype; ``S`` is ``None`` without
            ``row_sum``.
        """
        ...

    def write_row_softmax(
        self,
        logits: Tensor,
        target_col: Tensor,
        lse: Tensor,
        row_coef: Tensor,
        target_value: Tensor,
        scale: float,
        out: Tensor,
        *,
        row_add: Tensor | None = None,
        column_category: Tensor | None = None,
        row_category: Tensor | None = None,
    ) -> Tensor:
        r"""Write the row-scaled softmax of the scaled logits, with a given value at the target.

        .. math::
            y_{ij} = c_i \exp(s \cdot x_{ij} - \mathrm{lse}_i) + a_i [\kappa(j) = \rho_i]
            \quad (j \ne t_i), \qquad y_{i t_i} = v_i \quad (0 \le t_i < C)

        (the :math:`a_i` term only with ``row_add``; without categories it is added to every
        non-target column). The maths runs in the accumulation dtype; the result is rounded to
        ``out.dtype`` with no clamp, so an overflow of that dtype gives ``inf``, as torch's own
        kernels do (a ``GradScaler`` sees it and backs off).

        Args:
            logits: ``(N, C)`` float16 / bfloat16 / float32 / float64.
            target_col: ``(N,)`` int64 target column per row.
            lse: ``(N,)`` accumulation-dtype row log-sum-exp subtracted in the exponent.
            row_coef: ``(N,)`` accumulation-dtype factor ``c_i`` of each row.
            target_value: ``(N,)`` accumulation-dtype value ``v_i`` written at the target.
            scale: the factor ``s`` applied to every logit.
            out: ``(N, C)`` float tensor receiving ``y`` (usually ``logits.dtype``).
            row_add: ``(N,)`` accumulation-dtype ``a_i`` added off target, or ``None``.
            column_category: ``(C,)`` integer :math:`\kappa`, or ``None`` (every column matches).
            row_category: ``(N,)`` integer :math:`\rho` (with ``column_category``).

        Returns:
            ``out``.
        """
        ...


class LinearKernels(Protocol):
    r"""The normalised-linear log-sum-exp of :func:`~marginkit.ops.linear_target_terms`.

    With raw embeddings :math:`e_i` ``(N, D)``, raw class weights :math:`w_j` ``(C, D)``, their
    inverse norms :math:`a_i = 1/\lVert e_i\rVert`, :math:`b_j = 1/\lVert w_j\rVert`, unit
    vectors :math:`\hat e_i = a_i e_i`, :math:`\hat w_j = b_j w_j` and cosines
    :math:`x_{ij} = \hat e_i\cdot\hat w_j`; the ``(N, C)`` cosines are never stored.
    """

    def row_logsumexp_linear(
        self,
        embeddings: Tensor,
        weight: Tensor,
        inv_norm_embeddings: Tensor,
        inv_norm_weight: Tensor,
        target_col: Tensor,
        scale: float,
        chunk_size: int | None = None,
    ) -> Tensor:
        r"""Row log-sum-exp of the scaled cosines without the target column.

        .. math::
            R_i = \log \sum_{j \ne t_i} \exp\big(s\,a_i b_j\, e_i \cdot w_j\big)

        A row with no column left gets :math:`-\infty`.

        Args:
            embeddings: ``(N, D)`` float16 / bfloat16 / float32 / float64.
            weight: ``(C, D)`` of the same dtype.
            inv_norm_embeddings: ``(N,)`` accumulation-dtype :math:`a_i`.
            inv_norm_weight: ``(C,)`` accumulation-dtype :math:`b_j`.
            target_col: ``(N,)`` int64 column to leave out per row.
            scale: :math:`s`.
            chunk_size: classes per block of the chunked-torch twin (``None``: from its memory
                budget); the Triton twin's tiles are fixed per dtype.

        Returns:
            ``(N,)`` in the accumulation dtype.
        """
        ...

    def row_logsumexp_linear_backward(
        self,
        embeddings: Tensor,
        weight: Tensor,
        inv_norm_embeddings: Tensor,
        inv_norm_weight: Tensor,
        target_col: Tensor,
        lse: Tensor,
        row_coef: Tensor,
        scale: float,
        chunk_size: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""The backward of :math:`\sum_i c_i R_i / s`-style terms.

        With :math:`P_{ij} = c_i \exp(s x_{ij} - R_i)` off target and 0 at the target column
        (for :math:`g = \partial\mathcal L/\partial R`, pass :math:`c = s g`), returns

        .. math::
            G^{\hat e} = P \hat W \ (N \times D), \qquad
            \frac{\partial}{\partial w_j} = \big(G^{\hat w}_j - (G^{\hat w}_j\cdot\hat w_j)
            \hat w_j\big) b_j \ (C \times D), \quad G^{\hat w} = P^\top \hat E:

        the gradient with respect to the *unit* embeddings (the caller adds its own terms
        before the normalisation's backward) and with respect to the *raw* weights (through the
        normalisation, ``F.normalize``'s: weights whose norm is below its floor are only
        divided).

        Args:
            embeddings, weight, inv_norm_embeddings, inv_norm_weight, target_col, scale,
            chunk_size: as in :meth:`row_logsumexp_linear`.
            lse: ``(N,)`` the forward's :math:`R`.
            row_coef: ``(N,)`` :math:`c_i`.

        Returns:
            ``(grad_unit_embeddings (N, D) in the accumulation dtype, grad_weight (C, D) in the
            weight's dtype)``.
        """
        ...
