"""``Combined``: several losses (a head and its regularisers) acting as one head."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from torch import Tensor, nn

from marginkit._validation import check_finite_number
from marginkit.losses.registry import registered_name


class _FromParts:
    """An attribute that :class:`Combined` derives from its parts; read on the class, a default.

    The CLI reads ``requires_balanced_batches`` on the loss *class* before building it; there a
    ``Combined`` cannot know its parts, and a plain ``property`` object would read as true.
    """

    def __init__(self, default: object, combine: Callable[[Combined], object]) -> None:
        self.default = default
        self.combine = combine

    def __get__(self, instance: Combined | None, owner: type | None = None) -> object:
        return self.default if instance is None else self.combine(instance)


def _part_name(part: nn.Module) -> str:
    name = registered_name(type(part))
    if name is None:
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(part).__name__).lower()
    return name


class Combined(nn.Module):
    r"""A weighted sum of losses that acts as one head: :math:`\mathcal L = \sum_k w_k\,\mathcal L_k`.

    Each part is called as ``part(embeddings, labels)``; typical use is a softmax head with a
    feature regulariser, e.g. ArcFace + center loss. It is an ``nn.Module`` holding its parts in
    a ``ModuleList``, so :class:`~marginkit.EmbeddingModule` optimises the parameters of every
    part (class weights, centres, the ring radius) with the backbone's.

    What a head exposes comes from its parts:

    * ``weight``, ``logits(embeddings)``, ``in_features``, ``num_classes``: those of the first
      part that has them (the classifier);
    * ``last_logs``: ``"<part>/loss"`` (the part's unweighted value, its mean when unreduced, a
      detached tensor: no host read per step) for every part, and each part's own
      ``last_logs`` as ``"<part>/<key>"``. ``<part>`` is the
      part's registry name (``arcface``, ``center``, ...), suffixed ``_2``, ``_3`` on repeats;
    * ``requires_balanced_batches`` / ``min_instances_per_class``: set if any part needs them.

    As a Hydra config, the parts are a list of ``_target_`` nodes::

        _target_: marginkit.losses.Combined
        losses:
          - _target_: marginkit.losses.ArcFaceLoss
            in_features: ${backbone.embedding_dim}
            num_classes: 6
          - _target_: marginkit.losses.CenterLoss
            num_classes: 6
            in_features: ${backbone.embedding_dim}
            lamda: 0.003
        weights: [1.0, 1.0]

    Args:
        losses: the parts, ``nn.Module`` s with ``forward(embeddings, labels)``; at least one.
        weights: one finite weight ``>= 0`` per part; ``None`` gives every part weight 1.

    Example:
        >>> import torch
        >>> from marginkit.losses import CenterLoss, RingLoss
        >>> loss_fn = Combined([CenterLoss(3, 4), RingLoss(r_init=1.0)], weights=[1.0, 0.5])
        >>> x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
        >>> total = loss_fn(x, y)
        >>> expected = loss_fn.losses[0](x, y) + 0.5 * loss_fn.losses[1](x, y)
        >>> torch.allclose(total, expected), sorted(loss_fn.last_logs)
        (True, ['center/loss', 'ring/loss', 'ring/radius'])
    """

    def __init__(self, losses: Iterable[nn.Module], weights: Iterable[float] | None = None) -> None:
        super().__init__()
        if isinstance(losses, nn.Module) or isinstance(losses, (str, bytes)):
            raise TypeError(f"`losses` must be a list of nn.Module, got {type(losses).__name__}")
        losses = list(losses)
        if not losses:
            raise ValueError("`losses` must hold at least one loss, got an empty list")
        for index, part in enumerate(losses):
            if not isinstance(part, nn.Module):
                raise TypeError(
                    f"`losses[{index}]` must be an nn.Module, got {type(part).__name__}"
                )
        if weights is None:
            weights = [1.0] * len(losses)
        elif isinstance(weights, (str, bytes)):
            raise TypeError(f"`weights` must be a list of numbers, got {type(weights).__name__}")
        weights = [check_finite_number(f"weights[{i}]", w) for i, w in enumerate(weights)]
        if len(weights) != len(losses):
            raise ValueError(
                f"`weights` must have one entry per loss ({len(losses)}), got {len(weights)}"
            )
        for index, weight in enumerate(weights):
            if weight < 0:
                raise ValueError(f"`weights[{index}]` must be >= 0, got {weight}")
        self.losses = nn.ModuleList(losses)
        self.loss_weights = weights
        names: list[str] = []
        for part in losses:
            base = name = _part_name(part)
            repeat = 1
            while name in names:
                repeat += 1
                name = f"{base}_{repeat}"
            names.append(name)
        self.part_names = names
        self.last_logs: dict[str, Tensor | float] = {}

    def _first_with(self, attribute: str) -> nn.Module:
        for part in self.losses:
            if hasattr(part, attribute):
                return part
        raise AttributeError(f"no part of this Combined loss has `{attribute}`")

    @property
    def weight(self) -> Tensor:
        """The class weights of the first part that has them."""
        return self._first_with("weight").weight

    @property
    def in_features(self) -> int:
        return self._first_with("in_features").in_features

    @property
    def num_classes(self) -> int:
        return self._first_with("num_classes").num_classes

    requires_balanced_batches = _FromParts(
        False, lambda self: any(getattr(p, "requires_balanced_batches", False) for p in self.losses)
    )
    min_instances_per_class = _FromParts(
        1, lambda self: max(int(getattr(p, "min_instances_per_class", 1)) for p in self.losses)
    )

    def logits(self, embeddings: Tensor) -> Tensor:
        """The inference logits of the first part that has ``logits``."""
        return self._first_with("logits").logits(embeddings)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Return :math:`\\sum_k w_k\\,\\mathcal L_k(\\text{embeddings}, \\text{labels})`."""
        total: Tensor | None = None
        logs: dict[str, float] = {}
        for name, weight, part in zip(self.part_names, self.loss_weights, self.losses, strict=True):
            value = part(embeddings, labels)
            if total is not None and value.shape != total.shape:
                raise ValueError(
                    f"the losses must return values of one shape to be summed, but `{name}` "
                    f"returned {tuple(value.shape)} and the ones before {tuple(total.shape)} "
                    "(use the same `reduction` in every part)"
                )
            logs[f"{name}/loss"] = value.detach().float().mean()
            for key, logged in getattr(part, "last_logs", {}).items():
                logs[f"{name}/{key}"] = logged
            total = weight * value if total is None else total + weight * value
        self.last_logs = logs
        return total

    def extra_repr(self) -> str:
        return f"weights={self.loss_weights}"
