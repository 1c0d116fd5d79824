"""Verification pair lists: LFW ``pairs.txt`` / CSV readers and index pairs for evaluation.

:func:`read_pairs` reads a pair file as path pairs; :class:`VerificationPairs` is what a
datamodule hands to the evaluation loop: the pairs as indices into one evaluation split, with the
number of folds of the accuracy protocol; :func:`sample_pairs` draws a fixed, seeded, balanced
pair list from a split's labels when there is no pair file.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

PAIR_FORMATS = ("lfw", "csv")
_TRUE = ("1", "true")
_FALSE = ("0", "false")


class Pair(NamedTuple):
    """One verification pair: two image paths (or ids) and whether they show the same identity.

    A ``NamedTuple``, so ``first, second, issame = pair`` works as well as ``pair.issame``.
    """

    first: str
    second: str
    issame: bool


def lfw_image_id(name: str, number: int) -> str:
    """The path of image ``number`` of ``name`` in the LFW layout.

    Example:
        >>> lfw_image_id("Abel_Pacheco", 1)
        'Abel_Pacheco/Abel_Pacheco_0001.jpg'
    """
    return f"{name}/{name}_{number:04d}.jpg"


def read_pairs(path: str | Path, format: str | None = None) -> list[Pair]:
    """Read a verification pair list as :class:`Pair` ``(first, second, issame)`` tuples.

    Two formats:

    - ``"lfw"`` (LFW's ``pairs.txt``, ``pairsDevTrain.txt``…): an optional header line, either
      ``folds<TAB>pairs_per_fold`` (``10  300``: each fold lists that many same-person pairs then as
      many different-person pairs) or just a pair count (``1100``); then lines
      ``name<TAB>n1<TAB>n2`` (same person) and ``name1<TAB>n1<TAB>name2<TAB>n2`` (different
      persons), fields separated by tabs or spaces. Images become LFW-relative paths
      ``name/name_000n.jpg`` (see :func:`lfw_image_id`); join them with your LFW root. When the
      header is present the number of pairs must match it.
    - ``"csv"``: rows ``path1,path2,issame`` with ``issame`` in ``0/1/true/false`` (any case),
      and an optional header row (a first row whose ``issame`` field is none of these).

    The pairs keep the file's order, so the LFW folds are contiguous runs of
    ``2 × pairs_per_fold`` pairs (what :class:`~marginkit.metrics.VerificationMetrics`'s
    ``n_folds=10`` expects). Blank lines are skipped.

    Args:
        path: the pair list.
        format: ``"lfw"``, ``"csv"`` or None: ``"csv"`` for a ``.csv`` file, otherwise ``"csv"``
            when the first non-blank line has a comma, ``"lfw"`` when it does not.

    Returns:
        The pairs, in file order.

    Raises:
        ValueError: a line that does not parse (the message gives its number and text), a pair
            count that disagrees with the LFW header, an unknown ``format``, or no pairs.

    Example:
        >>> import tempfile, os
        >>> text = "1\\t1\\nAbel_Pacheco\\t1\\t4\\nAbdel_Madi_Shabneh\\t1\\tDean_Barker\\t1\\n"
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "pairs.txt")
        ...     with open(path, "w") as file:
        ...         _ = file.write(text)
        ...     pairs = read_pairs(path)
        >>> pairs[0]
        Pair(first='Abel_Pacheco/Abel_Pacheco_0001.jpg', second='Abel_Pacheco/Abel_Pacheco_0004.jpg', issame=True)
        >>> pairs[1].issame
        False
    """
    if format is not None and format not in PAIR_FORMATS:
        raise ValueError(f"`format` must be one of {PAIR_FORMATS} or None, got {format!r}")
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    if format is None:
        first_line = next((line for line in text.splitlines() if line.strip()), "")
        format = "csv" if path.suffix.lower() == ".csv" or "," in first_line else "lfw"
    pairs = _parse_csv(text, path) if format == "csv" else _parse_lfw(text, path)
    if not pairs:
        raise ValueError(f"`path` {str(path)!r} holds no pairs")
    return pairs


def _bad_line(path: Path, number: int, line: str, why: str) -> ValueError:
    return ValueError(f"{path}: line {number}: {why}: {line.strip()!r}")


def _parse_lfw(text: str, path: Path) -> list[Pair]:
    pairs: list[Pair] = []
    expected: int | None = None
    header_line = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if not pairs and expected is None and len(fields) <= 2 and all(f.isdigit() for f in fields):
            counts = [int(f) for f in fields]
            expected = 2 * counts[0] * (counts[1] if len(counts) == 2 else 1)
            header_line = number
            continue
        if len(fields) == 3:
            name, first, second = fields
            issame = True
            other = name
        elif len(fields) == 4:
            name, first, other, second = fields
            issame = False
        else:
            raise _bad_line(
                path, number, line, f"expected 3 fields (same) or 4 (different), got {len(fields)}"
            )
        numbers = []
        for field in (first, second):
            if not field.isdigit() or int(field) < 1:
                raise _bad_line(path, number, line, f"image number {field!r} is not an int >= 1")
            numbers.append(int(field))
        for person in (name, other):
            if person.isdigit():
                raise _bad_line(path, number, line, f"person name {person!r} is a number")
        pairs.append(Pair(lfw_image_id(name, numbers[0]), lfw_image_id(other, numbers[1]), issame))
    if expected is not None and len(pairs) != expected:
        raise ValueError(
            f"{path}: line {header_line}: the header announces {expected} pairs, "
            f"the file lists {len(pairs)}"
        )
    return pairs


def _parse_csv(text: str, path: Path) -> list[Pair]:
    pairs: list[Pair] = []
    lines = text.splitlines()
    seen_row = False
    reader = csv.reader(io.StringIO(text))
    for row in reader:
        number = reader.line_num  # the row's last physical line
        line = lines[number - 1] if number <= len(lines) else ""
        if not row or all(not field.strip() for field in row):
            continue
        fields = [field.strip() for field in row]
        if len(fields) != 3:
            raise _bad_line(
                path, number, line, f"expected 3 fields (path1, path2, issame), got {len(fields)}"
            )
        first, second, flag = fields
        flag = flag.lower()
        if flag not in _TRUE + _FALSE:
            if not seen_row:  # a header row
                seen_row = True
                continue
            raise _bad_line(
                path, number, line, f"issame must be 0, 1, true or false, got {fields[2]!r}"
            )
        seen_row = True
        if not first or not second:
            raise _bad_line(path, number, line, "empty path")
        pairs.append(Pair(first, second, flag in _TRUE))
    return pairs


def pair_file_folds(path: str | Path) -> int | None:
    """The number of folds an LFW pair file announces in its header (``10  300`` → 10), or None.

    None for a CSV file, an LFW file without a header or with a single-count header
    (``pairsDevTrain.txt``: one fold).

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = os.path.join(folder, "pairs.txt")
        ...     with open(path, "w") as file:
        ...         _ = file.write("10\\t300\\nAbel_Pacheco\\t1\\t4\\n")
        ...     pair_file_folds(path)
        10
    """
    text = Path(path).read_text(encoding="utf-8-sig")
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    fields = first_line.split()
    if len(fields) == 2 and all(field.isdigit() for field in fields):
        return int(fields[0])
    return None


class VerificationPairs(NamedTuple):
    """Verification pairs of one evaluation split, as indices into that split's dataset.

    ``first[i]`` and ``second[i]`` are positions of items in the split (the ``indices`` of its
    evaluation batches), ``issame[i]`` whether they share a label. The pairs are in protocol
    order: the accuracy protocol cuts them into ``n_folds`` contiguous folds (as
    :class:`~marginkit.metrics.VerificationMetrics` does with ``n_folds``), so the LFW folds of a
    ``pairs.txt`` are kept.

    Attributes:
        first: (P,) int64 index of the first item of each pair.
        second: (P,) int64 index of the second item.
        issame: (P,) bool, True for a same-identity pair.
        n_folds: folds of the accuracy protocol.

    Example:
        >>> pairs = VerificationPairs(
        ...     torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([True, False]), 2
        ... )
        >>> len(pairs.issame), pairs.n_folds
        (2, 2)
    """

    first: Tensor
    second: Tensor
    issame: Tensor
    n_folds: int


def sample_pairs(
    labels: Tensor, n_folds: int = 10, pairs_per_fold: int = 100, seed: int = 0
) -> VerificationPairs:
    """Draw a fixed, balanced verification pair list from the labels of an evaluation split.

    Each of the ``n_folds`` folds lists ``n`` same-label pairs then ``n`` different-label pairs
    (the LFW layout), ``n = min(pairs_per_fold, S // n_folds, D // n_folds)`` where ``S`` and ``D``
    are the numbers of distinct same- and different-label unordered pairs of the split. Same
    pairs are drawn uniformly without replacement from all ``S`` same-label pairs, different pairs
    uniformly without replacement from all ``D``; no unordered pair appears twice in the list.
    Folds may share items (the split is not cut by identity). The result depends only on
    ``labels``, ``n_folds``, ``pairs_per_fold`` and ``seed``, never on a batch size or order.

    Args:
        labels: (N,) integer labels of the split, in dataset order.
        n_folds: folds of the accuracy protocol (>= 2).
        pairs_per_fold: the most same (and different) pairs per fold.
        seed: seed of the draw.

    Returns:
        The pairs as :class:`VerificationPairs` of indices into ``labels``.

    Raises:
        ValueError: ``labels`` not 1-D integers, ``n_folds < 2``, ``pairs_per_fold < 1``, or a
            split too small for one same and one different pair per fold.

    Example:
        >>> pairs = sample_pairs(torch.tensor([0, 0, 0, 1, 1, 1]), n_folds=2, pairs_per_fold=2)
        >>> pairs.issame.tolist()
        [True, True, False, False, True, True, False, False]
        >>> bool((pairs.first != pairs.second).all())
        True
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"`labels` must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"`labels` must be a 1-D integer tensor, got {labels.dtype} of shape "
            f"{tuple(labels.shape)}"
        )
    for name, value, low in (("n_folds", n_folds, 2), ("pairs_per_fold", pairs_per_fold, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}")
    labels = labels.detach().cpu().long()
    n_items = len(labels)
    _, class_of, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    n_same_total = int((counts * (counts - 1) // 2).sum())
    n_diff_total = n_items * (n_items - 1) // 2 - n_same_total
    per_fold = min(pairs_per_fold, n_same_total // n_folds, n_diff_total // n_folds)
    if per_fold < 1:
        raise ValueError(
            f"a split of {n_items} items in {len(counts)} classes has {n_same_total} same-label "
            f"and {n_diff_total} different-label pairs: too few for `n_folds`={n_folds} folds "
            "of at least one pair of each kind"
        )
    generator = torch.Generator().manual_seed(seed)
    total = per_fold * n_folds
    same = _draw_same_pairs(class_of, counts, total, n_same_total, generator)
    diff = _draw_different_pairs(class_of, total, n_diff_total, generator)
    # Fold f: its `per_fold` same pairs, then its `per_fold` different pairs.
    both = torch.stack([same.view(n_folds, per_fold, 2), diff.view(n_folds, per_fold, 2)], 1)
    both = both.reshape(-1, 2)
    issame = torch.tensor([True] * per_fold + [False] * per_fold).repeat(n_folds)
    return VerificationPairs(both[:, 0].clone(), both[:, 1].clone(), issame, n_folds)


def _unique_rows(candidates: Tensor, seen: set[tuple[int, int]], wanted: int) -> list[tuple]:
    """New unordered pairs of ``candidates`` (in order) until ``wanted``; updates ``seen``."""
    kept = []
    for first, second in candidates.tolist():
        key = (min(first, second), max(first, second))
        if key in seen:
            continue
        seen.add(key)
        kept.append((first, second))
        if len(kept) == wanted:
            break
    return kept


def _draw_same_pairs(
    class_of: Tensor, counts: Tensor, total: int, n_available: int, generator: torch.Generator
) -> Tensor:
    order = torch.argsort(class_of, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    if 2 * total > n_available:  # a large share of all pairs: enumerate them, then permute
        rows = []
        for start, count in zip(starts.tolist(), counts.tolist(), strict=True):
            if count > 1:
                local = torch.triu_indices(count, count, offset=1)
                rows.append(order[start + local].T)
        every = torch.cat(rows)
        return every[torch.randperm(len(every), generator=generator)[:total]]
    weights = (counts * (counts - 1) // 2).double()  # class drawn ∝ its number of pairs
    seen: set[tuple[int, int]] = set()
    kept: list[tuple] = []
    while len(kept) < total:
        draw = 2 * (total - len(kept)) + 16
        cls = torch.multinomial(weights, draw, replacement=True, generator=generator)
        size = counts[cls]
        first = (torch.rand(draw, generator=generator, dtype=torch.float64) * size).long()
        second = (torch.rand(draw, generator=generator, dtype=torch.float64) * (size - 1)).long()
        second += (second >= first).long()  # two distinct items of the class, uniformly
        candidates = torch.stack([order[starts[cls] + first], order[starts[cls] + second]], 1)
        kept += _unique_rows(candidates, seen, total - len(kept))
    return torch.tensor(kept, dtype=torch.long)


def _draw_different_pairs(
    class_of: Tensor, total: int, n_available: int, generator: torch.Generator
) -> Tensor:
    n_items = len(class_of)
    if 2 * total > n_available:
        first, second = torch.triu_indices(n_items, n_items, offset=1)
        every = torch.stack([first, second], 1)[class_of[first] != class_of[second]]
        return every[torch.randperm(len(every), generator=generator)[:total]]
    seen: set[tuple[int, int]] = set()
    kept: list[tuple] = []
    while len(kept) < total:
        draw = 2 * (total - len(kept)) + 16
        candidates = torch.randint(n_items, (draw, 2), generator=generator)
        candidates = candidates[class_of[candidates[:, 0]] != class_of[candidates[:, 1]]]
        kept += _unique_rows(candidates, seen, total - len(kept))
    return torch.tensor(kept, dtype=torch.long)
