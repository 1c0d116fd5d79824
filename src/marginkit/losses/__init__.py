"""Loss heads: ``forward(embeddings, labels) -> loss``; heads own their class weights."""

from marginkit.losses.angular_margin import AngularMarginLoss
from marginkit.losses.arcface import ArcFaceLoss
from marginkit.losses.combined_margin import CombinedMarginLoss
from marginkit.losses.cosface import CosFaceLoss
from marginkit.losses.softmax import SoftmaxLoss

__all__ = ["AngularMarginLoss", "ArcFaceLoss", "CombinedMarginLoss", "CosFaceLoss", "SoftmaxLoss"]
