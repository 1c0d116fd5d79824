"""P×K batch sampling for pair, triplet and ranking losses (every batch: P classes × K items).

:class:`BalancedBatchSampler` is a batch sampler (``DataLoader(dataset, batch_sampler=...)``)
that yields lists of dataset indices. An epoch is built in three steps, all from one random
generator seeded with ``(seed, epoch)`` (so every rank of a DDP job builds the same epoch):

1. **Chunks.** Each class's indices are shuffled and cut into chunks of K. The last, short chunk
   is completed with other items of the same class (no item twice in a chunk when the class has
   at least K items); a class with fewer than K items gives one chunk that repeats its items
   (cycling through them), so small classes are repeated, not dropped. Every item is in a chunk.
2. **Batches.** A batch takes one chunk from each of P *distinct* classes. With ``c_i`` chunks
   in class ``i``, the largest number of such batches is the largest ``n`` with
   ``Σ_i min(c_i, n) ≥ n·P``. Classes are put in a random order, their (at most ``n``) chunks
   laid end to end, and the chunk at position ``j`` goes to batch ``j mod n``: a class's chunks
   are consecutive and at most ``n``, so they land in different batches, and every batch gets
   exactly P chunks. Batches are then shuffled.
3. **Leftovers.** The ``r < P`` chunks beyond ``n·P`` (taken from ``r`` distinct random classes,
   their padded chunk first) are dropped with ``drop_last=True`` or form one last, smaller batch
   of ``r`` classes with ``drop_last=False``. A class with more than ``n`` chunks (only when one
   class outweighs all the others together) cannot fit in ``n`` batches without appearing twice
   in one: its extra chunks are dropped in both modes.

So every sample is seen once per epoch, except the few in dropped chunks, plus the repeats that
complete short chunks.

Distributed: the epoch's batch list is split round robin, batch ``b`` to rank ``b mod W``; every
rank gets the same number of batches (``drop_last=True``: the last ``n mod W`` batches are
dropped; ``drop_last=False``: ranks short of a batch repeat the epoch's first batches, as
:class:`torch.utils.data.DistributedSampler` pads). Ranks never share a chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from marginkit._validation import check_positive_int


def _as_label_array(labels: object) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"`labels` must hold integer class ids, got {labels.dtype}")
        array = labels.detach().cpu().numpy()
    else:
        try:
            array = np.asarray(labels)
        except Exception as error:  # pragma: no cover - exotic containers
            raise TypeError(
                f"`labels` must be a sequence of ints, got {type(labels).__name__}"
            ) from error
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"`labels` must hold integer class ids, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(
            f"`labels` must be 1-D (one label per dataset item), got shape {array.shape}"
        )
    return array.astype(np.int64, copy=False)


def _largest_batch_count(chunk_counts: np.ndarray, n_labels: int) -> int:
    """Largest ``n`` with ``Σ min(c_i, n) ≥ n·P`` (the left side is concave, so bisect)."""
    low, high = 0, int(chunk_counts.sum()) // n_labels
    while low < high:
        mid = (low + high + 1) // 2
        if int(np.minimum(chunk_counts, mid).sum()) >= mid * n_labels:
            low = mid
        else:
            high = mid - 1
    return low


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``n_labels`` classes × ``n_instances`` items each (P×K), reproducible per epoch.

    Every epoch covers each item once (see the module docstring for the exact rule: short
    chunks are completed with repeats, classes with fewer than K items are repeated, at most
    ``P − 1`` chunks are left over), batches hold P distinct classes, and the order is a function
    of ``(seed, epoch)`` only. Call :meth:`set_epoch` at the start of each epoch (Lightning does
    it for the ``batch_sampler`` of a training loader); without it every epoch repeats epoch 0.

    Args:
        labels: the class id of every dataset item (sequence, NumPy array or tensor of ints).
        n_labels: P, the number of classes per batch; at most the number of classes.
        n_instances: K, the number of items per class in a batch; at most the size of the
            largest class.
        drop_last: drop the last batch of fewer than P classes (and, under DDP, the batches that
            do not divide evenly among ranks); otherwise yield it (ranks are padded).
        seed: seed of the shuffling; the same on every rank.
        num_replicas: number of DDP ranks; default: the world size of an initialised
            ``torch.distributed`` process group, else 1.
        rank: this process's rank in ``[0, num_replicas)``; default: read like ``num_replicas``.

    Raises:
        ValueError: ``n_labels`` larger than the number of classes, ``n_instances`` larger than
            every class, a bad ``rank``, labels that are not 1-D integers.

    Example:
        >>> sampler = BalancedBatchSampler([0, 0, 1, 1, 2, 2, 2, 2], n_labels=2, n_instances=2)
        >>> len(sampler), [len(batch) for batch in sampler]
        (2, [4, 4])
        >>> sorted(i for batch in sampler for i in batch)
        [0, 1, 2, 3, 4, 5, 6, 7]
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        n_labels: int,
        n_instances: int,
        drop_last: bool = True,
        seed: int = 0,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        label_array = _as_label_array(labels)
        self.n_labels = check_positive_int("n_labels", n_labels)
        self.n_instances = check_positive_int("n_instances", n_instances)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`seed` must be an int, got {type(seed).__name__}")
        if not isinstance(drop_last, bool):
            raise TypeError(f"`drop_last` must be a bool, got {type(drop_last).__name__}")
        classes, inverse, sizes = np.unique(label_array, return_inverse=True, return_counts=True)
        if len(classes) < self.n_labels:
            raise ValueError(
                f"`n_labels` must be at most the number of classes in `labels` ({len(classes)}), "
                f"got {n_labels}"
            )
        if sizes.max() < self.n_instances:
            raise ValueError(
                f"`n_instances` must be at most the size of the largest class ({int(sizes.max())} "
                f"items), got {n_instances}"
            )
        num_replicas, rank = self._distributed_layout(num_replicas, rank)
        order = np.argsort(inverse, kind="stable")
        self._class_indices = np.split(order, np.cumsum(sizes)[:-1])
        self._chunk_counts = -(-sizes // self.n_instances)  # ceil
        self._n_full = _largest_batch_count(self._chunk_counts, self.n_labels)
        n_fitting = int(np.minimum(self._chunk_counts, self._n_full).sum())
        self._n_leftover = n_fitting - self._n_full * self.n_labels
        self.drop_last = drop_last
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    @staticmethod
    def _distributed_layout(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if initialised else 1
        if rank is None:
            rank = torch.distributed.get_rank() if initialised else 0
        check_positive_int("num_replicas", num_replicas)
        if isinstance(rank, bool) or not isinstance(rank, int):
            raise TypeError(f"`rank` must be an int, got {type(rank).__name__}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"`rank` must be in [0, {num_replicas}), got {rank}")
        return num_replicas, rank

    @property
    def batch_size(self) -> int:
        """P·K, the size of every full batch."""
        return self.n_labels * self.n_instances

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffling of ``epoch`` for the next iteration (same on every rank)."""
        self.epoch = int(epoch)

    def _n_global_batches(self) -> int:
        return self._n_full + int(not self.drop_last and self._n_leftover > 0)

    def __len__(self) -> int:
        n_batches = self._n_global_batches()
        if self.drop_last:
            return n_batches // self.num_replicas
        return -(-n_batches // self.num_replicas)

    def _chunks(self, rng: np.random.Generator, indices: np.ndarray) -> list[np.ndarray]:
        """Shuffle one class and cut it into chunks of K; the short last chunk is completed."""
        k = self.n_instances
        indices = rng.permutation(indices)
        if len(indices) < k:  # repeat a small class, cycling through its items
            return [np.resize(indices, k)]
        n_chunks = -(-len(indices) // k)
        padded = np.empty(n_chunks * k, dtype=indices.dtype)
        padded[: len(indices)] = indices
        missing = n_chunks * k - len(indices)
        if missing:  # complete the last chunk with items of the other chunks
            tail_start = (n_chunks - 1) * k
            padded[len(indices) :] = rng.choice(indices[:tail_start], missing, replace=False)
        return list(padded.reshape(n_chunks, k))

    def global_batches(self) -> list[list[int]]:
        """All batches of the current epoch before they are split among ranks."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n_full = self._n_full
        # Chunks per class, capped at n_full; the padded (last) chunk is the first to go.
        per_class = [self._chunks(rng, idx)[:n_full] for idx in self._class_indices]
        leftover: list[np.ndarray] = []
        if self._n_leftover:
            takers = rng.choice(len(per_class), self._n_leftover, replace=False)
            leftover = [per_class[c].pop() for c in takers]
        laid_out = [chunk for c in rng.permutation(len(per_class)) for chunk in per_class[c]]
        batches = [laid_out[b::n_full] for b in range(n_full)]
        batches = [batches[b] for b in rng.permutation(n_full)]
        if leftover and not self.drop_last:
            batches.append(leftover)
        return [np.concatenate(batch).tolist() for batch in batches]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches()
        n_local = len(self)
        if self.num_replicas > 1 and not self.drop_last:
            n_total = n_local * self.num_replicas
            batches = [batches[b % len(batches)] for b in range(n_total)]
        yield from batches[self.rank :: self.num_replicas][:n_local]
