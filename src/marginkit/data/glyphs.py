"""An open-set benchmark from the fonts matplotlib ships: classes are characters, instances fonts.

No download: :func:`~marginkit.data.glyph_render.load_glyphs` renders about 3,400 Unicode
characters in the 6–16 faces that draw them (homoglyphs merged) once, and caches them. Train,
validation and test characters are disjoint (the Omniglot / Stanford-Online-Products setting).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from marginkit.data.base import EmbeddingDataModule, _base_arguments, _check_fraction, _check_int
from marginkit.data.glyph_render import GLYPH_FACES, GlyphSet, load_glyphs


def augment_glyphs(
    images: Tensor,
    generator: torch.Generator | None = None,
    rotation: float = 0.12,
    scale: float = 0.1,
    shear: float = 0.1,
    translation: float = 0.06,
    stroke_p: float = 0.5,
    noise: float = 0.05,
) -> Tensor:
    """Random small affine maps, stroke thickening/thinning and noise on (N, 1, H, W) images.

    Per image: rotation by θ ~ U(−``rotation``, ``rotation``) radians, isotropic scale
    1 + U(−``scale``, ``scale``), horizontal shear U(−``shear``, ``shear``), a shift of
    U(−``translation``, ``translation``) of the image side (bilinear, zero fill); then with
    probability ``stroke_p`` a 3×3 grey dilation (thicker strokes) or erosion (thinner), each
    half the time; then Gaussian noise of standard deviation ``noise``, clamped to [0, 1].
    Intensities are in [0, 1]; all draws come from ``generator`` (torch's global one when None).

    Example:
        >>> images = torch.zeros(2, 1, 8, 8)
        >>> images[:, :, 2:6, 3:5] = 1.0
        >>> out = augment_glyphs(images, torch.Generator().manual_seed(0))
        >>> out.shape, bool(out.min() >= 0), bool(out.max() <= 1)
        (torch.Size([2, 1, 8, 8]), True, True)
    """
    n = images.shape[0]

    def uniform(bound: float) -> Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * bound

    angle, zoom = uniform(rotation), 1 + uniform(scale)
    skew, shift = (
        uniform(shear),
        torch.stack([uniform(2 * translation), uniform(2 * translation)], 1),
    )
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # The inverse map (output -> input coordinates in [-1, 1]), as affine_grid expects.
    theta = torch.stack(
        [
            torch.stack([cos, -sin + skew * cos, shift[:, 0]], 1),
            torch.stack([sin, cos, shift[:, 1]], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    stroke = torch.rand(n, generator=generator)
    thicker = (stroke < stroke_p / 2).view(n, 1, 1, 1)
    thinner = ((stroke >= stroke_p / 2) & (stroke < stroke_p)).view(n, 1, 1, 1)
    if bool(thicker.any()) or bool(thinner.any()):
        dilated = F.max_pool2d(out, 3, stride=1, padding=1)
        eroded = -F.max_pool2d(-out, 3, stride=1, padding=1)
        # Half a pixel's worth: blend, so a 1-pixel stroke is thinned, not erased.
        out = torch.where(
            thicker, (out + dilated) / 2, torch.where(thinner, (out + eroded) / 2, out)
        )
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=generator, dtype=out.dtype)
    return out.clamp_(0.0, 1.0)


class _AugmentedGlyphs(Dataset):
    """Training items ``(image, label)``: a fresh augmented, normalised view of each glyph."""

    def __init__(self, images: Tensor, labels: Tensor, mean: float, std: float, augment: bool):
        self.images, self.labels = images, labels
        self.mean, self.std, self.augment = mean, std, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        """A batch's items, augmented together (the DataLoader's batched fetch)."""
        rows = torch.as_tensor(indices, dtype=torch.long)
        images = self.images[rows].float().div_(255.0)
        if self.augment:
            images = augment_glyphs(images)
        images = (images - self.mean) / self.std
        return list(zip(images.unbind(0), self.labels[rows].unbind(0), strict=True))


class GlyphsDataModule(EmbeddingDataModule):
    """Unicode characters drawn by matplotlib's fonts, split into disjoint train/val/test classes.

    The images (:func:`~marginkit.data.glyph_render.load_glyphs`: one per (character, face),
    ``image_size``² grey, about 3,400 classes of 6–16 faces) are rendered once and cached in
    ``cache_dir`` (None: ``$MARGINKIT_CACHE_DIR``, else the user's cache directory). The classes
    are shuffled with ``seed`` and cut into ``val_fraction`` and ``test_fraction`` of them for
    validation and test, the rest for training (labels remapped to ``0..num_classes-1``).
    Training draws a new augmented view of every image each time
    (:func:`augment_glyphs`: small affine, stroke thickening/thinning, noise); validation and
    test use one fixed augmented view per (character, face), drawn from ``seed``, so every
    epoch and every model sees the same evaluation images. Retrieval is leave-one-out over a
    split; verification uses a seeded balanced pair list.

    Inputs are (1, image_size, image_size) tensors, ``(pixels - mean) / std`` with the mean and
    standard deviation of the training images. The raw-input baseline
    (:meth:`baseline_features`) is the evaluation views standardised per pixel with the training
    split's statistics, as the digits do.

    Args:
        image_size: side of the square images.
        val_fraction: fraction of the classes used for validation, in (0, 1).
        test_fraction: fraction of the classes used for test, in (0, 1).
        augment: augment the training images (False: the clean renders).
        min_fonts: the fewest faces a class must have.
        faces: the font files (stems in matplotlib's ``fonts/ttf``) to draw with.
        cache_dir: where the renders are cached (None: the default, see above).
        max_code_point: keep only the characters up to this code point (None: all; ``0x24F``,
            the Latin blocks, gives a few hundred classes for quick experiments and tests).
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        num_workers: DataLoader workers.
        pin_memory: pin batches in page-locked memory.
        persistent_workers: keep workers alive between epochs (with ``num_workers > 0``).
        n_instances: K items per class in each training batch (P×K batches), or None.
        n_folds: folds of the verification pair lists.
        pairs_per_fold: same (and different) pairs per fold.
        seed: seed of the class split, the evaluation views, the P×K sampler and the pair lists.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     dm = GlyphsDataModule(image_size=16, max_code_point=0x24F, cache_dir=folder)
        ...     dm.setup("fit")
        >>> dm.num_classes > 100, tuple(dm.datasets["train"][0][0].shape)
        (True, (1, 16, 16))
    """

    def __init__(
        self,
        image_size: int = 32,
        val_fraction: float = 0.1,
        test_fraction: float = 0.3,
        augment: bool = True,
        min_fonts: int = 6,
        faces: Sequence[str] = GLYPH_FACES,
        cache_dir: str | os.PathLike | None = None,
        max_code_point: int | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        n_instances: int | None = None,
        n_folds: int = 10,
        pairs_per_fold: int = 300,
        seed: int = 0,
    ) -> None:
        super().__init__(**_base_arguments(locals()))
        self.image_size = _check_int("image_size", image_size, 8)
        self.val_fraction = _check_fraction("val_fraction", val_fraction)
        self.test_fraction = _check_fraction("test_fraction", test_fraction)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"`val_fraction` + `test_fraction` must be < 1 (classes must be left to train "
                f"on), got {self.val_fraction} + {self.test_fraction}"
            )
        if not isinstance(augment, bool):
            raise TypeError(f"`augment` must be a bool, got {type(augment).__name__}")
        self.augment = augment
        self.faces = tuple(faces)
        self.min_fonts = _check_int("min_fonts", min_fonts, 2)
        if self.min_fonts > len(self.faces):
            raise ValueError(
                f"`min_fonts` ({min_fonts}) must be at most the number of `faces` "
                f"({len(self.faces)})"
            )
        self.cache_dir = cache_dir
        if max_code_point is not None:
            _check_int("max_code_point", max_code_point, 0x21)
        self.max_code_point = max_code_point
        self.glyphs: GlyphSet | None = None
        self._labels: dict[str, Tensor] = {}
        self._raw: dict[str, Tensor] = {}

    def _build(self, stage: str) -> None:
        if self.datasets:  # the three splits are built together
            return
        glyphs = load_glyphs(
            image_size=self.image_size,
            min_fonts=self.min_fonts,
            faces=self.faces,
            cache_dir=self.cache_dir,
            max_code_point=self.max_code_point,
        )
        self.glyphs = glyphs
        images = torch.from_numpy(glyphs.images)
        classes = torch.from_numpy(glyphs.labels)
        n_classes = len(glyphs.classes)
        order = torch.randperm(n_classes, generator=torch.Generator().manual_seed(self.seed))
        n_val = max(1, math.floor(self.val_fraction * n_classes))
        n_test = max(1, math.floor(self.test_fraction * n_classes))
        split_classes = {
            "val": order[:n_val].sort().values,
            "test": order[n_val : n_val + n_test].sort().values,
            "train": order[n_val + n_test :].sort().values,
        }
        if self.n_instances is not None and len(split_classes["train"]) < (
            self.batch_size // self.n_instances
        ):
            raise ValueError(
                f"`batch_size // n_instances` ({self.batch_size // self.n_instances} classes per "
                f"batch) must be at most the number of training classes "
                f"({len(split_classes['train'])})"
            )
        train_mask = torch.isin(classes, split_classes["train"])
        train_images = images[train_mask]
        clean = train_images.float().div_(255.0)
        mean, std = float(clean.mean()), float(clean.std())
        pixel_mean, pixel_std = clean.mean(0).flatten(), clean.std(0).flatten().clamp(min=1e-2)
        remap = torch.full((n_classes,), -1, dtype=torch.long)
        remap[split_classes["train"]] = torch.arange(len(split_classes["train"]))
        self._train_labels = remap[classes[train_mask]]
        self._num_classes = len(split_classes["train"])
        self._labels["train"] = self._train_labels
        self._train_classes = split_classes["train"]
        self.datasets["train"] = _AugmentedGlyphs(
            train_images.unsqueeze(1), self._train_labels, mean, std, self.augment
        )
        generator = torch.Generator().manual_seed(self.seed + 1)
        for split in ("val", "test"):
            mask = torch.isin(classes, split_classes[split])
            views = augment_glyphs(images[mask].unsqueeze(1).float().div_(255.0), generator)
            labels = classes[mask]  # evaluation labels keep the global class ids
            self._labels[split] = labels
            self._raw[split] = (views.flatten(1) - pixel_mean) / pixel_std
            self.datasets[split] = TensorDataset(
                (views - mean) / std, labels, torch.arange(len(labels))
            )

    def labels(self, stage: str) -> Tensor:
        """The labels of split ``stage``: remapped ids for ``"train"``, global class ids otherwise."""
        self._dataset(stage)
        return self._labels[stage]

    def class_names(self, stage: str) -> list[str]:
        """The characters of each label of split ``stage`` (homoglyphs merged: ``"BΒВ"``).

        ``class_names(stage)[label]`` names a label of that split: training labels are remapped
        ids, evaluation labels global class ids (so the list holds every class).
        """
        self._dataset(stage)
        assert self.glyphs is not None
        if stage == "train":
            return [self.glyphs.classes[c] for c in self._train_classes.tolist()]
        return list(self.glyphs.classes)

    def _raw_features(self, stage: str) -> Tensor:
        return self._raw[stage]
