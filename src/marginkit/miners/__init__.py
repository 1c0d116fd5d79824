"""Index-tuple miners: they pick which (anchor, positive, negative) triplets of a batch a loss
sees, under ``no_grad`` (pytorch-metric-learning's and OML's miners)."""

from marginkit.miners.triplets import (
    AllTripletsMiner,
    HardTripletsMiner,
    NHardTripletsMiner,
    TripletMiner,
    count_triplets,
)

__all__ = [
    "AllTripletsMiner",
    "HardTripletsMiner",
    "NHardTripletsMiner",
    "TripletMiner",
    "count_triplets",
]
