"""OML's ``HardClusterMiner``: triplets of class centres, their farthest member and the nearest
other centre."""

from __future__ import annotations

import torch
from torch import Tensor

from marginkit.miners._inputs import check_features_and_labels

FeatureTriplets = tuple[Tensor, Tensor, Tensor]


class HardClusterMiner:
    r"""One triplet per class of a P×K batch: (centre, its farthest member, the nearest other centre).

    For the P classes of the batch (sorted by label), with :math:`\mu_c` the mean of class
    :math:`c`'s K items:

    .. math::
        a_c = \mu_c, \qquad p_c = \arg\max_{x \in c} \lVert x - \mu_c \rVert, \qquad
        n_c = \arg\min_{c' \ne c} \lVert \mu_{c'} - \mu_c \rVert,

    returned as aligned (P, D) *feature* tensors ``(anchors, positives, negatives)``, not
    indices (OML's miner; the centres carry the gradient to every item), for
    :class:`~marginkit.losses.TripletLoss`. Ties go to the lower index. Every class must have
    the same number of items and the batch at least two classes (``ValueError`` otherwise).

    Example:
        >>> x = torch.tensor([[0.0], [2.0], [10.0], [11.0], [4.0], [5.0]])
        >>> anchors, positives, negatives = HardClusterMiner()(x, torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> anchors[:, 0].tolist(), positives[:, 0].tolist(), negatives[:, 0].tolist()
        ([1.0, 10.5, 4.5], [0.0, 10.0, 4.0], [4.5, 4.5, 1.0])
    """

    def __call__(self, features: Tensor, labels: Tensor) -> FeatureTriplets:
        return self.sample(features, labels)

    def sample(self, features: Tensor, labels: Tensor) -> FeatureTriplets:
        """``(anchors, positives, negatives)``, (P, D) each (see the class docstring)."""
        labels = check_features_and_labels(features, labels)
        classes, counts = torch.unique(labels, return_counts=True)
        if len(classes) < 2 or bool((counts != counts[0]).any()):
            raise ValueError(
                "`labels` must hold at least 2 classes with the same number of items each "
                f"(P x K batches), got counts {dict(zip(classes.tolist(), counts.tolist(), strict=True))}"
            )
        order = torch.argsort(labels, stable=True)
        grouped = features[order].reshape(len(classes), int(counts[0]), features.shape[1])
        centres = grouped.mean(1)
        with torch.no_grad():
            spread = (grouped - centres[:, None]).square().sum(2)
            farthest = spread.argmax(1)
            between = torch.cdist(centres, centres).fill_diagonal_(float("inf"))
            nearest = between.argmin(1)
        rows = torch.arange(len(classes), device=features.device)
        return centres, grouped[rows, farthest], centres[nearest]

    def __repr__(self) -> str:
        return "HardClusterMiner()"
