"""SmallCNN, the embedding neck, Embedder, pretrained loading and the backbone configs."""

from __future__ import annotations

import inspect
import pickle
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from marginkit.models.backbones import (
    MLP,
    Embedder,
    EmbeddingNeck,
    IResNet,
    MobileFaceNet,
    SmallCNN,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"


def test_small_cnn_on_flat_digits_and_on_images():
    net = SmallCNN(in_channels=1, image_size=8, channels=(8, 16), embedding_dim=6)
    flat = torch.randn(5, 64)
    out = net(flat)
    assert out.shape == (5, 6) and net.embedding_dim == 6
    torch.testing.assert_close(net.eval()(flat), net(flat.view(5, 1, 8, 8)))
    out.sum().backward()
    colour = SmallCNN(in_channels=3, image_size=None, channels=(8, 8, 8), embedding_dim=4)
    assert colour(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="flat inputs must have"):
        net(torch.randn(2, 63))


def test_neck_is_batch_norm_of_a_linear_map():
    neck = EmbeddingNeck(6, 3).double()
    x = torch.randn(8, 2, 3, dtype=torch.float64)  # flattened to 6 features
    linear = x.flatten(1) @ neck.linear.weight.T + neck.linear.bias
    mean, var = linear.mean(0), linear.var(0, unbiased=False)
    expected = (linear - mean) / torch.sqrt(var + neck.batch_norm.eps)
    expected = expected * neck.batch_norm.weight + neck.batch_norm.bias
    torch.testing.assert_close(neck(x), expected)
    assert neck.embedding_dim == 3
    with pytest.raises(ValueError, match="`dropout`"):
        EmbeddingNeck(6, 3, dropout=-0.1)


def test_embedder_pools_a_feature_map():
    trunk = torch.nn.Conv2d(3, 5, 3)
    net = Embedder(trunk, 5, 4).eval()
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(net(x), net.neck(trunk(x).mean((2, 3))))
    assert net.embedding_dim == 4
    with pytest.raises(TypeError, match=r"`trunk` must be an nn\.Module"):
        Embedder("resnet50", 5, 4)


SMALL = {
    MLP: {"in_features": 8, "hidden": (16,), "embedding_dim": 4},
    SmallCNN: {"channels": (4,), "embedding_dim": 4},
    IResNet: {"layers": (1, 1, 1, 1), "embedding_dim": 4, "input_size": 16},
    MobileFaceNet: {"embedding_dim": 4, "blocks": (1, 1, 1, 1), "scale": 1, "input_size": 16},
}
INPUTS = {MLP: (3, 8), SmallCNN: (3, 64), IResNet: (3, 3, 16, 16), MobileFaceNet: (3, 3, 16, 16)}


@pytest.mark.parametrize("cls", list(SMALL), ids=lambda c: c.__name__)
def test_pretrained_round_trip(cls, tmp_path):
    source = cls(**SMALL[cls])
    for parameter in source.parameters():  # move away from the initialisation
        parameter.data.add_(torch.randn_like(parameter) * 0.1)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = cls(**SMALL[cls], pretrained=str(path))
    x = torch.randn(INPUTS[cls])
    torch.testing.assert_close(loaded.eval()(x), source.eval()(x))
    # A checkpoint with a "state_dict" whose backbone keys carry the module's prefix.
    checkpoint = {
        "state_dict": {
            **{f"backbone.{k}": v for k, v in source.state_dict().items()},
            "loss.weight": torch.zeros(3, 4),
        },
        "epoch": 3,
    }
    torch.save(checkpoint, tmp_path / "module.ckpt")
    again = cls(**SMALL[cls], pretrained=tmp_path / "module.ckpt")
    torch.testing.assert_close(again.eval()(x), source(x))


def test_pretrained_errors(tmp_path):
    torch.save(MLP(8, (16,), 4).state_dict(), tmp_path / "mlp.pt")
    with pytest.raises(ValueError, match=r"(?s)does not fit MLP: .*size mismatch"):
        MLP(8, (32,), 4, pretrained=str(tmp_path / "mlp.pt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MLP(pretrained=str(tmp_path / "missing.pt"))
    torch.save({"weights": Path("x")}, tmp_path / "pickle.pt")  # not loadable weights-only
    with pytest.raises(pickle.UnpicklingError):
        MLP(pretrained=str(tmp_path / "pickle.pt"))


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_backbone_configs_mirror_constructors(path):
    node = OmegaConf.load(path)
    target = hydra.utils.get_class(node._target_)
    assert set(node) - {"_target_"} == set(inspect.signature(target).parameters)
    if path.stem in ("mlp", "small_cnn"):  # cheap enough to build here
        net = hydra.utils.instantiate(node)
        assert net.embedding_dim == node.embedding_dim
