r"""``ShardedMarginHead``: a class-sharded (model-parallel) combined-margin head with Partial FC.

Each rank of the process group owns a contiguous shard of the class weights
(:func:`~marginkit.distributed.shard_range`: uneven when the class count does not divide). Per
step the embeddings and labels of every rank are all-gathered (the gradient flows back to each
rank's own embeddings), each rank computes the cosines of the *global* batch against its shard
and the fused :func:`~marginkit.ops.target_logsumexp` combines the ranks with N-length
all-reduces only, so every rank gets the same loss

.. math::
    \ell_i = \operatorname{softplus}\Big(\log\sum_{j\ne y_i} e^{s\cos\theta_{ij}}
    - s\,\phi(\theta_{i y_i})\Big), \qquad \phi = \cos(m_1\theta + m_2) - m_3

as a single-process head holding the concatenated weights. The target angle is computed
exactly (:func:`~marginkit.ops.target_angle`) on the rank that owns the target class and summed
over ranks as an N-vector.

Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", 2021):
with ``sample_rate < 1`` each training step uses, on every shard, all positive classes of the
global batch plus a uniform sample of negatives, ``ceil(sample_rate · shard size)`` classes in
all (more if the batch has more positives). Only the sampled rows are touched by the optimizer —
their weights, momentum and weight decay — because the head swaps the sampled rows (and the
optimizer's per-row state) into a compact parameter ``weight_active`` before the step and back
after it (insightface's PFC v1 swap, which v2 dropped, leaving momentum and weight decay to act
on unsampled rows). Register the optimizer with :meth:`attach_optimizer` (the Lightning module
does). Per-row state of element-wise optimizers (SGD momentum, Adam's moments) is swapped;
scalar state such as Adam's step count is shared by all rows.

Host reads per step: the label range is checked without one — a row whose label is outside
``[0, C)`` gets a NaN loss, so the training loop's finite check (its one host read) catches it,
and :meth:`check_last_labels` (called by the Lightning module on a non-finite loss) then names
the label and its row. Used on its own, the head returns NaN for such a batch. The multi-rank
step also exchanges the row counts and shard sizes (one small all-gather each), and Partial FC
reads the number of positive classes to size its sample.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from marginkit._validation import (
    REDUCTIONS,
    check_arcface_fallback,
    check_embeddings,
    check_finite_number,
    check_label_range,
    check_labels,
    check_option,
    check_positive_int,
)
from marginkit.distributed import (
    all_gather_with_grad,
    all_gather_without_grad,
    all_reduce_sum_replicated,
    gather_row_counts,
    shard_range,
    shard_sizes,
    world_and_rank,
)
from marginkit.losses.angular_margin import check_memory_efficient, resolve_memory_efficient
from marginkit.ops import (
    MARGIN_FALLBACKS,
    combined_margin_logit,
    linear_target_logsumexp,
    margin_softmax_loss,
    target_angle,
    target_logsumexp,
)


class ShardedMarginHead(nn.Module):
    """Combined-margin softmax head whose class weights are split across the ranks of ``group``.

    Args:
        in_features: embedding dimension.
        num_classes: total number of classes (over all shards).
        m1: multiplicative angular margin.
        m2: additive angular margin (radians).
        m3: additive cosine margin.
        s: logit scale.
        group: the model-parallel process group (``None``: the default group once
            torch.distributed is initialised; a single process otherwise).
        sample_rate: Partial FC's fraction of classes used per step, in ``(0, 1]``.
        margin_fallback: see :func:`marginkit.ops.combined_margin_logit` (default
            ``"monotonic"``: every margin combination stays decreasing in the angle).
        reduction: ``"mean"`` or ``"sum"`` over the global batch, or ``"none"``.
        memory_efficient: compute each shard with the fused normalised-linear op
            (:func:`marginkit.ops.linear_target_logsumexp`: the global batch × shard cosines
            never exist) instead of cosines + :func:`marginkit.ops.target_logsumexp`;
            ``"auto"``: from ``MEMORY_EFFICIENT_MIN_CLASSES`` (8192) classes on.

    Sharding happens in :meth:`shard` (called by the Lightning module's ``configure_model``,
    once the process group exists, or at construction when it already does): every rank
    initialises the full weight from the same seed and keeps its slice.

    Example:
        >>> import torch
        >>> head = ShardedMarginHead(8, 5, s=16.0)
        >>> head(torch.randn(4, 8), torch.tensor([0, 1, 2, 4])).shape
        torch.Size([])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        s: float = 64.0,
        group: dist.ProcessGroup | None = None,
        sample_rate: float = 1.0,
        margin_fallback: str = "monotonic",
        reduction: str = "mean",
        memory_efficient: bool | str = "auto",
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.m1 = check_finite_number("m1", m1, positive=True)
        self.m2 = check_finite_number("m2", m2)
        self.m3 = check_finite_number("m3", m3)
        self.s = check_finite_number("s", s, positive=True)
        self.sample_rate = check_finite_number("sample_rate", sample_rate, positive=True)
        if self.sample_rate > 1:
            raise ValueError(f"`sample_rate` must be in (0, 1], got {sample_rate}")
        check_option("margin_fallback", margin_fallback, MARGIN_FALLBACKS)
        check_arcface_fallback(margin_fallback, self.m1)
        check_option("reduction", reduction, REDUCTIONS)
        self.margin_fallback = margin_fallback
        self.reduction = reduction
        self.memory_efficient = check_memory_efficient(memory_efficient)
        self.group = group
        self.world_size, self.rank = 1, 0
        self.class_start, self.class_end = 0, num_classes
        weight = torch.empty(num_classes, in_features)
        nn.init.normal_(weight, std=0.01)
        self.weight = nn.Parameter(weight, requires_grad=self.sample_rate == 1.0)
        # Partial FC: the compact parameter the optimizer sees, and the sampled rows.
        self.weight_active = nn.Parameter(torch.empty(0, in_features))
        self._active_index: Tensor | None = None
        self._optimizers: list[torch.optim.Optimizer] = []
        self._row_state: dict[str, Tensor] = {}
        self._step_hooks: list = []
        self._last_labels: Tensor | None = None
        if dist.is_available() and dist.is_initialized():
            self.shard()

    # -----------------------------------------------------------------------------------------
    # Sharding and optimizer wiring
    # -----------------------------------------------------------------------------------------

    @property
    def sharded_parameter_names(self) -> tuple[str, ...]:
        """Parameters local to this rank: keep them out of DDP's gradient all-reduce."""
        return ("weight", "weight_active")

    def shard(self) -> None:
        """Keep this rank's contiguous slice of the (identically initialised) full weight."""
        world, rank = world_and_rank(self.group)
        if world == 1 or self.world_size == world:
            return
        if self.weight.shape[0] != self.num_classes:
            raise RuntimeError("the head is already sharded for another world size")
        first, end = shard_range(self.num_classes, world, rank)
        self.world_size, self.rank = world, rank
        self.class_start, self.class_end = first, end
        self.weight = nn.Parameter(
            self.weight.detach()[first:end].clone(), requires_grad=self.sample_rate == 1.0
        )

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Let Partial FC swap the sampled rows' optimizer state (no-op when sampling is off).

        The optimizer must hold :attr:`weight_active` (``model.parameters()`` does).
        """
        if self.sample_rate == 1.0:
            return
        self._optimizers.append(optimizer)
        self._step_hooks.append(optimizer.register_step_post_hook(self._after_step))

    @torch.no_grad()
    def _after_step(self, optimizer: torch.optim.Optimizer, *_args, **_kwargs) -> None:
        """Write the updated sampled rows and their optimizer state back to the full shard."""
        index = self._active_index
        if index is None:
            return
        self.weight[index] = self.weight_active.detach()
        state = optimizer.state.get(self.weight_active, {})
        for key, value in state.items():
            if isinstance(value, Tensor) and value.shape == self.weight_active.shape:
                if key not in self._row_state:
                    self._row_state[key] = torch.zeros_like(self.weight)
                self._row_state[key][index] = value

    @torch.no_grad()
    def _load_active(self, index: Tensor) -> None:
        """Swap rows ``index`` of the shard (and their optimizer state) into ``weight_active``."""
        self._active_index = index
        self.weight_active.data = self.weight.detach()[index].clone()
        self.weight_active.grad = None
        for optimizer in self._optimizers:
            state = optimizer.state.get(self.weight_active)
            if not state:
                continue
            for key, full in self._row_state.items():
                state[key] = full[index].clone()

    def _sample(self, labels: Tensor) -> Tensor:
        """Sorted local rows: every positive of the global batch on this shard + random negatives."""
        local_size = self.weight.shape[0]
        wanted = math.ceil(self.sample_rate * local_size)
        owned = (labels >= self.class_start) & (labels < self.class_end)
        positive = torch.zeros(local_size, dtype=torch.bool, device=labels.device)
        positive[labels[owned] - self.class_start] = True
        # Random scores, positives first: the top `wanted` rows are every positive + negatives.
        score = torch.rand(local_size, device=labels.device)
        score[positive] = 2.0
        count = max(wanted, int(positive.sum()))
        return torch.topk(score, count).indices.sort().values

    # -----------------------------------------------------------------------------------------
    # Checkpoints: one entry per shard
    # -----------------------------------------------------------------------------------------

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        """Save ``weight_shards.<r>`` for every rank (gathered: a collective under DDP).

        Every rank must call ``state_dict()`` together (Lightning's checkpointing does). The
        transient ``weight_active`` is not saved: after each step the shard holds its rows.
        """
        weight = self.weight if keep_vars else self.weight.detach()
        if self.world_size == 1:
            destination[prefix + "weight_shards.0"] = weight
            return
        group = self.group or dist.group.WORLD
        gathered = all_gather_without_grad(weight.detach(), group)
        sizes = shard_sizes(self.num_classes, self.world_size)
        for rank, shard in enumerate(torch.split(gathered, sizes)):
            destination[f"{prefix}weight_shards.{rank}"] = shard.clone()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        """Load this rank's rows from per-shard entries of any world size, or a merged ``weight``."""
        shard_keys = sorted(
            (key for key in state_dict if key.startswith(prefix + "weight_shards.")),
            key=lambda key: int(key.rsplit(".", 1)[1]),
        )
        if shard_keys:
            full = torch.cat([state_dict[key] for key in shard_keys])
        elif prefix + "weight" in state_dict:
            full = state_dict[prefix + "weight"]
        else:
            missing_keys.append(prefix + "weight_shards.0")
            return
        if full.shape != (self.num_classes, self.in_features):
            errors.append(
                f"{prefix}weight: the checkpoint has {tuple(full.shape)} class weights in all, "
                f"this head expects ({self.num_classes}, {self.in_features})"
            )
            return
        with torch.no_grad():
            self.weight.copy_(full[self.class_start : self.class_end])
        for key in state_dict:
            if key.startswith(prefix) and key not in shard_keys and key != prefix + "weight":
                rest = key[len(prefix) :]
                if "." not in rest and rest not in ("weight_active",):
                    unexpected_keys.append(key)

    # -----------------------------------------------------------------------------------------
    # Loss
    # -----------------------------------------------------------------------------------------

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The combined-margin loss of the global batch (identical on every rank)."""
        check_embeddings(embeddings, self.in_features)
        labels = check_labels(labels, embeddings.shape[0])
        embeddings = embeddings.to(self.weight.dtype)
        group = (self.group or dist.group.WORLD) if self.world_size > 1 else None
        # One all-gather of the row counts serves both gathers.
        sizes = gather_row_counts(embeddings.shape[0], group, embeddings.device)
        all_embeddings = all_gather_with_grad(embeddings, group, self.world_size, sizes)
        all_labels = all_gather_without_grad(labels, group, sizes)
        partial = self.training and self.sample_rate < 1.0
        unit = F.normalize(all_embeddings, dim=1)
        # Labels are checked without a host read: a row whose label is outside [0, C) gets a
        # NaN loss, which the training loop's one finite check catches (and then names the
        # label through `check_last_labels`). Such a row is owned by no shard.
        bad_label = (all_labels < 0) | (all_labels >= self.num_classes)
        self._last_labels = all_labels.detach()
        owned = (all_labels >= self.class_start) & (all_labels < self.class_end)
        local_label = (all_labels - self.class_start).clamp(0, self.weight.shape[0] - 1)
        if partial:
            index = self._sample(all_labels)
            self._load_active(index)
            weight = self.weight_active
            slot = torch.full(
                (self.weight.shape[0],), -1, dtype=torch.long, device=local_label.device
            )
            slot[index] = torch.arange(index.numel(), device=index.device)
            column = slot[local_label]
            op_label = self._virtual_labels(owned, column, index.numel(), group)
        else:
            weight = self.weight
            column = local_label
            op_label = all_labels
        if self.uses_memory_efficient():
            stats = linear_target_logsumexp(
                all_embeddings, weight, op_label, self.s, group, check_labels=False
            )
        else:
            cosines = F.linear(unit, F.normalize(weight, dim=1))
            stats = target_logsumexp(cosines, op_label, self.s, group, check_labels=False)
        # Exact target angle on the owning rank, summed over ranks as an N-vector.
        cos_t, theta = target_angle(unit, F.normalize(weight[column.clamp(min=0)], dim=1))
        phi = combined_margin_logit(cos_t, theta, self.m1, self.m2, self.m3, self.margin_fallback)
        phi = all_reduce_sum_replicated(torch.where(owned, phi, torch.zeros_like(phi)), group)
        loss = margin_softmax_loss(stats.lse_rest, self.s * phi.to(stats.lse_rest.dtype))
        loss = torch.where(bad_label, torch.full_like(loss, float("nan")), loss)
        if self.reduction == "none":
            return loss
        return loss.sum() if self.reduction == "sum" else loss.mean()

    def uses_memory_efficient(self) -> bool:
        """Whether each shard runs on the fused normalised-linear op."""
        return resolve_memory_efficient(self.memory_efficient, self.num_classes)

    def check_last_labels(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range label of the last global batch.

        The forward flags such labels with a NaN loss instead of reading the device; the
        Lightning module calls this when it meets a non-finite loss (one host read, on
        failure only).
        """
        labels = getattr(self, "_last_labels", None)
        if labels is not None:
            check_label_range(labels, None, self.num_classes, None, name="labels")

    def _virtual_labels(
        self, owned: Tensor, column: Tensor, sampled: int, group: dist.ProcessGroup | None
    ) -> Tensor:
        """Global labels in the numbering of the sampled columns (shard after shard)."""
        if group is None:
            return column
        offset = sum(gather_row_counts(sampled, group, column.device)[: self.rank])
        label = torch.where(owned, column + offset, torch.zeros_like(column))
        dist.all_reduce(label, op=dist.ReduceOp.SUM, group=group)
        return label

    @torch.no_grad()
    def logits(self, embeddings: Tensor) -> Tensor:
        """Scaled cosines ``s·cos θ`` against this rank's shard of the classes."""
        return self.s * F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, "
            f"shard=[{self.class_start}, {self.class_end}), m1={self.m1:g}, m2={self.m2:g}, "
            f"m3={self.m3:g}, s={self.s:g}, sample_rate={self.sample_rate:g}"
        )
