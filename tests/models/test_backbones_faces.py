"""IResNet and MobileFaceNet: shapes at 112×112, the block's layer order, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from marginkit.models.backbones import (
    IRESNET_LAYERS,
    IBasicBlock,
    IResNet,
    MobileFaceNet,
    iresnet18,
    iresnet100,
)


def _iresnet_parameter_count(layers, embedding_dim=512, side=7, in_channels=3):
    """Parameters of arcface_torch's IResNet, counted from its layer description."""
    total = in_channels * 64 * 9 + 2 * 64 + 64  # stem conv, BN (scale, shift), PReLU
    size_in = 64
    for blocks, width in zip(layers, (64, 128, 256, 512), strict=True):
        for block in range(blocks):
            a = size_in if block == 0 else width
            # BN(a) → Conv3×3(a→w) → BN(w) → PReLU(w) → Conv3×3(w→w) → BN(w)
            total += 2 * a + 9 * a * width + 2 * width + width + 9 * width * width + 2 * width
            if block == 0:  # strided shortcut: Conv1×1 + BN
                total += a * width + 2 * width
        size_in = width
    # BN2d(512) → Linear(512·side² → D, bias) → BN1d(D)
    return total + 2 * 512 + 512 * side * side * embedding_dim + embedding_dim + 2 * embedding_dim


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["iresnet18", "iresnet34", "iresnet50"])
def test_iresnet_shapes_on_a_tiny_input(name):
    net = IResNet(IRESNET_LAYERS[name], embedding_dim=32, input_size=16).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 16, 16)).shape == (2, 32)
    assert net.embedding_dim == 32
    assert _count(net) == _iresnet_parameter_count(IRESNET_LAYERS[name], 32, side=1)


def test_iresnet100_has_about_65_million_parameters():
    """IResNet-100 is checked by its parameter count only (a forward pass is slow on CPU)."""
    net = iresnet100()
    count = _count(net)
    assert count == _iresnet_parameter_count(IRESNET_LAYERS["iresnet100"])
    assert 65.0e6 < count < 65.3e6  # insightface's figure for IResNet-100: ≈65.2M


def test_iresnet18_at_112_halves_four_times():
    net = iresnet18()
    sizes = []
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        stage.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[1:])))
    out = net(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 512) and net.embedding_dim == 512
    assert sizes == [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]
    assert net.fc.in_features == 512 * 7 * 7 and not net.features.weight.requires_grad
    with pytest.raises(ValueError, match=r"expects \(N, 3, 112, 112\)"):
        net(torch.randn(2, 3, 64, 64))


def test_block_is_bn_conv_bn_prelu_conv_bn_plus_shortcut():
    block = IBasicBlock(4, 8, stride=2)
    for module in block.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)
    block.eval()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    block.double()

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, eps=m.eps)

    out = bn(x, block.bn1)
    out = F.conv2d(out, block.conv1.weight, padding=1)
    out = F.prelu(bn(out, block.bn2), block.prelu.weight)
    out = bn(F.conv2d(out, block.conv2.weight, stride=2, padding=1), block.bn3)
    shortcut = bn(F.conv2d(x, block.downsample[0].weight, stride=2), block.downsample[1])
    torch.testing.assert_close(block(x), out + shortcut)


def test_gradients_reach_every_trainable_parameter():
    net = IResNet((1, 1, 1, 1), embedding_dim=8, input_size=16, dropout=0.2)
    net(torch.randn(3, 3, 16, 16)).square().sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_mobilefacenet_at_112():
    net = MobileFaceNet()
    seen = []
    net.conv_sep.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[1:])))
    assert net.eval()(torch.randn(2, 3, 112, 112)).shape == (2, 512)
    assert seen == [(512, 7, 7)] and net.features[0].layers[0].kernel_size == (7, 7)
    assert net.embedding_dim == 512


def test_small_mobilefacenet_trains():
    net = MobileFaceNet(embedding_dim=16, blocks=(2, 1, 1, 1), scale=1, input_size=16)
    net(torch.randn(3, 3, 16, 16)).square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize(
    "factory,kwargs,match",
    [
        (IResNet, {"layers": (2, 2, 2)}, "4 stages"),
        (IResNet, {"embedding_dim": 0}, "`embedding_dim` must be positive"),
        (IResNet, {"dropout": 1.0}, r"`dropout` must be in \[0, 1\)"),
        (MobileFaceNet, {"blocks": (1, 0, 1, 1)}, "`blocks` must be positive"),
    ],
)
def test_bad_arguments(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)
