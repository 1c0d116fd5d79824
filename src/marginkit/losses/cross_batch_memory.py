r"""Cross-batch memory (Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR 2020),
pytorch-metric-learning's ``CrossBatchMemory``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from marginkit._validation import check_positive_int
from marginkit.distributed import all_gather_without_grad, gather_row_counts, world_and_rank
from marginkit.losses._pair_batch import PairLoss, pair_batch
from marginkit.miners._inputs import check_features_and_labels


class CrossBatchMemory(nn.Module):
    r"""A pair loss of each batch against a FIFO queue of the last ``memory_size`` embeddings.

    Each call writes the batch's embeddings (detached) and labels into the queue, then computes
    ``loss(embeddings, labels, ref_embeddings=queue, ref_labels=queue_labels)``: the
    references are the queue's filled slots (all ``memory_size`` once it has wrapped around),
    and a row is never its own pair (PML's ``remove_self_comparisons``: the slot it was just
    written to is excluded). The loss's reductions over the queue go through the fused op, so a
    bank of 65,536 costs the bank (``memory_size × embedding_size`` floats) and
    O(B · block) work space, never B × R.

    * ``enqueue_mask`` (a (B,) bool): only those rows are written to the queue, and the loss is
      computed for the other rows only (against the queue, no self-exclusion needed): PML's
      MoCo-style use, keys enqueued and queries compared.
    * ``miner``: called as ``miner(embeddings, labels, queue, queue_labels)`` (the pair miners
      of :mod:`marginkit.miners`); its pairs, minus the self comparisons, go to the loss as its
      ``indices_tuple``.
    * Under DDP (an initialised process group), the batches of every rank are all-gathered
      (without gradient) and enqueued in rank order, so every rank holds the same queue; each
      rank's loss compares its own rows with it.
    * The queue is in buffers (``embedding_memory``, ``label_memory``, ``queue_idx``,
      ``has_been_filled``): checkpoints hold it, and a resumed run continues the same queue.
      :meth:`reset_queue` empties it.

    Args:
        loss: a pair loss of this family that takes ``ref_embeddings``
            (:class:`~marginkit.losses.MultiSimilarityLoss`, ``CircleLoss``, ``SupConLoss``,
            ``NTXentLoss``, ``GeneralizedLiftedStructureLoss``).
        embedding_size: :math:`D`.
        memory_size: slots of the queue (at least the number of rows enqueued per call).
        miner: optional pair miner (see above).

    Example:
        >>> from marginkit.losses import MultiSimilarityLoss
        >>> memory = CrossBatchMemory(MultiSimilarityLoss(), embedding_size=2, memory_size=4)
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> loss = memory(x, torch.tensor([0, 0, 1]))
        >>> int(memory.queue_idx), bool(memory.has_been_filled)
        (3, False)
        >>> _ = memory(x, torch.tensor([0, 0, 1]))  # wraps around: slots 3, 0, 1
        >>> int(memory.queue_idx), bool(memory.has_been_filled), memory.label_memory.tolist()
        (2, True, [0, 1, 1, 0])
    """

    requires_balanced_batches = True
    min_instances_per_class = 2

    def __init__(
        self, loss: nn.Module, embedding_size: int, memory_size: int = 1024, miner=None
    ) -> None:
        super().__init__()
        if not isinstance(loss, PairLoss) or not loss.supports_references:
            raise TypeError(
                "`loss` must be a similarity pair loss of marginkit.losses (MultiSimilarityLoss, "
                f"CircleLoss, SupConLoss, NTXentLoss, ...), got {type(loss).__name__}"
            )
        if miner is not None and not callable(miner):
            raise TypeError(f"`miner` must be callable or None, got {type(miner).__name__}")
        self.loss = loss
        self.miner = miner
        self.embedding_size = check_positive_int("embedding_size", embedding_size)
        self.memory_size = check_positive_int("memory_size", memory_size)
        self.register_buffer("embedding_memory", torch.zeros(memory_size, embedding_size))
        self.register_buffer("label_memory", torch.zeros(memory_size, dtype=torch.long))
        self.register_buffer("queue_idx", torch.zeros((), dtype=torch.long))
        self.register_buffer("has_been_filled", torch.zeros((), dtype=torch.bool))

    @property
    def last_logs(self) -> dict[str, float]:
        """The wrapped loss's ``last_logs`` and the number of references in the queue."""
        return {**self.loss.last_logs, "memory_filled": float(self._filled())}

    def reset_queue(self) -> None:
        """Empty the queue (its slots are overwritten from slot 0 on)."""
        self.embedding_memory.zero_()
        self.label_memory.zero_()
        self.queue_idx.zero_()
        self.has_been_filled.fill_(False)

    def _filled(self) -> int:
        return self.memory_size if bool(self.has_been_filled) else int(self.queue_idx)

    def _enqueue(self, embeddings: Tensor, labels: Tensor) -> int:
        """Write the rows into the queue; return the slot of the first one."""
        start = int(self.queue_idx)
        count = len(labels)
        slots = (torch.arange(count, device=labels.device) + start) % self.memory_size
        self.embedding_memory[slots] = embeddings.detach().to(self.embedding_memory.dtype)
        self.label_memory[slots] = labels
        if start + count >= self.memory_size:
            self.has_been_filled.fill_(True)
        self.queue_idx.fill_((start + count) % self.memory_size)
        return start

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        indices_tuple: tuple[Tensor, ...] | None = None,
        enqueue_mask: Tensor | None = None,
    ) -> Tensor:
        """Enqueue the batch (or its ``enqueue_mask`` rows), return the loss against the queue."""
        labels = check_features_and_labels(embeddings, labels)
        if indices_tuple is not None:
            raise ValueError(
                "`indices_tuple`: CrossBatchMemory mines its own pairs against the queue (pass "
                "`miner=`); an external indices_tuple is not supported"
            )
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"`embeddings` must have shape (B, {self.embedding_size}), got "
                f"{tuple(embeddings.shape)}"
            )
        if enqueue_mask is not None:
            if (
                not isinstance(enqueue_mask, Tensor)
                or enqueue_mask.dtype != torch.bool
                or enqueue_mask.shape != labels.shape
            ):
                raise ValueError(
                    f"`enqueue_mask` must be a ({len(labels)},) bool tensor, got "
                    f"{getattr(enqueue_mask, 'dtype', type(enqueue_mask).__name__)} "
                    f"{tuple(getattr(enqueue_mask, 'shape', ()))}"
                )
            queued, queued_labels = embeddings[enqueue_mask], labels[enqueue_mask]
            embeddings, labels = embeddings[~enqueue_mask], labels[~enqueue_mask]
        else:
            queued, queued_labels = embeddings, labels
        sizes = gather_row_counts(len(queued_labels), device=labels.device)
        if sum(sizes) > self.memory_size:
            raise ValueError(
                f"`memory_size` ({self.memory_size}) must be at least the rows enqueued per call "
                f"({sum(sizes)} over {len(sizes)} rank(s))"
            )
        _, rank = world_and_rank()
        start = self._enqueue(
            all_gather_without_grad(queued.detach(), sizes=sizes),
            all_gather_without_grad(queued_labels, sizes=sizes),
        )
        filled = self._filled()
        memory = self.embedding_memory[:filled].to(embeddings.dtype)
        memory_labels = self.label_memory[:filled]
        own_offset = None if enqueue_mask is not None else start + sum(sizes[:rank])
        if self.miner is None:
            batch = pair_batch(
                embeddings,
                labels,
                None,
                memory,
                memory_labels,
                self.loss.distance,
                count_repeats=self.loss.count_repeats,
                self_offset=own_offset,
            )
            return self.loss.loss_of(batch)
        with torch.no_grad():
            mined = self.miner(embeddings.detach(), labels, memory, memory_labels)
        if own_offset is not None:
            mined = _remove_self_comparisons(mined, own_offset, filled)
        return self.loss(
            embeddings, labels, indices_tuple=mined, ref_embeddings=memory, ref_labels=memory_labels
        )

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, memory_size={self.memory_size}"


def _remove_self_comparisons(mined: tuple[Tensor, ...], offset: int, filled: int) -> tuple:
    """Drop the pairs (and triplets) whose reference is the anchor's own queue slot."""
    if len(mined) == 4:
        a1, p, a2, n = mined
        keep = p != (a1 + offset) % filled
        return a1[keep], p[keep], a2, n
    anchors, positives, negatives = mined
    keep = positives != (anchors + offset) % filled
    return anchors[keep], positives[keep], negatives[keep]
