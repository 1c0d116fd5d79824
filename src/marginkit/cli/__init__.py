"""What the thin entry points (``train.py``) call: instantiate, fit, test, write metrics."""

from marginkit.cli.config import ConfigError, register_resolvers
from marginkit.cli.train import build, print_metrics, run, train

__all__ = ["ConfigError", "build", "print_metrics", "register_resolvers", "run", "train"]
