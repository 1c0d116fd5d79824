"""DataModules, samplers and pair-file readers."""

from marginkit.data.digits import DigitsDataModule
from marginkit.data.pairs import read_pairs

__all__ = ["DigitsDataModule", "read_pairs"]
