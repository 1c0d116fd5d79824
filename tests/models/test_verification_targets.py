"""evaluate_targets under DDP (each rank embeds its share, one answer) and the module's monitor."""

from __future__ import annotations

import pytest
import torch

from marginkit.data import InsightFaceDataModule
from marginkit.models.verification_targets import evaluate_targets
from tests.helpers.insightface_data import insightface_folder
from tests.helpers.spawn import run_on_ranks


class _Counting(torch.nn.Module):
    """Pooled colours through a fixed seeded linear map; counts the images it embeds."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(12, 8)
        with torch.no_grad():
            weight = torch.randn(8, 12, generator=torch.Generator().manual_seed(0))
            self.linear.weight.copy_(weight)
            self.linear.bias.zero_()
        self.norm = torch.nn.BatchNorm1d(8)
        self.seen = 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.norm(self.linear(torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)))


def _targets_on_rank(rank, world_size, root):
    dm = InsightFaceDataModule(root, image_size=None, num_workers=0, eval_batch_size=5)
    dm.setup("validate")
    backbone = _Counting()
    with torch.no_grad():  # statistics that differ by rank, as after DDP training steps
        backbone.norm.running_mean.copy_(torch.linspace(-1, 1, 8) * rank)
        backbone.norm.running_var.fill_(1.0 + rank)
    return evaluate_targets(backbone, dm), backbone.seen


@pytest.mark.slow
def test_ranks_embed_their_share_and_agree_with_one_process(tmp_path):
    root = str(insightface_folder(tmp_path / "data", n_pairs=41))  # 82 images per target
    single, seen = _targets_on_rank(0, 1, root)
    assert seen == 2 * 2 * 82  # two targets, image + flip
    by_rank = run_on_ranks(_targets_on_rank, 3, str(tmp_path), root)
    for rank in range(3):  # rank 0's statistics everywhere: the single process's answer
        assert by_rank[rank][0] == single
    shares = [by_rank[rank][1] for rank in range(3)]
    assert sum(shares) == seen and sorted(shares) == [2 * 2 * 27, 2 * 2 * 27, 2 * 2 * 28]


def test_module_accepts_target_monitors_only():
    from marginkit import EmbeddingModule

    parts = (
        {
            "_target_": "marginkit.models.backbones.MLP",
            "in_features": 4,
            "hidden": [],
            "embedding_dim": 4,
        },
        {"_target_": "marginkit.losses.ArcFaceLoss", "in_features": 4, "num_classes": 3},
    )
    assert EmbeddingModule(*parts, monitor="val/lfw/accuracy").monitor_mode == "max"
    assert EmbeddingModule(*parts, monitor="val/cfp_fp/accuracy_std").monitor_mode == "min"
    with pytest.raises(ValueError, match="monitor"):
        EmbeddingModule(*parts, monitor="val/lfw/bogus")
