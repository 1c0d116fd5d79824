"""Embed a split with a checkpoint: ``python embed.py ckpt_path=<ckpt> out=embeddings.pt`` (conf/embed.yaml)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="embed")
def main(cfg: DictConfig) -> str:
    """Write ``{embeddings, labels, paths, indices}`` of a split with ``torch.save``."""
    # Lightning and torch load here, not at import: `python embed.py --help` answers at once.
    from marginkit.cli.embed import run

    return run(cfg)


if __name__ == "__main__":
    main()
