"""Export a checkpoint's backbone: ``python export.py ckpt_path=<ckpt> format=onnx`` (conf/export.yaml)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from marginkit.cli.command_line import check_command_line


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> str:
    """Write the backbone alone (ONNX, TorchScript or ``torch.export``) and check its embeddings."""
    # Lightning and torch load here, not at import: `python export.py --help` answers at once.
    from marginkit.cli.export import run

    return run(cfg)


if __name__ == "__main__":
    check_command_line(Path(__file__).resolve().parent / "conf", "export", sys.argv)
    main()
