"""DataModules, samplers and pair-file readers.

Every datamodule keeps the contract of :class:`EmbeddingDataModule`: training classes known after
``setup("fit")``, evaluation batches with item indices, verification pair lists and the raw-input
baseline.
"""

from marginkit.data.base import EmbeddingDataModule
from marginkit.data.digits import DigitsDataModule
from marginkit.data.glyphs import GlyphsDataModule, augment_glyphs
from marginkit.data.image_folder import ImageFolderDataModule
from marginkit.data.insightface import InsightFaceDataModule
from marginkit.data.pairs import (
    Pair,
    VerificationPairs,
    pair_file_folds,
    read_pairs,
    sample_pairs,
)
from marginkit.data.samplers import BalancedBatchSampler
from marginkit.data.synthetic import SyntheticDataModule

__all__ = [
    "BalancedBatchSampler",
    "DigitsDataModule",
    "EmbeddingDataModule",
    "GlyphsDataModule",
    "ImageFolderDataModule",
    "InsightFaceDataModule",
    "Pair",
    "SyntheticDataModule",
    "VerificationPairs",
    "augment_glyphs",
    "pair_file_folds",
    "read_pairs",
    "sample_pairs",
]
