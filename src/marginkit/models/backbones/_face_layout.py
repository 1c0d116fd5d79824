"""The layout the face backbones share: square images through four stride-2 stages."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from marginkit._validation import check_positive_int


def check_stage_sizes(name: str, sizes: Sequence[int], meaning: str) -> tuple[int, ...]:
    """Return ``sizes`` as a tuple if it holds 4 positive ints, one per stage, else raise.

    ``ValueError`` (``TypeError`` for a non-int) names ``name``; ``meaning`` says what the four
    values are.

    Example:
        >>> check_stage_sizes("layers", [2, 2, 2, 2], "the blocks of 4 stages")
        (2, 2, 2, 2)
        >>> check_stage_sizes("layers", (2, 2), "the blocks of 4 stages")
        Traceback (most recent call last):
        ...
        ValueError: `layers` must give the blocks of 4 stages, got [2, 2]
    """
    sizes = tuple(sizes)
    if len(sizes) != 4:
        raise ValueError(f"`{name}` must give {meaning}, got {list(sizes)}")
    for size in sizes:
        check_positive_int(name, size)
    return sizes


def check_square_images(images: Tensor, in_channels: int, input_size: int, owner: str) -> None:
    """Raise ``ValueError`` unless ``images`` is (N, ``in_channels``, ``input_size``, ``input_size``).

    ``owner`` names the backbone in the message.

    Example:
        >>> import torch
        >>> check_square_images(torch.zeros(2, 3, 8, 8), 3, 8, "Net")
        >>> check_square_images(torch.zeros(2, 3, 8, 9), 3, 8, "Net")
        Traceback (most recent call last):
        ...
        ValueError: Net expects (N, 3, 8, 8) images (`input_size`=8), got (2, 3, 8, 9)
    """
    if images.ndim != 4 or tuple(images.shape[1:]) != (in_channels, input_size, input_size):
        raise ValueError(
            f"{owner} expects (N, {in_channels}, {input_size}, {input_size}) images "
            f"(`input_size`={input_size}), got {tuple(images.shape)}"
        )


def side_after_halvings(input_size: int, halvings: int = 4) -> int:
    """The side of the feature map after ``halvings`` stride-2 stages: ⌈input_size / 2^halvings⌉.

    Example:
        >>> side_after_halvings(112), side_after_halvings(100), side_after_halvings(1)
        (7, 7, 1)
    """
    return -(-input_size // 2**halvings)
