"""The tensor image transforms against Pillow, NumPy and brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from marginkit.data.transforms import (
    CenterCrop,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    image_transform,
    to_tensor,
)


@pytest.mark.parametrize("size", [(7, 5), (20, 9), (12, 12)])
def test_resize_matches_pillow_bilinear(size):
    pixels = np.random.default_rng(0).random((12, 10), dtype=np.float32)
    expected = np.asarray(Image.fromarray(pixels, mode="F").resize(size[::-1], Image.BILINEAR))
    got = Resize(size)(torch.from_numpy(pixels)[None])[0]
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-3)


def test_to_tensor_and_normalize():
    array = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    tensor = to_tensor(Image.fromarray(array))
    np.testing.assert_allclose(tensor.permute(1, 2, 0).numpy(), array / 255.0, atol=1e-7)
    assert to_tensor(Image.fromarray(array[:, :, 0])).shape == (1, 4, 5)
    normalised = Normalize([0.1, 0.2, 0.3], [0.5, 2.0, 4.0])(tensor)
    expected = (array / 255.0 - [0.1, 0.2, 0.3]) / [0.5, 2.0, 4.0]
    np.testing.assert_allclose(normalised.permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_crops_are_windows_of_the_image():
    image = torch.arange(2 * 6 * 7, dtype=torch.float32).view(2, 6, 7)
    assert torch.equal(CenterCrop((4, 3))(image), image[:, 1:5, 2:5])
    windows = {(top, left) for top in range(6 - 4 + 1) for left in range(7 - 3 + 1)}
    seen = set()
    for _ in range(200):
        crop = RandomCrop((4, 3))(image)
        match = [
            w for w in windows if torch.equal(crop, image[:, w[0] : w[0] + 4, w[1] : w[1] + 3])
        ]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == windows  # every position is reachable
    with pytest.raises(ValueError, match="larger than the image"):
        CenterCrop(8)(image)


def test_flip_probability():
    image = torch.arange(6.0).view(1, 2, 3)
    assert torch.equal(
        RandomHorizontalFlip(1.0)(image), torch.from_numpy(np.flip(image.numpy(), -1).copy())
    )
    assert torch.equal(RandomHorizontalFlip(0.0)(image), image)
    flips = sum(not torch.equal(RandomHorizontalFlip(0.5)(image), image) for _ in range(400))
    assert 150 < flips < 250


def test_pipeline_and_bad_arguments():
    train = image_transform((8, 8), (6, 6), True, [0.5], [0.5], train=True)
    evaluation = image_transform((8, 8), (6, 6), True, [0.5], [0.5], train=False)
    image = torch.rand(3, 10, 10)
    assert train(image).shape == evaluation(image).shape == (3, 6, 6)
    assert torch.equal(evaluation(image), evaluation(image))  # deterministic
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        Resize((0, 3))
    with pytest.raises(ValueError, match="`std` must be positive"):
        Normalize([0.0], [0.0])
    with pytest.raises(ValueError, match="`p` must be in"):
        RandomHorizontalFlip(2.0)
