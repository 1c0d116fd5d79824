"""Small image transforms on (C, H, W) float tensors (what the image datamodule composes).

``torchvision`` is not a dependency (its PyPI wheels pin their own torch build), so the few
transforms a face / product training needs live here: :func:`to_tensor` from a Pillow image,
:class:`Resize`, :class:`RandomCrop`, :class:`CenterCrop`, :class:`RandomHorizontalFlip`,
:class:`Normalize` and :class:`Compose`. Random transforms draw from torch's global generator,
which Lightning's ``seed_everything(workers=True)`` seeds in every DataLoader worker.
A ``torchvision.transforms.v2`` pipeline works as a drop-in replacement where it is installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F


def _pair(name: str, size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    size = tuple(size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"`{name}` must be a positive int or (height, width), got {size!r}")
    return size  # type: ignore[return-value]


def to_tensor(image: Any) -> Tensor:
    """A Pillow image (``L`` or ``RGB``) as a (C, H, W) float32 tensor in [0, 1].

    Example:
        >>> from PIL import Image
        >>> to_tensor(Image.new("RGB", (4, 2), (255, 0, 51))).shape
        torch.Size([3, 2, 4])
    """
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


class Compose:
    """Apply transforms in order: ``Compose([a, b])(x) == b(a(x))``.

    Example:
        >>> Compose([lambda x: x + 1, lambda x: 2 * x])(torch.tensor(1.0))
        tensor(4.)
    """

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Any) -> Any:
        for transform in self.transforms:
            image = transform(image)
        return image

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


class Resize:
    """Resize a (C, H, W) image to ``size`` = (height, width), bilinear with antialiasing.

    Same as ``torch.nn.functional.interpolate(x[None], size, mode="bilinear",
    antialias=True)[0]``; an image already of that size is returned unchanged.

    Example:
        >>> Resize((2, 3))(torch.rand(3, 8, 8)).shape
        torch.Size([3, 2, 3])
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair("size", size)

    def __call__(self, image: Tensor) -> Tensor:
        if tuple(image.shape[-2:]) == self.size:
            return image
        return F.interpolate(
            image[None], size=self.size, mode="bilinear", align_corners=False, antialias=True
        )[0]

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class CenterCrop:
    """Crop the central ``size`` = (height, width) window (the top-left one when off by one).

    Example:
        >>> CenterCrop(2)(torch.arange(16.0).view(1, 4, 4))
        tensor([[[ 5.,  6.],
                 [ 9., 10.]]])
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair("size", size)

    def __call__(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        crop_h, crop_w = self.size
        if crop_h > height or crop_w > width:
            raise ValueError(f"crop {self.size} is larger than the image {(height, width)}")
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return image[..., top : top + crop_h, left : left + crop_w]

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class RandomCrop(CenterCrop):
    """Crop a ``size`` window at a uniformly random position.

    Example:
        >>> RandomCrop((2, 3))(torch.rand(1, 5, 5)).shape
        torch.Size([1, 2, 3])
    """

    def __call__(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        crop_h, crop_w = self.size
        if crop_h > height or crop_w > width:
            raise ValueError(f"crop {self.size} is larger than the image {(height, width)}")
        top = int(torch.randint(height - crop_h + 1, ()))
        left = int(torch.randint(width - crop_w + 1, ()))
        return image[..., top : top + crop_h, left : left + crop_w]

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p``.

    Example:
        >>> RandomHorizontalFlip(p=1.0)(torch.tensor([[[1.0, 2.0]]]))
        tensor([[[2., 1.]]])
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"`p` must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, image: Tensor) -> Tensor:
        if self.p > 0 and float(torch.rand(())) < self.p:
            return image.flip(-1)
        return image

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(image - mean[c]) / std[c]`` per channel ``c`` (one value each broadcasts).

    Example:
        >>> Normalize([0.5], [0.5])(torch.tensor([[[0.0, 1.0]]]))
        tensor([[[-1.,  1.]]])
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if not mean or len(mean) != len(std):
            raise ValueError(
                f"`mean` and `std` must be non-empty and of one length, got {mean} and {std}"
            )
        if any(v <= 0 for v in std):
            raise ValueError(f"`std` must be positive, got {std}")
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: Tensor) -> Tensor:
        if len(self.mean) not in (1, image.shape[0]):
            raise ValueError(
                f"`mean`/`std` have {len(self.mean)} values, the image has {image.shape[0]} "
                "channels"
            )
        return (image - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def image_transform(
    image_size: int | Sequence[int] | None,
    crop_size: int | Sequence[int] | None,
    horizontal_flip: bool,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
) -> Compose:
    """The pipeline of the image datamodule, applied to :func:`to_tensor`'s output.

    Training: resize to ``image_size`` → random crop ``crop_size`` → random horizontal flip →
    normalise. Evaluation: resize → centre crop → normalise. ``None`` skips a resize or a crop.

    Example:
        >>> pipeline = image_transform(8, 6, True, [0.5], [0.5], train=True)
        >>> pipeline(torch.rand(1, 16, 12)).shape
        torch.Size([1, 6, 6])
    """
    steps: list[Callable[[Tensor], Tensor]] = []
    if image_size is not None:
        steps.append(Resize(image_size))
    if crop_size is not None:
        steps.append(RandomCrop(crop_size) if train else CenterCrop(crop_size))
    if train and horizontal_flip:
        steps.append(RandomHorizontalFlip())
    steps.append(Normalize(mean, std))
    return Compose(steps)
