"""Test data in insightface's layout, written here independently of marginkit's own writer.

- :func:`draw_identities`: a folder of small JPEGs, one sub-folder per drawn "identity".
- :func:`write_rec`: MXNet indexed RecordIO written from the format's description (dmlc-core's
  framing with continuation parts, the ``IfQQ`` IRHeader), with insightface's record 0 and
  identity records.
- :func:`py2_bin_pickle`: a ``.bin`` pickled with the opcodes Python 2 writes (protocol 2 with
  ``SHORT_BINSTRING``/``BINSTRING``, or protocol 0 with ``STRING``/``I01``), byte by byte.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np

REC_MAGIC = 0xCED7230A


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def draw_identities(
    root: Path, n_identities: int = 6, per_identity: int = 4, size: int = 16, seed: int = 0
) -> dict[str, list[Path]]:
    """``root/id_XXX/N.jpg``: per identity a colour and pattern, plus small noise per image."""
    rng = np.random.default_rng(seed)
    folders: dict[str, list[Path]] = {}
    for identity in range(n_identities):
        folder = root / f"id_{identity:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        # a colour of its own plus a pattern: even an untrained network tells them apart
        colour = rng.integers(50, 206, (1, 1, 3))
        base = colour + rng.integers(-40, 41, (size, size, 3))
        paths = []
        for item in range(per_identity):
            noise = rng.integers(-60, 61, (size, size, 3))
            path = folder / f"{item}.jpg"
            path.write_bytes(jpeg_bytes(np.clip(base + noise, 0, 255).astype(np.uint8)))
            paths.append(path)
        folders[folder.name] = paths
    return folders


def ir_header(label, image: bytes = b"", id_: int = 0) -> bytes:
    """IRHeader ``<IfQQ`` then the float32 labels of an array label, then the image bytes."""
    if isinstance(label, (list, tuple)):
        extra = b"".join(struct.pack("<f", float(v)) for v in label)
        return (
            struct.pack("<I", len(label))
            + struct.pack("<f", 0.0)
            + struct.pack("<QQ", id_, 0)
            + extra
            + image
        )
    return (
        struct.pack("<I", 0) + struct.pack("<f", float(label)) + struct.pack("<QQ", id_, 0) + image
    )


def _frame(payload: bytes) -> bytes:
    """dmlc-core's WriteRecord: split at every 4-byte aligned magic, flags 1/2/3, pad to 4."""
    magic = struct.pack("<I", REC_MAGIC)
    lower_align = len(payload) - len(payload) % 4
    cuts = [i for i in range(0, lower_align, 4) if payload[i : i + 4] == magic]
    pieces, begin = [], 0
    for cut in cuts:
        pieces.append(payload[begin:cut])
        begin = cut + 4
    pieces.append(payload[begin:])
    out = b""
    for n, piece in enumerate(pieces):
        flag = 0 if len(pieces) == 1 else (1 if n == 0 else 3 if n == len(pieces) - 1 else 2)
        out += struct.pack("<I", REC_MAGIC) + struct.pack("<I", (flag << 29) + len(piece)) + piece
        while len(out) % 4:
            out += b"\x00"
    return out


def write_rec(prefix: Path, records: list[tuple[int, bytes]]) -> None:
    """Write ``prefix.rec`` and ``prefix.idx`` with the records in the given order."""
    rec, idx = bytearray(), []
    for key, payload in records:
        idx.append(f"{key}\t{len(rec)}\n")
        rec += _frame(payload)
    Path(f"{prefix}.rec").write_bytes(bytes(rec))
    Path(f"{prefix}.idx").write_text("".join(idx))


def insightface_records(
    folders: dict[str, list[Path]], identity_records: bool = True, array_labels: bool = False
) -> tuple[list[tuple[int, bytes]], list[int]]:
    """insightface's layout of an identity folder: (records, label of each image key 1..N)."""
    images, labels = [], []
    for label, paths in enumerate(folders.values()):
        for path in paths:
            images.append(path.read_bytes())
            labels.append(label)
    n = len(images)
    ranges, key = [], 1
    for paths in folders.values():
        ranges.append((key, key + len(paths)))
        key += len(paths)
    end = n + 1 + (len(folders) if identity_records else 0)
    records = [(0, ir_header([n + 1, end]))]
    for key, (image, label) in enumerate(zip(images, labels, strict=True), start=1):
        value = [label, 0.5] if array_labels else label
        records.append((key, ir_header(value, image, key)))
    if identity_records:
        for identity, (start, stop) in enumerate(ranges):
            records.append((n + 1 + identity, ir_header([start, stop])))
    return records, labels


def write_property(folder: Path, num_classes: int, size: int) -> None:
    (folder / "property").write_text(f"{num_classes},{size},{size}")


# --------------------------------------------------------------------------- .bin pickles
def _py2_string(value: bytes) -> bytes:
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(value)) + value  # BINSTRING


def py2_bin_pickle(images: list[bytes], issame: list[bool], protocol: int = 2) -> bytes:
    """``pickle.dumps((images, issame), protocol)`` as Python 2 writes it (str = bytes)."""
    if protocol == 2:
        out = b"\x80\x02]q\x00(" + b"".join(_py2_string(image) for image in images) + b"e"
        out += b"]q\x01(" + b"".join(b"\x88" if same else b"\x89" for same in issame) + b"e"
        return out + b"\x86q\x02."
    # protocol 0: STRING with Python's escapes, INT 01/00 for bools, APPEND after each item
    out = b"((lp0\n"
    for image in images:
        out += b"S" + repr(image)[1:].encode("ascii") + b"\na"
    out += b"(lp1\n"
    for same in issame:
        out += (b"I01\n" if same else b"I00\n") + b"a"
    return out + b"tp2\n."


def verification_pairs(folders: dict[str, list[Path]], n_pairs: int, seed: int = 0):
    """(images, issame): ``n_pairs`` alternating same / different pairs of the folders' images."""
    rng = np.random.default_rng(seed)
    names = list(folders)
    images, issame = [], []
    for number in range(n_pairs):
        same = number % 2 == 0
        a = names[rng.integers(len(names))]
        if same:
            first, second = rng.choice(len(folders[a]), 2, replace=False)
            paths = folders[a][first], folders[a][second]
        else:
            b = names[(names.index(a) + 1 + rng.integers(len(names) - 1)) % len(names)]
            paths = (
                folders[a][rng.integers(len(folders[a]))],
                folders[b][rng.integers(len(folders[b]))],
            )
        images += [path.read_bytes() for path in paths]
        issame.append(same)
    return images, issame


def insightface_folder(
    root: Path, n_identities: int = 6, per_identity: int = 4, size: int = 16, n_pairs: int = 40
) -> Path:
    """A whole insightface folder: train.rec/.idx/property (independent writer) and lfw.bin
    (Python 2 opcodes) + cfp_fp.bin (protocol 4) over other drawn identities."""
    import pickle

    root.mkdir(parents=True, exist_ok=True)
    train = draw_identities(root / "_train_images", n_identities, per_identity, size, seed=1)
    records, _ = insightface_records(train)
    write_rec(root / "train", records)
    write_property(root, n_identities, size)
    held_out = draw_identities(root / "_val_images", 5, 4, size, seed=2)
    images, issame = verification_pairs(held_out, n_pairs, seed=3)
    (root / "lfw.bin").write_bytes(py2_bin_pickle(images, issame))
    images, issame = verification_pairs(held_out, n_pairs, seed=4)
    (root / "cfp_fp.bin").write_bytes(pickle.dumps((images, issame), protocol=4))
    return root
