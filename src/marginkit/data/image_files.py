"""Image files: finding them in class folders, decoding them, and never stopping an epoch on one.

The file layer under the image datamodules: :func:`scan_class_folders` lists the images of
each class folder (and the class folders without any), :class:`ImageFileDataset` decodes them
with Pillow (an unreadable file yields None and is counted in shared memory, so DataLoader
workers report to the main process), :func:`collate_readable` drops those items from their
batch, and :class:`ReportingDataLoader` warns once per pass with their count.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from marginkit.data.transforms import to_tensor

IMAGE_EXTENSIONS = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
# What a file that does not decode raises in Pillow (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


def decode_errors() -> tuple[type[BaseException], ...]:
    """The exceptions Pillow raises for a file that is not a readable image (decompression bombs too)."""
    from PIL import Image

    return (*_DECODE_ERRORS, Image.DecompressionBombError)


class ClassFolders(NamedTuple):
    """The class folders of an image folder (what :func:`scan_class_folders` finds).

    Attributes:
        images: ``{class name: [image paths, sorted]}`` of the class folders holding images,
            sorted by name.
        empty: the names of the class folders without any image, sorted.
    """

    images: dict[str, list[str]]
    empty: list[str]


def scan_class_folders(
    root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> ClassFolders:
    """The images of each class folder of ``root``, and the class folders without any.

    Every direct sub-folder of ``root`` is a class (sorted by name); its images are the files
    below it (recursively, symbolic links followed) whose suffix is in ``extensions`` (any
    case). Hidden files and folders (``.name``) are skipped; a class folder without an image
    is listed in :attr:`ClassFolders.empty`.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: ``root`` holds no class folder with an image.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as root:
        ...     for name in ("b/1.png", "a/x/2.png", "a/3.txt", "c/4.txt"):
        ...         Path(root, name).parent.mkdir(parents=True, exist_ok=True)
        ...         Image.new("L", (2, 2)).save(Path(root, name)) if name.endswith("png") else None
        ...     found = scan_class_folders(root)
        ...     {name: [Path(p).name for p in paths] for name, paths in found.images.items()}
        {'a': ['2.png'], 'b': ['1.png']}
        >>> found.empty
        ['c']
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a folder")
    suffixes = tuple(ext.lower() for ext in extensions)
    classes: dict[str, list[str]] = {}
    empty: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        paths = []
        for folder, subfolders, files in os.walk(entry.path, followlinks=True):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            paths += [
                os.path.join(folder, name)
                for name in sorted(files)
                if not name.startswith(".") and name.lower().endswith(suffixes)
            ]
        if paths:
            classes[entry.name] = paths
        else:
            empty.append(entry.name)
    if not classes:
        raise ValueError(
            f"image folder {str(root)!r} holds no class sub-folder with images "
            f"(suffixes {list(suffixes)}; {len(empty)} class folder(s) without one)"
        )
    return ClassFolders(classes, empty)


def scan_image_folder(
    root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> dict[str, list[str]]:
    """The images of each class folder of ``root``: ``{class name: [paths, sorted]}``.

    :func:`scan_class_folders`' ``images``: class folders without an image are left out.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: ``root`` holds no class folder with an image.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as root:
        ...     for name in ("b/1.png", "a/x/2.png", "a/3.txt"):
        ...         Path(root, name).parent.mkdir(parents=True, exist_ok=True)
        ...         Image.new("L", (2, 2)).save(Path(root, name)) if name.endswith("png") else None
        ...     classes = scan_image_folder(root)
        ...     {name: [Path(p).name for p in paths] for name, paths in classes.items()}
        {'a': ['2.png'], 'b': ['1.png']}
    """
    return scan_class_folders(root, extensions).images


def is_readable_image(path: str) -> bool:
    """Whether Pillow can open and fully decode the image at ``path``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except decode_errors():
        return False
    return True


class ImageFileDataset(Dataset):
    """Images read from files with Pillow; an unreadable file yields ``None``, never an error.

    Item ``i`` is ``(transform(image), label)`` (``+ (index,)`` with ``with_index``), the image
    converted to ``RGB`` (or ``L`` with ``grayscale``) and to a (C, H, W) float tensor in [0, 1]
    before ``transform``. A file that fails to decode gives ``None`` and is recorded in a
    shared-memory flag tensor (so DataLoader workers report to the main process); pair the dataset
    with :func:`collate_readable` to drop those items from the batch, and call
    :meth:`warn_unreadable` (the image datamodule's loaders do it at the end of every pass) for one
    warning that counts them.

    Args:
        paths: image files.
        labels: (N,) int64 label of each file.
        transform: applied to the (C, H, W) tensor.
        grayscale: decode to one channel instead of three.
        with_index: also return the item's index (evaluation splits).
        name: the split's name, for the warning.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Tensor,
        transform: Callable[[Tensor], Tensor] | None = None,
        grayscale: bool = False,
        with_index: bool = False,
        name: str = "images",
    ) -> None:
        self.paths = list(paths)
        self.labels = labels
        self.transform = transform
        self.mode = "L" if grayscale else "RGB"
        self.with_index = with_index
        self.name = name
        self.unreadable = torch.zeros(len(self.paths), dtype=torch.bool).share_memory_()
        self._n_reported = 0

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Tensor | None:
        """The decoded, transformed image ``index``, or None if its file does not decode."""
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as image:
                pixels = to_tensor(image.convert(self.mode))
        except decode_errors():
            self.unreadable[index] = True
            return None
        return pixels if self.transform is None else self.transform(pixels)

    def __getitem__(self, index: int) -> tuple[Tensor, ...] | None:
        pixels = self.load(index)
        if pixels is None:
            return None
        if self.with_index:
            return pixels, self.labels[index], torch.tensor(index)
        return pixels, self.labels[index]

    def warn_unreadable(self) -> int:
        """Warn once about the files found unreadable since the last warning; return their count."""
        n_unreadable = int(self.unreadable.sum())
        if n_unreadable > self._n_reported:
            self._n_reported = n_unreadable
            first = [self.paths[i] for i in self.unreadable.nonzero()[:3, 0].tolist()]
            warnings.warn(
                f"skipped {n_unreadable} unreadable image(s) of the {self.name} split "
                f"(e.g. {first}); they are left out of every batch. "
                "`verify_images=true` drops them when the split is built.",
                RuntimeWarning,
                stacklevel=2,
            )
        return n_unreadable


def collate_readable(batch: list[Any]) -> Any:
    """PyTorch's default collate of the items that are not None; None if none is left."""
    items = [item for item in batch if item is not None]
    return default_collate(items) if items else None


class ReportingDataLoader(DataLoader):
    """A DataLoader that warns about unreadable images when a pass delivers its last batch.

    Batches arrive in order, so by the last one every item of the pass has been read (by any
    worker). The check runs before the last batch is handed out because Lightning stops asking
    after ``len(loader)`` batches (the iterator is never exhausted). A batch sampler with a
    ``skip`` attribute (a resumed epoch's :class:`~marginkit.cli.resume.SkippingBatchSampler`)
    delivers ``skip`` batches fewer this pass; the check moves up accordingly.
    """

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        n_batches = len(self) - int(getattr(self.batch_sampler, "skip", 0) or 0)
        warn = getattr(self.dataset, "warn_unreadable", lambda: 0)
        for number, batch in enumerate(super().__iter__(), start=1):
            if number == n_batches:
                warn()
            yield batch
        warn()
