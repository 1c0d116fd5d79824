"""MXNet's indexed RecordIO (insightface's ``train.rec`` / ``train.idx``), read and written without mxnet.

The format (dmlc-core's ``recordio``): each record is a little-endian ``uint32`` magic
``0xced7230a``, a ``uint32`` ``lrecord`` whose upper 3 bits are a continuation flag and lower 29
the length, the payload, and zero padding to a multiple of 4 bytes. A payload that contains the
magic at a 4-byte-aligned position is cut there into parts (flags 1 = first, 2 = middle,
3 = last; the magic itself is dropped and put back by the reader); flag 0 is a whole record.
The ``.idx`` file has one ``key<TAB>byte offset`` line per record.

An *image record*'s payload starts with the 24-byte IRHeader ``struct.pack("<IfQQ", flag,
label, id, id2)``; when ``flag > 0``, ``flag`` float32 labels follow it (and ``label`` is unused);
the rest is the encoded image (JPEG, sometimes PNG).

insightface's layout (``train.rec``, ``train.idx``, ``property``): record 0 is a header whose
label is ``[first key past the images, end of the identity records]``; the images are keys
``1 .. label[0] - 1``, each labelled by its header's label (the first value of an array); keys
``label[0] .. label[1] - 1`` are identity records whose label is the ``[first, end)`` key range
of that identity's images. ``property`` holds ``num_classes,height,width``.

Command line::

    python -m marginkit.data.recordio pack <image_folder> <out_prefix>   # writes .rec/.idx/property
    python -m marginkit.data.recordio info <prefix>                      # identities, images, sizes
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24


class RecordIOError(ValueError):
    """A ``.rec`` / ``.idx`` file that is truncated or corrupt (the message names file and record)."""


class IRHeader(NamedTuple):
    """The header of an image record: ``flag`` labels (or one in ``label`` when ``flag == 0``)."""

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


# ------------------------------------------------------------------------------ payloads
def pack_payload(label: float | Sequence[float], image: bytes, id: int = 0, id2: int = 0) -> bytes:
    """The payload of an image record: IRHeader, then the labels of an array label, then ``image``.

    A scalar ``label`` goes into the header (``flag = 0``); a sequence of ``n`` labels sets
    ``flag = n``, writes ``label = 0`` and appends the ``n`` float32 values (mxnet's ``pack``).

    Example:
        >>> payload = pack_payload([3.0, 7.0], b"jpeg")
        >>> unpack_payload(payload)
        (IRHeader(flag=2, label=(3.0, 7.0), id=0, id2=0), b'jpeg')
    """
    if isinstance(label, (int, float)):
        return struct.pack(IR_FORMAT, 0, float(label), id, id2) + image
    values = np.asarray(label, dtype="<f4")
    return struct.pack(IR_FORMAT, values.size, 0.0, id, id2) + values.tobytes() + image


def unpack_payload(payload: bytes) -> tuple[IRHeader, bytes]:
    """Split an image record's payload into its :class:`IRHeader` and the encoded image."""
    if len(payload) < IR_SIZE:
        raise ValueError(f"an image record holds at least {IR_SIZE} bytes, got {len(payload)}")
    flag, label, id_, id2 = struct.unpack_from(IR_FORMAT, payload)
    start = IR_SIZE
    if flag > 0:
        end = start + 4 * flag
        if len(payload) < end:
            raise ValueError(f"the header announces {flag} labels, the record is too short")
        label = tuple(float(v) for v in np.frombuffer(payload[start:end], dtype="<f4"))
        start = end
    return IRHeader(flag, label, id_, id2), payload[start:]


def first_label(header: IRHeader) -> float:
    """The label of an image: the header's ``label``, or the first value of an array label."""
    return header.label[0] if isinstance(header.label, tuple) else header.label


# ------------------------------------------------------------------------------ framing
def frame_record(payload: bytes) -> bytes:
    """The bytes of one record as dmlc-core writes it (cut at aligned magics, padded to 4).

    Example:
        >>> record = frame_record(b"abcde")
        >>> record[:8].hex(), len(record)
        ('0a23d7ce05000000', 16)
    """
    parts = []
    start = 0
    aligned_end = len(payload) - len(payload) % 4
    for position in range(0, aligned_end, 4):
        if payload[position : position + 4] == _MAGIC_BYTES:
            parts.append(payload[start:position])
            start = position + 4
    parts.append(payload[start:])
    out = bytearray()
    for number, part in enumerate(parts):
        if len(parts) == 1:
            flag = 0
        else:
            flag = 1 if number == 0 else (3 if number == len(parts) - 1 else 2)
        out += struct.pack("<II", MAGIC, (flag << _LENGTH_BITS) | len(part)) + part
        out += b"\0" * (-len(part) % 4)
    return bytes(out)


def _index_path(rec_path: Path) -> Path:
    return rec_path.with_suffix(".idx")


def read_index(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The ``(keys, offsets)`` int64 arrays of an ``.idx`` file, in file order.

    Raises:
        RecordIOError: a line that is not ``key<TAB>offset`` (names the file and line), a
            negative offset or a repeated key.
    """
    path = Path(path)
    keys, offsets = [], []
    with open(path, encoding="ascii", errors="replace") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or not all(f.isdigit() for f in fields):
                raise RecordIOError(
                    f"{path}: line {number} must be 'key<TAB>offset', got {line.rstrip()[:60]!r}"
                )
            keys.append(int(fields[0]))
            offsets.append(int(fields[1]))
    key_array = np.asarray(keys, dtype=np.int64)
    if np.unique(key_array).size != key_array.size:
        raise RecordIOError(f"{path}: a key is listed twice")
    return key_array, np.asarray(offsets, dtype=np.int64)


class IndexedRecordFile:
    """Random access to the records of an indexed RecordIO file, by key, never loading it whole.

    Reads with ``os.pread`` on a file descriptor opened lazily in each process (re-opened after
    a ``fork``, dropped when pickled for ``spawn`` workers), so DataLoader workers and DDP ranks
    share nothing but the file. The index is checked when the object is built: every offset
    must leave room for a record header inside the ``.rec`` file, and the record at the largest
    offset must end inside it (a truncated copy fails here, not mid-epoch).

    Args:
        rec_path: the ``.rec`` file.
        idx_path: its ``.idx`` file (default: the same name with ``.idx``).

    Raises:
        FileNotFoundError: a file is missing.
        RecordIOError: a corrupt index or a truncated ``.rec`` (names the file and the record).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     prefix = Path(folder, "train")
        ...     with RecordWriter(prefix) as writer:
        ...         writer.write(5, b"hello")
        ...     records = IndexedRecordFile(f"{prefix}.rec")
        ...     records.keys.tolist(), records.read(5)
        ([5], b'hello')
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self._fd: int | None = None
        self._pid: int | None = None
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else _index_path(self.rec_path)
        for path in (self.rec_path, self.idx_path):
            if not path.is_file():
                raise FileNotFoundError(f"RecordIO file {str(path)!r} does not exist")
        self.keys, self.offsets = read_index(self.idx_path)
        self.size = self.rec_path.stat().st_size
        self._position = {int(key): i for i, key in enumerate(self.keys.tolist())}
        beyond = np.nonzero(self.offsets + 8 > self.size)[0]
        if beyond.size:
            i = int(beyond[0])
            raise RecordIOError(
                f"{self.rec_path} is truncated: record {int(self.keys[i])} of {self.idx_path} "
                f"starts at byte {int(self.offsets[i])}, the file has {self.size} bytes"
            )
        if self.keys.size:
            self.read(int(self.keys[int(np.argmax(self.offsets))]))

    def __len__(self) -> int:
        return int(self.keys.size)

    def __contains__(self, key: int) -> bool:
        return int(key) in self._position

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fd"] = state["_pid"] = None  # a spawned worker opens its own
        return state

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Close this process's file descriptor (it is re-opened on the next read)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def offset(self, key: int) -> int:
        """The byte offset of record ``key``."""
        try:
            return int(self.offsets[self._position[int(key)]])
        except KeyError:
            raise KeyError(f"record {key} is not in {self.idx_path}") from None

    def _corrupt(self, key: int, offset: int, why: str) -> RecordIOError:
        return RecordIOError(f"{self.rec_path}: record {key} (byte {offset}) is corrupt: {why}")

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` (parts of a cut record joined with the magic).

        Raises:
            KeyError: ``key`` is not in the index.
            RecordIOError: bad magic, a length past the end of the file, or broken parts.
        """
        fd = self._descriptor()
        start = position = self.offset(key)
        parts = []
        while True:
            head = os.pread(fd, 8, position)
            if len(head) < 8:
                raise self._corrupt(key, start, f"the file ends at byte {self.size}")
            magic, lrecord = struct.unpack("<II", head)
            if magic != MAGIC:
                raise self._corrupt(key, start, f"magic {magic:#010x} at byte {position}")
            flag, length = lrecord >> _LENGTH_BITS, lrecord & _LENGTH_MASK
            if position + 8 + length > self.size:
                raise self._corrupt(
                    key, start, f"{length} bytes announced, the file ends at byte {self.size}"
                )
            parts.append(os.pread(fd, length, position + 8))
            position += 8 + length + (-length % 4)
            if flag in (0, 3) and (flag == 0) == (len(parts) == 1):
                break
            if flag not in (1, 2) or (flag == 1) != (len(parts) == 1):
                raise self._corrupt(key, start, f"continuation flag {flag} out of sequence")
        return _MAGIC_BYTES.join(parts)

    def header(self, key: int) -> IRHeader:
        """The IRHeader of image record ``key``."""
        try:
            return unpack_payload(self.read(key))[0]
        except ValueError as error:
            if isinstance(error, RecordIOError):
                raise
            raise self._corrupt(key, self.offset(key), str(error)) from None


class RecordWriter:
    """Write an indexed RecordIO pair ``<prefix>.rec`` / ``<prefix>.idx`` (a context manager).

    Args:
        prefix: the output path without suffix.
    """

    def __init__(self, prefix: str | os.PathLike) -> None:
        prefix = Path(prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        self._rec = open(f"{prefix}.rec", "wb")
        self._idx = open(f"{prefix}.idx", "w", encoding="ascii")

    def write(self, key: int, payload: bytes) -> None:
        """Append record ``key``."""
        self._idx.write(f"{int(key)}\t{self._rec.tell()}\n")
        self._rec.write(frame_record(payload))

    def close(self) -> None:
        self._rec.close()
        self._idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------ insightface layout
class InsightFaceRecords(NamedTuple):
    """An insightface training set: its records, the image keys and their labels."""

    records: IndexedRecordFile
    keys: np.ndarray  # (N,) int64 record keys of the images
    labels: np.ndarray  # (N,) int64 label of each
    num_classes: int
    image_size: tuple[int, int] | None  # (height, width) from `property`


def read_property(path: str | os.PathLike) -> tuple[int, tuple[int, int]]:
    """``(num_classes, (height, width))`` of an insightface ``property`` file."""
    text = Path(path).read_text().strip()
    fields = text.replace(" ", "").split(",")
    if len(fields) != 3 or not all(f.isdigit() for f in fields):
        raise RecordIOError(f"{path}: must be 'num_classes,height,width', got {text[:60]!r}")
    return int(fields[0]), (int(fields[1]), int(fields[2]))


def open_insightface(prefix: str | os.PathLike) -> InsightFaceRecords:
    """Open ``<prefix>.rec`` / ``.idx`` (and the ``property`` beside them) as insightface's layout.

    With a record 0 header (``flag > 0``) the images are keys ``1 .. label[0] - 1``; their labels
    come from the identity records ``label[0] .. label[1] - 1`` when there are any (one read per
    identity), else from every image's header. Without it every record is an image. The
    number of classes is ``property``'s when present, else ``max(label) + 1``.

    Raises:
        RecordIOError: a missing image key, a label outside ``[0, num_classes)``, a header that
            does not parse (names the file and the record).
    """
    prefix = Path(prefix)
    rec_path = prefix.with_name(prefix.name + ".rec") if prefix.suffix != ".rec" else prefix
    records = IndexedRecordFile(rec_path)
    property_path = rec_path.parent / "property"
    num_classes, image_size = (
        read_property(property_path) if property_path.is_file() else (None, None)
    )
    header0 = records.header(0) if 0 in records else None
    if header0 is not None and header0.flag > 0:
        end_images = int(header0.label[0])  # type: ignore[index]
        end_identities = int(header0.label[1]) if header0.flag > 1 else end_images  # type: ignore[index]
        keys = np.arange(1, end_images, dtype=np.int64)
        missing = [int(k) for k in keys[:: max(1, keys.size // 1000)] if int(k) not in records]
        if missing or (keys.size and int(keys[-1]) not in records):
            raise RecordIOError(
                f"{records.idx_path}: record 0 announces images 1..{end_images - 1}, key "
                f"{(missing or [int(keys[-1])])[0]} is not in the index"
            )
        labels = np.full(keys.size, -1, dtype=np.int64)
        for identity, key in enumerate(range(end_images, end_identities)):
            header = records.header(key)
            first, end = (int(v) for v in header.label[:2])  # type: ignore[index]
            labels[first - 1 : end - 1] = identity
        if end_identities == end_images or (labels < 0).any():
            labels = _labels_from_headers(records, keys)
    else:
        keys = np.sort(records.keys)
        labels = _labels_from_headers(records, keys)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    bad = np.nonzero((labels < 0) | (labels >= num_classes))[0]
    if bad.size:
        i = int(bad[0])
        raise RecordIOError(
            f"{rec_path}: record {int(keys[i])} has label {int(labels[i])}, outside "
            f"[0, {num_classes}) (num_classes of {property_path})"
        )
    return InsightFaceRecords(records, keys, labels, num_classes, image_size)


def _labels_from_headers(records: IndexedRecordFile, keys: np.ndarray) -> np.ndarray:
    return np.asarray(
        [int(first_label(records.header(int(key)))) for key in keys.tolist()], dtype=np.int64
    )


# ------------------------------------------------------------------------------ pack / info
def pack_folder(folder: str | os.PathLike, prefix: str | os.PathLike) -> tuple[int, int]:
    """Write an image folder (one sub-folder per identity) as insightface's layout.

    Identities are numbered by sorted folder name; the encoded files are stored as they are
    (no re-encoding). Writes ``<prefix>.rec``, ``<prefix>.idx`` and ``property`` (in the
    prefix's folder; height and width of the first image). Returns ``(identities, images)``.
    """
    from PIL import Image

    from marginkit.data.image_folder import scan_image_folder

    classes = scan_image_folder(folder)
    n_images = sum(len(paths) for paths in classes.values())
    first_identity = n_images + 1
    end = first_identity + len(classes)
    with RecordWriter(prefix) as writer:
        writer.write(0, pack_payload([float(first_identity), float(end)], b""))
        key = 1
        ranges = []
        for label, paths in enumerate(classes.values()):
            start = key
            for path in paths:
                writer.write(key, pack_payload(float(label), Path(path).read_bytes(), id=key))
                key += 1
            ranges.append((start, key))
        for identity, (start, stop) in enumerate(ranges):
            writer.write(first_identity + identity, pack_payload([float(start), float(stop)], b""))
    with Image.open(next(iter(classes.values()))[0]) as image:
        width, height = image.size
    Path(prefix).parent.joinpath("property").write_text(f"{len(classes)},{height},{width}")
    return len(classes), n_images


def describe(prefix: str | os.PathLike, sample: int = 100) -> dict[str, object]:
    """Identities, images and the image sizes (of up to ``sample`` images) of a RecordIO set."""
    from PIL import Image

    data = open_insightface(prefix)
    sizes: dict[tuple[int, int], int] = {}
    step = max(1, len(data.keys) // sample)
    for key in data.keys[::step][:sample].tolist():
        _, image = unpack_payload(data.records.read(int(key)))
        with Image.open(io.BytesIO(image)) as decoded:
            sizes[(decoded.height, decoded.width)] = (
                sizes.get((decoded.height, decoded.width), 0) + 1
            )
    return {
        "identities": data.num_classes,
        "images": int(data.keys.size),
        "property_size": data.image_size,
        "sampled_sizes": {f"{h}x{w}": n for (h, w), n in sorted(sizes.items())},
    }


def main(argv: Iterable[str] | None = None) -> int:
    """``pack <image_folder> <out_prefix>`` or ``info <prefix>``."""
    parser = argparse.ArgumentParser(prog="python -m marginkit.data.recordio")
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("pack", help="write an image folder as .rec/.idx/property")
    pack.add_argument("folder")
    pack.add_argument("prefix")
    info = commands.add_parser("info", help="identities, images and image sizes of a .rec")
    info.add_argument("prefix")
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        if args.command == "pack":
            identities, images = pack_folder(args.folder, args.prefix)
            print(f"wrote {args.prefix}.rec / .idx: {identities} identities, {images} images")
        else:
            for name, value in describe(args.prefix).items():
                print(f"{name}: {value}")
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
