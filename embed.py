"""Embed a split with a checkpoint: ``python embed.py ckpt_path=<ckpt> out=embeddings.pt`` (conf/embed.yaml)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from marginkit.cli.command_line import check_command_line


@hydra.main(version_base="1.3", config_path="conf", config_name="embed")
def main(cfg: DictConfig) -> str:
    """Write ``{embeddings, labels, paths, indices}`` of a split with ``torch.save``."""
    # Lightning and torch load here, not at import: `python embed.py --help` answers at once.
    from marginkit.cli.embed import run

    return run(cfg)


if __name__ == "__main__":
    check_command_line(Path(__file__).resolve().parent / "conf", "embed", sys.argv)
    main()
