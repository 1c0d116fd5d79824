"""Readers for verification pair lists: LFW ``pairs.txt`` and a simple CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import NamedTuple

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
