"""insightface's training folders (MS1MV2/MS1MV3, Glint360K, WebFace42M): RecordIO images, ``.bin`` sets."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from marginkit.data.base import EmbeddingDataModule, _base_arguments, _check_int
from marginkit.data.image_files import ReportingDataLoader, collate_readable, decode_errors
from marginkit.data.recordio import IndexedRecordFile, open_insightface, unpack_payload
from marginkit.data.transforms import Resize, image_transform, to_tensor
from marginkit.data.verification_bin import folder_verification_set, load_bin


def decode_image(encoded: bytes, mode: str) -> Tensor:
    """Decode JPEG/PNG bytes with Pillow to a (C, H, W) float tensor in [0, 1]."""
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as image:
        return to_tensor(image.convert(mode))


class PixelPipeline:
    """Decode a training image and resize, random-crop and flip it in uint8, (H, W, C) out.

    The same steps, random draws and order as the image datamodule's training transform
    (:func:`~marginkit.data.transforms.image_transform`: ``Resize`` → ``RandomCrop`` (top,
    then left from ``torch.randint``) → ``RandomHorizontalFlip`` (``torch.rand``)), done on the
    decoded Pillow image so that each costs a C-level copy at most; a resize (only when the
    stored size differs from ``image_size``) runs the float ``Resize`` and rounds back to uint8.
    Channels last: a batch of these stacks with one ``memcpy`` per image; the datamodule's
    :meth:`InsightFaceDataModule.normalize` makes the (N, C, H, W) float32 batch on the device.

    Example:
        >>> from PIL import Image
        >>> buffer = io.BytesIO()
        >>> Image.new("RGB", (6, 4), (255, 0, 0)).save(buffer, format="PNG")
        >>> PixelPipeline((4, 6), (2, 2), True, "RGB")(buffer.getvalue()).shape
        torch.Size([2, 2, 3])
    """

    def __init__(
        self,
        image_size: Sequence[int] | None,
        crop_size: Sequence[int] | None,
        horizontal_flip: bool,
        mode: str,
    ) -> None:
        self.resize = None if image_size is None else Resize(image_size)
        self.crop_size = None if crop_size is None else tuple(crop_size)
        self.horizontal_flip = horizontal_flip
        self.mode = mode

    def __call__(self, encoded: bytes) -> Tensor:
        from PIL import Image

        with Image.open(io.BytesIO(encoded)) as opened:
            image = opened.convert(self.mode) if opened.mode != self.mode else opened
            image.load()
            if self.resize is not None and (image.height, image.width) != self.resize.size:
                resized = self.resize(to_tensor(image) * 255.0).round_().clamp_(0, 255)
                image = Image.fromarray(
                    resized.to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy(), self.mode
                )
            if self.crop_size is not None:
                crop_h, crop_w = self.crop_size
                if crop_h > image.height or crop_w > image.width:
                    raise ValueError(
                        f"crop {self.crop_size} is larger than the image "
                        f"{(image.height, image.width)}"
                    )
                top = int(torch.randint(image.height - crop_h + 1, ()))
                left = int(torch.randint(image.width - crop_w + 1, ()))
                image = image.crop((left, top, left + crop_w, top + crop_h))
            if self.horizontal_flip and float(torch.rand(())) < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            array = np.array(image, dtype=np.uint8)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array)


class RecordImageDataset(Dataset):
    """The images of an insightface ``.rec``, read by offset; an image that does not decode is None.

    Item ``i`` is ``(pixels(encoded image), label)``: with the datamodule's
    :class:`PixelPipeline`, an (H, W, C) uint8 tensor (the float conversion and normalisation
    happen on the batch, after it reached the device). Undecodable images are flagged in a
    shared-memory tensor (DataLoader workers report to the main process) and counted by one
    warning per pass (:meth:`warn_unreadable`, called by the datamodule's loader); a broken
    record frame (a corrupt ``.rec``) raises :class:`~marginkit.data.recordio.RecordIOError`
    naming the file and the record.
    """

    def __init__(
        self,
        records: IndexedRecordFile,
        keys: np.ndarray,
        labels: Tensor,
        pixels: Callable[[bytes], Tensor],
    ) -> None:
        self.records = records
        self.keys = keys
        self.labels = labels
        self.pixels = pixels
        self.unreadable = torch.zeros(len(keys), dtype=torch.bool).share_memory_()
        self._n_reported = 0

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor] | None:
        key = int(self.keys[index])
        payload = self.records.read(key)
        try:
            _, encoded = unpack_payload(payload)
            pixels = self.pixels(encoded)
        except decode_errors():
            self.unreadable[index] = True
            return None
        return pixels, self.labels[index]

    def warn_unreadable(self) -> int:
        """Warn once about the records found undecodable since the last warning; their count."""
        n_unreadable = int(self.unreadable.sum())
        if n_unreadable > self._n_reported:
            self._n_reported = n_unreadable
            first = [int(self.keys[i]) for i in self.unreadable.nonzero()[:3, 0].tolist()]
            warnings.warn(
                f"skipped {n_unreadable} record(s) of {self.records.rec_path} whose image does "
                f"not decode (e.g. keys {first}); they are left out of every batch",
                RuntimeWarning,
                stacklevel=2,
            )
        return n_unreadable


class VerificationImages(Dataset):
    """The images of a verification set; item ``i`` is ``(transform(image i), i)``."""

    def __init__(
        self, name: str, source: str, images: list[bytes], transform: Callable, mode: str
    ) -> None:
        self.name, self.source, self.images = name, source, images
        self.transform, self.mode = transform, mode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        try:
            pixels = decode_image(self.images[index], self.mode)
        except decode_errors() as error:
            raise ValueError(
                f"{self.source}: image {index} (pair {index // 2}) does not decode ({error})"
            ) from None
        return self.transform(pixels), torch.tensor(index)


class VerificationTarget(NamedTuple):
    """One verification set: its images (pair ``i`` is items ``2i``, ``2i + 1``) and flags."""

    name: str
    images: VerificationImages
    issame: Tensor  # (P,) bool


def find_targets(root: str | os.PathLike) -> list[str]:
    """The names of the ``.bin`` sets in ``root`` (``lfw`` for ``lfw.bin``), sorted."""
    return sorted(path.stem for path in Path(root).glob("*.bin") if path.is_file())


class InsightFaceDataModule(EmbeddingDataModule):
    """Train on insightface's RecordIO folder; verify on its ``.bin`` sets.

    The folder, as insightface distributes MS1MV2/MS1MV3, Glint360K or WebFace42M: ``train.rec``
    and ``train.idx`` (MXNet's indexed RecordIO, see :mod:`marginkit.data.recordio`), the
    ``property`` file (``num_classes,height,width``) and verification sets ``<name>.bin``
    (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``…, see
    :func:`~marginkit.data.verification_bin.load_bin`). A target named ``X`` is ``root/X.bin``,
    or else a folder ``root/X/`` with a ``pairs.txt`` (LFW format, paths relative to it).

    Training batches are ``(images, labels)`` as in
    :class:`~marginkit.data.ImageFolderDataModule` (same transforms: resize, optional random
    crop, flip, normalisation with mean = std = 0.5; P×K batches with ``n_instances``);
    records whose image does not decode are skipped with one counting warning per pass. The
    loader's workers decode, resize (rounded back to uint8), crop and flip in uint8 and hand
    over uint8 batches (4× less to copy between processes); Lightning's
    ``on_after_batch_transfer`` turns them into normalised float32 on the device
    (:meth:`normalize`, the same arithmetic as ``to_tensor`` + ``Normalize``).
    There are no val/test splits for the module's retrieval metrics: the targets are
    evaluated by :class:`~marginkit.models.verification_targets.VerificationTargets` (which
    train.py attaches) with insightface's protocol, logged as ``val/<target>/accuracy`` etc.

    Args:
        root: the dataset folder.
        rec_prefix: the name of the training files in ``root`` (``train`` for ``train.rec``).
        val_targets: verification set names, or None for every ``.bin`` in ``root``.
        val_every_n_steps: also evaluate the targets every this many optimizer steps.
        image_size: (height, width) the images are resized to (no-op when they have it).
        crop_size: random (train) / centre (eval) crop, or None.
        horizontal_flip: random horizontal flips in training.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        grayscale: decode to one channel.
        batch_size: training batch size.
        eval_batch_size: batch size of the verification sets.
        num_workers: DataLoader worker processes.
        pin_memory: pin batches in page-locked memory.
        persistent_workers: keep training workers between epochs.
        n_instances: K images per identity in each batch (P×K), or None.
        n_folds: folds of the verification protocol (insightface: 10).
        seed: seed of the batch order.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from marginkit.data.recordio import pack_folder
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     for c in range(3):
        ...         Path(folder, "ids", f"id{c}").mkdir(parents=True)
        ...         for i in range(2):
        ...             Image.new("RGB", (8, 8), (80 * c, i, 0)).save(Path(folder, "ids", f"id{c}", f"{i}.png"))
        ...     _ = pack_folder(Path(folder, "ids"), Path(folder, "train"))
        ...     dm = InsightFaceDataModule(folder, image_size=None, batch_size=2, num_workers=0)
        ...     dm.setup("fit")
        ...     x, y = next(iter(dm.train_dataloader()))
        >>> dm.num_classes, tuple(x.shape), tuple(dm.normalize(x).shape), dm.target_names
        (3, (2, 8, 8, 3), (2, 3, 8, 8), [])
    """

    def __init__(
        self,
        root: str,
        rec_prefix: str = "train",
        val_targets: Sequence[str] | None = None,
        val_every_n_steps: int | None = None,
        image_size: Sequence[int] | None = (112, 112),
        crop_size: Sequence[int] | None = None,
        horizontal_flip: bool = True,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        grayscale: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        n_instances: int | None = None,
        n_folds: int = 10,
        seed: int = 0,
    ) -> None:
        pairs_per_fold = 1  # unused: the targets bring their pairs
        super().__init__(**_base_arguments(locals()))
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"`root` must be a path, got {type(root).__name__}")
        if not Path(root).is_dir():
            raise FileNotFoundError(f"`root` {str(root)!r} is not a folder")
        self.root = Path(root)
        self.rec_prefix = str(rec_prefix)
        if val_targets is not None:
            if isinstance(val_targets, str) or not all(isinstance(t, str) for t in val_targets):
                raise TypeError(f"`val_targets` must be a list of names, got {val_targets!r}")
            val_targets = list(val_targets)
        self.val_targets = val_targets
        if val_every_n_steps is not None:
            _check_int("val_every_n_steps", val_every_n_steps, 1)
        self.val_every_n_steps = val_every_n_steps
        self.image_size = None if image_size is None else tuple(image_size)
        self.crop_size = None if crop_size is None else tuple(crop_size)
        self.horizontal_flip = bool(horizontal_flip)
        self.mean, self.std = tuple(mean), tuple(std)
        self.grayscale = bool(grayscale)
        self.transform(True), self.transform(False)  # validate the sizes now
        self._targets: list[VerificationTarget] | None = None

    collate_fn = staticmethod(collate_readable)

    def transform(self, train: bool) -> Callable[[Tensor], Tensor]:
        """The training (``train=True``) or evaluation transform (as the image datamodule's)."""
        return image_transform(
            self.image_size, self.crop_size, self.horizontal_flip, self.mean, self.std, train
        )

    def pixel_pipeline(self) -> PixelPipeline:
        """The training images' decoding and uint8 steps: resize, random crop, random flip."""
        mode = "L" if self.grayscale else "RGB"
        return PixelPipeline(self.image_size, self.crop_size, self.horizontal_flip, mode)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (N, H, W, C) training images as (N, C, H, W) float32 ``(x / 255 - mean) / std``.

        The values of ``to_tensor`` then ``Normalize`` (what evaluation images get), to float32
        rounding.
        """
        mean = torch.tensor(self.mean, dtype=torch.float64).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float64).view(-1, 1, 1)
        # x * (1 / (255 std)) - mean / std: one conversion pass and two in-place passes
        scale = (1.0 / (255.0 * std)).float().to(images.device)
        shift = (-mean / std).float().to(images.device)
        chw = images.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        return chw.mul_(scale).add_(shift)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise a uint8 training batch on the device it was moved to."""
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
            if batch[0].dtype == torch.uint8:
                return type(batch)([self.normalize(batch[0]), *batch[1:]])
        return batch

    @property
    def target_names(self) -> list[str]:
        """The verification sets evaluated: ``val_targets``, or every ``.bin`` of ``root``."""
        return list(self.val_targets) if self.val_targets is not None else find_targets(self.root)

    # ------------------------------------------------------------------------------ splits
    def setup(self, stage: str | None = None) -> None:
        """``fit``: the training records and the targets; ``validate``/``test``: the targets."""
        if stage in (None, "fit") and "train" not in self.datasets:
            self._build("train")
        if self._targets is None:
            self._targets = [self._load_target(name) for name in self.target_names]

    def _build(self, stage: str) -> None:
        data = open_insightface(self.root / self.rec_prefix)
        labels = torch.from_numpy(data.labels)
        if self.n_instances is not None:
            n_classes = int(torch.unique(labels).numel())
            if n_classes < self.batch_size // self.n_instances:
                raise ValueError(
                    f"P×K batches need `batch_size // n_instances` = "
                    f"{self.batch_size // self.n_instances} identities, the data has {n_classes}"
                )
        self._train_labels = labels
        self._num_classes = data.num_classes
        self.datasets["train"] = RecordImageDataset(
            data.records, data.keys, labels, self.pixel_pipeline()
        )

    def _load_target(self, name: str) -> VerificationTarget:
        bin_path, folder = self.root / f"{name}.bin", self.root / name
        if bin_path.is_file():
            images, issame = load_bin(bin_path)
            source = str(bin_path)
        elif (folder / "pairs.txt").is_file():
            images, issame = folder_verification_set(folder)
            source = str(folder / "pairs.txt")
        else:
            raise FileNotFoundError(
                f"`val_targets`: {name!r} is neither {bin_path} nor a folder with pairs.txt "
                f"(the folder has {find_targets(self.root)})"
            )
        mode = "L" if self.grayscale else "RGB"
        dataset = VerificationImages(name, source, images, self.transform(train=False), mode)
        return VerificationTarget(name, dataset, torch.from_numpy(issame))

    def verification_targets(self) -> list[VerificationTarget]:
        """The verification sets, loaded by ``setup`` (in ``target_names`` order)."""
        if self._targets is None:
            raise RuntimeError("the verification targets are loaded by `setup()`: call it first")
        return list(self._targets)

    def target_dataloader(self, target: VerificationTarget, indices: Sequence[int]) -> DataLoader:
        """Batches ``(images, indices)`` of the items ``indices`` of ``target`` (one rank's share)."""
        subset = torch.utils.data.Subset(target.images, list(indices))
        return DataLoader(
            subset,
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def _make_loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        return ReportingDataLoader(dataset, **kwargs, **self._loader_kwargs())

    # ------------------------------------------------------------------- no retrieval splits
    def val_dataloader(self) -> list:  # type: ignore[override]
        """None: the targets are evaluated by the ``VerificationTargets`` callback."""
        return []

    def test_dataloader(self) -> list:  # type: ignore[override]
        """None: the targets are evaluated by the ``VerificationTargets`` callback."""
        return []

    def verification_pairs(self, stage: str) -> None:
        """No pair list for the module's own evaluation (the targets carry theirs)."""
        return None

    def labels(self, stage: str) -> Tensor:
        """The (N,) int64 labels of the training records (``stage="train"``)."""
        return self._dataset(stage).labels  # type: ignore[attr-defined]

    def _raw_features(self, stage: str) -> None:
        return None
