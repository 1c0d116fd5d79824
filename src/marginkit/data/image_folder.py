"""Folders of images, one sub-folder per identity or class, and verification pair files over them."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from marginkit._validation import check_option
from marginkit.data.base import (
    EVAL_STAGES,
    EmbeddingDataModule,
    _base_arguments,
    _check_int,
    config_key,
    fits_baseline_budget,
    plural,
)
from marginkit.data.image_files import (
    IMAGE_EXTENSIONS,
    ClassFolders,
    ImageFileDataset,
    ReportingDataLoader,
    collate_readable,
    is_readable_image,
    scan_class_folders,
    scan_image_folder,
)
from marginkit.data.pairs import (
    PAIR_FORMATS,
    VerificationPairs,
    pair_file_folds,
    read_pairs,
    sample_pairs,
)
from marginkit.data.transforms import image_transform

# The file layer lives in marginkit.data.image_files; its names stay importable from here.
_ReportingLoader = ReportingDataLoader
__all__ = [
    "IMAGE_EXTENSIONS",
    "ClassFolders",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "ReportingDataLoader",
    "collate_readable",
    "is_readable_image",
    "scan_class_folders",
    "scan_image_folder",
]


def _seq(name: str, value: Sequence[Any] | None) -> tuple[Any, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError(f"`{name}` must be a list, got {type(value).__name__}")
    return tuple(value)


class ImageFolderDataModule(EmbeddingDataModule):
    """Train on a folder of class sub-folders, evaluate on unseen classes or on a pair file.

    The layout of CASIA-WebFace, CUB-200 or Stanford Online Products: ``root/<class>/<image>``
    (images found recursively inside each class folder, decoded with Pillow). Where each split
    comes from:

    - **train**: ``train_root``, or ``root`` without the classes held out for val/test.
    - **val** / **test**: a pair file (``val_pairs`` / ``test_pairs``, LFW ``pairs.txt`` or CSV
      read by :func:`~marginkit.data.read_pairs`, paths relative to ``val_root``/``test_root``,
      else ``root``); else a separate folder ``val_root`` / ``test_root``; else a seeded
      ``val_ratio`` / ``test_ratio`` fraction of ``root``'s classes (at least one class each),
      disjoint from the training classes and from each other (open-set evaluation).

    Labels: training classes are numbered ``0..num_classes-1`` by sorted folder name
    (:attr:`num_classes` is known after ``setup("fit")``); evaluation labels number the split's
    own classes (the parent folder of each image of a pair file). A pair-file split holds the
    images the file names, in order of first appearance; its :meth:`verification_pairs` are the
    file's pairs in file order, cut into ``n_folds`` folds (default: the LFW header's count,
    else 10). Other evaluation splits get a seeded balanced pair list
    (:func:`~marginkit.data.sample_pairs`, None with a warning when the split is too small).

    Transforms (:meth:`transform`): training resizes to ``image_size``, random-crops
    ``crop_size``, flips horizontally and normalises; evaluation resizes, centre-crops and
    normalises (insightface's recipe on aligned 112×112 faces: no crop, flip, mean = std = 0.5).
    Override :meth:`transform` in a subclass for another pipeline (e.g. ``torchvision``'s).

    Unreadable images never stop an epoch: by default a file that fails to decode is dropped
    from its batch, and one ``RuntimeWarning`` counts them at the end of the pass (a batch whose
    items all fail is ``None``). With ``verify_images=true`` every image is decoded once when
    its split is built (threads) and the unreadable ones are removed from the split, with one
    warning counting them (and the pairs that named them); evaluation splits then keep every
    index they list.

    Before training (``setup("fit")``), an evaluation split of fewer than 2 classes is refused
    with a ``ValueError`` naming the key that made it (``data.val_ratio`` for a held-out
    fraction, ``data.val_root``, ``data.val_pairs``), as is a training split that fills no
    batch (``data.batch_size``) and a pair file that does not exist (``FileNotFoundError``) or
    does not parse (the file and line). :meth:`summary` (logged when the loaders are first
    asked for) counts each split's classes and images, the training batches of an epoch, the
    unreadable images found so far, the class folders without images and the classes under
    ``min_images_per_class``.

    The raw-input baseline (:meth:`baseline_features`) is the evaluation transform's output
    average-pooled to ``baseline_size`` × ``baseline_size`` and flattened (one extra pass over
    the split; rows of unreadable images are NaN); None when ``baseline_size`` is None or the
    features would pass 1 GiB.

    Args:
        root: folder of class sub-folders, split by class into train/val/test.
        train_root: separate training folder (instead of ``root``'s remaining classes).
        val_root: separate validation folder, or the root of ``val_pairs``' paths.
        test_root: separate test folder, or the root of ``test_pairs``' paths.
        val_pairs: a pair file for validation.
        test_pairs: a pair file for test (e.g. LFW's ``pairs.txt``).
        pairs_format: ``"lfw"``, ``"csv"`` or None (guessed, see ``read_pairs``).
        val_ratio: fraction of ``root``'s classes for validation, in [0, 1).
        test_ratio: fraction of ``root``'s classes for test, in [0, 1).
        min_images_per_class: classes of a folder with fewer images are left out.
        image_size: (height, width) the images are resized to, or None to keep their size.
        crop_size: (height, width) of the random (train) / centre (eval) crop, or None.
        horizontal_flip: random horizontal flips in training.
        mean: per-channel mean of the normalisation (pixels in [0, 1]).
        std: per-channel standard deviation of the normalisation.
        grayscale: decode to one channel.
        extensions: image file suffixes (default: common Pillow formats).
        verify_images: decode every image when a split is built and drop unreadable ones.
        baseline_size: side of the pooled images of the raw-input baseline, or None.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        num_workers: DataLoader worker processes decoding images.
        pin_memory: pin batches in page-locked memory.
        persistent_workers: keep workers alive between epochs (with ``num_workers > 0``).
        n_instances: K images per class in each training batch (P×K batches), or None.
        n_folds: folds of the accuracy protocol (None: a pair file's LFW header, else 10).
        pairs_per_fold: the most same (and different) pairs per fold of the seeded pair lists.
        seed: seed of the class split, the P×K sampler and the seeded pair lists.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as root:
        ...     for c in range(8):
        ...         Path(root, f"id{c}").mkdir()
        ...         for i in range(3):
        ...             Image.new("RGB", (20, 20), (30 * c, i, 0)).save(Path(root, f"id{c}", f"{i}.png"))
        ...     Path(root, "no_images").mkdir()
        ...     dm = ImageFolderDataModule(root, val_ratio=0.25, test_ratio=0.25, image_size=(16, 16),
        ...                                batch_size=5, num_workers=0, pairs_per_fold=1, n_folds=2)
        ...     dm.setup("fit")
        ...     x, y = next(iter(dm.train_dataloader()))
        ...     x, y, index = next(iter(dm.val_dataloader()))
        >>> dm.num_classes, tuple(x.shape), index.tolist()
        (4, (6, 3, 16, 16), [0, 1, 2, 3, 4, 5])
        >>> dm.summary()
        'train 4 classes / 12 images -> 2 batches of 5 (2 dropped each epoch), val 2 classes / 6 images, test 2 classes / 6 images, 1 empty folder'
    """

    def __init__(
        self,
        root: str | None = None,
        train_root: str | None = None,
        val_root: str | None = None,
        test_root: str | None = None,
        val_pairs: str | None = None,
        test_pairs: str | None = None,
        pairs_format: str | None = None,
        val_ratio: float = 0.1,
        test_ratio: float = 0.1,
        min_images_per_class: int = 1,
        image_size: Sequence[int] | None = (112, 112),
        crop_size: Sequence[int] | None = None,
        horizontal_flip: bool = True,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        grayscale: bool = False,
        extensions: Sequence[str] | None = None,
        verify_images: bool = False,
        baseline_size: int | None = 16,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 4,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        n_instances: int | None = None,
        n_folds: int | None = None,
        pairs_per_fold: int = 300,
        seed: int = 0,
    ) -> None:
        # n_folds=None: a pair file's LFW header decides; the seeded pair lists use 10 folds.
        super().__init__(**_base_arguments(locals(), n_folds=10 if n_folds is None else n_folds))
        self.roots = {"train": train_root, "val": val_root, "test": test_root}
        self.root = root
        self.pair_files = {"val": val_pairs, "test": test_pairs}
        for name, value in (
            ("root", root),
            ("train_root", train_root),
            ("val_root", val_root),
            ("test_root", test_root),
            ("val_pairs", val_pairs),
            ("test_pairs", test_pairs),
        ):
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"`{name}` must be a path or None, got {type(value).__name__}")
        if root is None and all(path is None for path in self.roots.values()):
            raise ValueError(
                "give `root` (a folder of class sub-folders) or `train_root`/`val_root`/`test_root`"
            )
        check_option("pairs_format", pairs_format, (*PAIR_FORMATS, None))
        self.pairs_format = pairs_format
        self.ratios = {}
        for name, value in (("val_ratio", val_ratio), ("test_ratio", test_ratio)):
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value!r}")
            self.ratios[name[: -len("_ratio")]] = float(value)
        if val_ratio + test_ratio >= 1.0:
            raise ValueError(
                f"`val_ratio` + `test_ratio` must be < 1 (classes are left to train), got "
                f"{val_ratio} + {test_ratio}"
            )
        self.min_images_per_class = _check_int("min_images_per_class", min_images_per_class, 1)
        self.image_size = _seq("image_size", image_size)
        self.crop_size = _seq("crop_size", crop_size)
        self.horizontal_flip = bool(horizontal_flip)
        self.mean, self.std = _seq("mean", mean), _seq("std", std)
        self.grayscale = bool(grayscale)
        channels = 1 if grayscale else 3
        if len(self.mean) not in (1, channels) or len(self.std) not in (1, channels):  # type: ignore[arg-type]
            raise ValueError(
                f"`mean` and `std` must have 1 or {channels} values (one per channel), got "
                f"{list(mean)} and {list(std)}"
            )
        self.extensions = _seq("extensions", extensions) or IMAGE_EXTENSIONS
        self.verify_images = bool(verify_images)
        if baseline_size is not None:
            _check_int("baseline_size", baseline_size, 1)
        self.baseline_size = baseline_size
        self.fold_count = None if n_folds is None else self.n_folds
        self.transform(train=True), self.transform(train=False)  # validate the sizes now
        self._class_names: dict[str, list[str]] = {}
        self._scans: dict[str, dict[str, list[str]]] = {}
        # Per scanned root: (class folders without images, classes under min_images_per_class).
        self._left_out: dict[str, tuple[int, int]] = {}
        self._n_dropped: dict[str, int] = {}  # unreadable images dropped by verify_images

    collate_fn = staticmethod(collate_readable)
    item_noun = "image"

    # ------------------------------------------------------------------------------ sources
    def transform(self, train: bool) -> Callable[[Tensor], Tensor]:
        """The transform of training (``train=True``) or evaluation images (see the class doc)."""
        return image_transform(
            self.image_size,
            self.crop_size,
            self.horizontal_flip,
            self.mean,
            self.std,
            train,  # type: ignore[arg-type]
        )

    def _scan(self, root: str) -> dict[str, list[str]]:
        """The classes of ``root`` with at least ``min_images_per_class`` images (scanned once)."""
        if root not in self._scans:
            found = scan_class_folders(root, self.extensions)
            kept = {
                name: paths
                for name, paths in found.images.items()
                if len(paths) >= self.min_images_per_class
            }
            if not kept:
                raise ValueError(
                    f"no class of {root!r} has `min_images_per_class` "
                    f"({self.min_images_per_class}) images"
                )
            self._scans[root] = kept
            self._left_out[root] = (len(found.empty), len(found.images) - len(kept))
        return self._scans[root]

    def _source(self, split: str) -> str:
        if split != "train" and self.pair_files[split] is not None:
            return "pairs"
        if self.roots[split] is not None:
            return "root"
        return "ratio"

    def _ratio_split(self) -> dict[str, list[str]]:
        """The class names of each split carved out of ``root`` (seeded, disjoint)."""
        if self.root is None:
            raise ValueError("`root` is required: a split has no `*_root` or `*_pairs` of its own")
        names = list(self._scan(self.root))
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(self.seed))
        shuffled = [names[i] for i in order.tolist()]
        split: dict[str, list[str]] = {}
        start = 0
        for stage in EVAL_STAGES:
            if self._source(stage) == "ratio":
                count = max(1, round(self.ratios[stage] * len(names)))
                if self.ratios[stage] == 0.0:
                    raise ValueError(
                        f"the {stage} split needs `{stage}_ratio` > 0, `{stage}_root` or "
                        f"`{stage}_pairs`"
                    )
                split[stage] = sorted(shuffled[start : start + count])
                start += count
        split["train"] = sorted(shuffled[start:])
        if self._source("train") == "ratio" and not split["train"]:
            raise ValueError(
                f"`root` has {len(names)} classes: none is left for training after the "
                f"held-out ones; lower `val_ratio`/`test_ratio`"
            )
        return split

    def _folder_split(self, split: str) -> tuple[list[str], list[str], list[int]]:
        """(class names, image paths, labels) of a split made of class folders."""
        if self._source(split) == "root":
            classes = self._scan(self.roots[split])  # type: ignore[arg-type]
            names = list(classes)
        else:
            classes = self._scan(self.root)  # type: ignore[arg-type]
            names = self._ratio_split()[split]
        paths, labels = [], []
        for label, name in enumerate(names):
            paths += classes[name]
            labels += [label] * len(classes[name])
        return names, paths, labels

    def _pair_split(self, split: str) -> tuple[list[str], list[str], list[int], list[Any]]:
        pair_file = self.pair_files[split]
        root = self.roots[split] or self.root
        if root is None:
            raise ValueError(
                f"`{split}_pairs` needs `{split}_root` (or `root`): its images' folder"
            )
        key = config_key(f"{split}_pairs")
        if not os.path.isfile(pair_file):  # type: ignore[arg-type]
            raise FileNotFoundError(f"{key} {str(pair_file)!r} does not exist or is not a file")
        try:
            pairs = read_pairs(pair_file, self.pairs_format)  # type: ignore[arg-type]
        except ValueError as error:  # the message names the file and the line
            raise ValueError(f"{key}: {error}") from error
        relative: dict[str, int] = {}
        for pair in pairs:
            for path in (pair.first, pair.second):
                relative.setdefault(path, len(relative))
        paths = [os.path.join(root, path) for path in relative]
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) named by `{split}_pairs` {str(pair_file)!r} are not in "
                f"{str(root)!r}, e.g. {missing[:3]}"
            )
        parents = [os.path.dirname(path) or path for path in relative]
        names = sorted(set(parents))
        label_of = {name: label for label, name in enumerate(names)}
        index_pairs = [(relative[p.first], relative[p.second], p.issame) for p in pairs]
        return names, paths, [label_of[parent] for parent in parents], index_pairs

    # ------------------------------------------------------------------------------- splits
    def _build(self, stage: str) -> None:
        index_pairs = None
        if self._source(stage) == "pairs":
            names, paths, labels, index_pairs = self._pair_split(stage)
        else:
            names, paths, labels = self._folder_split(stage)
        if self.verify_images:
            paths, labels, index_pairs = self._drop_unreadable(stage, paths, labels, index_pairs)
        label_tensor = torch.tensor(labels, dtype=torch.long)
        if stage == "train":
            self._train_labels = label_tensor
            self._num_classes = len(names)
        self._class_names[stage] = names
        self.datasets[stage] = ImageFileDataset(
            paths,
            label_tensor,
            self.transform(train=stage == "train"),
            grayscale=self.grayscale,
            with_index=stage != "train",
            name=stage,
        )
        if index_pairs is not None:
            self._pairs[stage] = self._pairs_from_file(stage, index_pairs)

    def _drop_unreadable(
        self, stage: str, paths: list[str], labels: list[int], index_pairs: list[Any] | None
    ) -> tuple[list[str], list[int], list[Any] | None]:
        with ThreadPoolExecutor(max_workers=max(1, self.num_workers)) as pool:
            readable = list(pool.map(is_readable_image, paths))
        if all(readable):
            return paths, labels, index_pairs
        new_index = {}
        for old, ok in enumerate(readable):
            if ok:
                new_index[old] = len(new_index)
        bad = [path for path, ok in zip(paths, readable, strict=True) if not ok]
        self._n_dropped[stage] = len(bad)
        message = f"dropped {len(bad)} unreadable image(s) of the {stage} split (e.g. {bad[:3]})"
        if index_pairs is not None:
            kept = [
                (new_index[a], new_index[b], same)
                for a, b, same in index_pairs
                if a in new_index and b in new_index
            ]
            message += f" and the {len(index_pairs) - len(kept)} pair(s) that name them"
            index_pairs = kept
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        keep = list(new_index)
        return [paths[i] for i in keep], [labels[i] for i in keep], index_pairs

    def _pairs_from_file(self, stage: str, index_pairs: list[Any]) -> VerificationPairs | None:
        if not index_pairs:
            return None
        n_folds = self.fold_count or pair_file_folds(self.pair_files[stage]) or 10  # type: ignore[arg-type]
        first, second, issame = zip(*index_pairs, strict=True)
        return VerificationPairs(
            torch.tensor(first, dtype=torch.long),
            torch.tensor(second, dtype=torch.long),
            torch.tensor(issame, dtype=torch.bool),
            max(2, n_folds),
        )

    def _seeded_pairs(self, stage: str) -> VerificationPairs | None:
        try:
            return sample_pairs(self.labels(stage), self.n_folds, self.pairs_per_fold, self.seed)
        except ValueError as error:
            warnings.warn(f"no verification pairs for the {stage} split: {error}", stacklevel=3)
            return None

    def _make_loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        return ReportingDataLoader(dataset, **kwargs, **self._loader_kwargs())

    # ------------------------------------------------------------------------ setup checks
    def _too_few_classes(self, stage: str, n_classes: int) -> str:
        need = "retrieval and verification need at least 2"
        source = self._source(stage)
        if source == "pairs":
            return (
                f"{config_key(f'{stage}_pairs')} ({str(self.pair_files[stage])!r}) names images "
                f"of {plural(n_classes, 'folder')} (an image's folder is its class): {need}"
            )
        if source == "root":
            return (
                f"{config_key(f'{stage}_root')} ({str(self.roots[stage])!r}) has "
                f"{plural(n_classes, 'class folder')} with images: {need}"
            )
        n_total = len(self._scan(self.root))  # type: ignore[arg-type]
        return (
            f"{config_key(f'{stage}_ratio')} ({self.ratios[stage]}) holds out "
            f"{n_classes} of the {n_total} classes of {config_key('root')} for the {stage} "
            f"split: {need}; raise it, or give {config_key(f'{stage}_root')} or "
            f"{config_key(f'{stage}_pairs')}"
        )

    def _split_note(self, stage: str) -> str:
        pairs = self._pairs.get(stage)
        if self._source(stage) != "pairs" or pairs is None:
            return ""
        name = os.path.basename(str(self.pair_files[stage]))
        return f" ({plural(len(pairs.issame), 'pair')} of {name})"

    def _summary_notes(self) -> list[str]:
        n_unreadable = sum(self._n_dropped.values()) + sum(
            int(dataset.unreadable.sum())  # type: ignore[attr-defined]
            for dataset in self.datasets.values()
        )
        n_empty = sum(empty for empty, _ in self._left_out.values())
        n_small = sum(small for _, small in self._left_out.values())
        notes = []
        if n_unreadable:
            notes.append(plural(n_unreadable, "unreadable image"))
        if n_empty:
            notes.append(plural(n_empty, "empty folder"))
        if n_small:
            notes.append(
                f"{plural(n_small, 'class', 'classes')} under "
                f"{config_key('min_images_per_class')} ({self.min_images_per_class}) left out"
            )
        return notes

    # ----------------------------------------------------------------------------- accessors
    def labels(self, stage: str) -> Tensor:
        """The (N,) int64 labels of split ``stage`` (``"train"``, ``"val"``, ``"test"``)."""
        return self._dataset(stage).labels  # type: ignore[attr-defined]

    def paths(self, stage: str) -> list[str]:
        """The image files of split ``stage``, in dataset order (what ``embed.py`` writes)."""
        return list(self._dataset(stage).paths)  # type: ignore[attr-defined]

    def class_names(self, stage: str) -> list[str]:
        """The class (folder) name of each label of split ``stage``."""
        self._dataset(stage)
        return list(self._class_names[stage])

    def _raw_features(self, stage: str) -> Tensor | None:
        if self.baseline_size is None:
            return None
        dataset = self._dataset(stage)
        channels = 1 if self.grayscale else 3
        n_features = channels * self.baseline_size**2
        if not fits_baseline_budget(len(dataset), n_features):  # type: ignore[arg-type]
            return None
        features = torch.full((len(dataset), n_features), float("nan"))  # type: ignore[arg-type]
        loader = self.val_dataloader() if stage == "val" else self.test_dataloader()
        for batch in loader:
            if batch is None:
                continue
            inputs, _, indices = batch
            pooled = F.adaptive_avg_pool2d(inputs.float(), self.baseline_size)
            features[indices] = pooled.flatten(1)
        return features
