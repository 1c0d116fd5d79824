"""Evaluate a checkpoint: ``python eval.py ckpt_path=<run>/checkpoints/best.ckpt`` (conf/eval.yaml)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from marginkit.cli.command_line import check_command_line


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> dict[str, float]:
    """Retrieval and verification metrics of a checkpoint on a split; writes ``metrics.json``."""
    # Lightning and torch load here, not at import: `python eval.py --help` answers at once.
    from marginkit.cli.evaluate import run

    return run(cfg)


if __name__ == "__main__":
    check_command_line(Path(__file__).resolve().parent / "conf", "eval", sys.argv)
    main()
