"""Train an embedding model: ``python train.py loss=cosface`` (Hydra; see conf/train.yaml)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from marginkit.cli import register_resolvers, run
from marginkit.cli.command_line import check_command_line

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Fit, test, write ``metrics.json`` in the run directory; return the monitored metric."""
    return run(cfg)


if __name__ == "__main__":
    check_command_line(Path(__file__).resolve().parent / "conf", "train", sys.argv)
    main()
