"""insightface's ``.bin`` verification sets (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``…), loaded safely.

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``2·P`` encoded images (pair ``i`` is images
``2i`` and ``2i + 1``) and ``P`` same-identity flags, mostly written by Python 2 (``BINSTRING``
opcodes, read with ``encoding="bytes"``). ``pickle.load`` runs whatever a file asks for; these
files come from the internet, so :func:`load_bin` uses an unpickler that builds only what such
files hold (lists, tuples, bytes, bools, ints, and numpy bool arrays and Python 3's protocol-2
``_codecs.encode`` bytes where real files use them), through its own constructors, and refuses
any other global with one line naming the file and the global.

:func:`folder_verification_set` gives the same ``(bins, issame)`` from an image folder and an
LFW ``pairs.txt``, so a folder and a ``.bin`` of the same images give the same numbers.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

_ENCODINGS = ("latin1", "latin-1")
_BOOL_DTYPES = ("b1", "?", "bool")


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A ``.bin`` file asked to load something other than images and booleans."""


class _BoolDtype:
    """Stands in for ``numpy.dtype`` while unpickling: bool only."""

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        name = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        if name not in _BOOL_DTYPES:
            raise UnsafePickleError(f"numpy dtype {name!r} (only bool arrays are allowed)")

    def __setstate__(self, state: Any) -> None:  # (version, byte order, ...): nothing to run
        pass


class _NdarrayMarker:
    """Stands in for ``numpy.ndarray``: only ever an argument of ``_reconstruct`` (no attributes)."""

    __slots__ = ()


class _BoolArray:
    """Stands in for a numpy array while unpickling; BUILD's state makes a bool array of it."""

    value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError("a numpy array state of an unknown form")
        shape, dtype, fortran, data = state[-4:]
        if not isinstance(dtype, _BoolDtype) or not isinstance(data, (bytes, str)):
            raise UnsafePickleError("a numpy array that is not a plain bool array")
        if isinstance(data, str):
            data = data.encode("latin1")
        if not isinstance(shape, tuple) or not all(isinstance(n, int) for n in shape):
            raise UnsafePickleError(f"a numpy array shape {shape!r}")
        values = np.frombuffer(data, dtype=np.bool_).copy()
        self.value = values.reshape(shape, order="F" if fortran else "C")


def _encode(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(str, "latin1")``: how Python 3 pickles ``bytes`` at protocol 2."""
    if not isinstance(text, str) or encoding not in _ENCODINGS:
        raise UnsafePickleError("_codecs.encode of anything but a latin-1 string")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Fresh stand-ins for the globals a ``.bin`` may name, for one load.

    Only functions made for this load and an attribute-less marker ever reach the pickle's
    stack: a ``BUILD`` aimed at them cannot change anything that outlives the load.
    """
    ndarray = _NdarrayMarker()

    def reconstruct(cls: Any, shape: Any, dtype_code: Any) -> _BoolArray:
        if cls is not ndarray:
            raise UnsafePickleError("numpy _reconstruct of something other than ndarray")
        return _BoolArray()

    def dtype(name: Any, align: Any = False, copy: Any = True) -> _BoolDtype:
        return _BoolDtype(name)

    def encode(text: Any, encoding: Any = "latin1") -> bytes:
        return _encode(text, encoding)

    return {
        ("_codecs", "encode"): encode,
        ("numpy", "ndarray"): ndarray,
        ("numpy", "dtype"): dtype,
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: str) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        allowed = self.allowed.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"{self.path}: refused to load the global {module}.{name} (a .bin "
                "verification set holds only images and booleans; this file may run code)"
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.path}: refused a persistent id (not a .bin set)")


def _plain(value: Any) -> Any:
    if isinstance(value, _BoolArray):
        if value.value is None:
            raise UnsafePickleError("a numpy array without data")
        return value.value
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return value


def load_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """The ``(images, issame)`` of an insightface ``.bin`` set, without running any code.

    Returns:
        ``images``: the ``2·P`` encoded images (pair ``i`` is ``images[2i]``,
        ``images[2i + 1]``); ``issame``: the ``(P,)`` bool array of same-identity flags.

    Raises:
        UnsafePickleError: the file loads a global other than those listed in the module doc
            (nothing of it runs), or is not a ``(images, issame)`` pickle. Also a ``ValueError``.

    Example:
        >>> import pickle, tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = Path(folder, "lfw.bin")
        ...     _ = path.write_bytes(pickle.dumps(([b"a", b"b"], [True]), protocol=2))
        ...     images, issame = load_bin(path)
        >>> images, issame.tolist()
        ([b'a', b'b'], [True])
    """
    path = Path(path)
    name = str(path)
    with open(path, "rb") as file:
        try:
            loaded = _plain(_RestrictedUnpickler(io.BufferedReader(file), name).load())
        except UnsafePickleError as error:
            message = str(error)
            raise UnsafePickleError(
                message if message.startswith(name) else f"{name}: {message}"
            ) from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
            raise UnsafePickleError(f"{name}: not a readable .bin pickle ({error})") from None
    if not isinstance(loaded, (tuple, list)) or len(loaded) != 2:
        raise UnsafePickleError(
            f"{name}: a .bin holds (images, issame), got {type(loaded).__name__}"
        )
    images, issame = loaded
    if isinstance(images, tuple):
        images = list(images)
    if not isinstance(images, list) or not all(isinstance(i, (bytes, bytearray)) for i in images):
        raise UnsafePickleError(f"{name}: the images must be a list of encoded images (bytes)")
    if isinstance(issame, np.ndarray):
        flags = issame.reshape(-1)
    elif isinstance(issame, (list, tuple)) and all(
        isinstance(v, (bool, int, np.bool_)) and int(v) in (0, 1) for v in issame
    ):
        flags = np.asarray([bool(v) for v in issame], dtype=np.bool_)
    else:
        raise UnsafePickleError(f"{name}: issame must be a list of booleans")
    if len(images) != 2 * flags.size or not flags.size:
        raise UnsafePickleError(
            f"{name}: {len(images)} images for {flags.size} pairs (must be 2 per pair, >= 1 pair)"
        )
    return [bytes(image) for image in images], flags


def folder_verification_set(
    root: str | os.PathLike, pairs_file: str | os.PathLike | None = None
) -> tuple[list[bytes], np.ndarray]:
    """``(images, issame)`` of an image folder and a pair list, in a ``.bin``'s order.

    ``pairs_file`` (default ``root/pairs.txt``) is read by :func:`~marginkit.data.read_pairs`
    (LFW ``pairs.txt`` or CSV); its paths are relative to ``root``. The files' bytes are kept
    as they are, so decoding them gives the pixels a ``.bin`` of the same files gives.
    """
    from marginkit.data.pairs import read_pairs

    root = Path(root)
    pairs_path = Path(pairs_file) if pairs_file is not None else root / "pairs.txt"
    pairs = read_pairs(pairs_path)
    images = []
    for pair in pairs:
        for relative in (pair.first, pair.second):
            file = root / relative
            if not file.is_file():
                raise FileNotFoundError(f"{pairs_path} names {relative!r}, not in {root}")
            images.append(file.read_bytes())
    return images, np.asarray([pair.issame for pair in pairs], dtype=np.bool_)
