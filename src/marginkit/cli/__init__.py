"""What the thin entry points (``train.py``) call: instantiate, fit, test, write metrics.

Importing this package is light (Hydra and OmegaConf only): torch, Lightning and torchmetrics
load when training starts, so ``python train.py --help`` and config errors answer at once.
"""

from marginkit.cli.config import ConfigError, register_resolvers
from marginkit.cli.results import print_metrics
from marginkit.cli.train import build, run, train

__all__ = ["ConfigError", "build", "print_metrics", "register_resolvers", "run", "train"]
