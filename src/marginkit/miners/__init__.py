"""Index-tuple miners: they pick which (anchor, positive, negative) triplets or (a1, p, a2, n) pairs
of a batch a loss sees, under ``no_grad`` (pytorch-metric-learning's and OML's miners)."""

from marginkit.miners.hard_cluster import HardClusterMiner
from marginkit.miners.pairs import (
    BatchEasyHardMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    PairMiner,
    TripletMarginMiner,
)
from marginkit.miners.triplets import (
    AllTripletsMiner,
    HardTripletsMiner,
    NHardTripletsMiner,
    TripletMiner,
    count_triplets,
)

__all__ = [
    "AllTripletsMiner",
    "BatchEasyHardMiner",
    "HardClusterMiner",
    "HardTripletsMiner",
    "MultiSimilarityMiner",
    "NHardTripletsMiner",
    "PairMarginMiner",
    "PairMiner",
    "TripletMarginMiner",
    "TripletMiner",
    "count_triplets",
]
