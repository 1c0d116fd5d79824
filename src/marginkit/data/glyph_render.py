"""Unicode characters drawn by the fonts matplotlib ships: the images of ``data=glyphs``.

:func:`load_glyphs` renders every character that at least ``min_fonts`` of the 16 usable faces
(:data:`GLYPH_FACES`) draw, merges homoglyphs, and caches the result under the user's cache
directory (``$MARGINKIT_CACHE_DIR`` overrides it), keyed by the font files, the settings and
:data:`RENDER_VERSION`; a second call reads the cache. The rules, in order:

1. **Coverage.** A face covers a character when its cmap (fontTools' ``getBestCmap``) maps it to
   a glyph other than ``.notdef`` and that glyph draws ink. Only Unicode categories L, N, P and
   S (letters, numbers, punctuation, symbols) are kept.
2. **Tiny ink.** A character whose median ink over its faces is below ``min_ink`` (in pixels of
   full intensity at 32×32, scaled with the image area) is dropped: apostrophes, primes and
   dots would be retrieved by their size alone.
3. **Homoglyphs.** Two characters are merged into one class when their images differ by at most
   ``homoglyph_tolerance`` (root mean square, intensities in [0, 1]) in at least half of the
   faces that draw both (B/В/Β, I/Ι/І/Ⅰ, Z/Ζ: identical outlines would put a hard ceiling on
   retrieval). A class keeps one image per face, that of its lowest code point the face draws.
4. **Instances.** A class needs images from at least ``min_fonts`` faces.

Each image is the glyph at ``font_fraction · image_size`` pixels per em, on a fixed baseline at
``0.72 · image_size`` (so a comma and an apostrophe stay apart), centred horizontally on its
ink and shrunk when it would not fit; white ink on black, uint8.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Bump when the rendering or the merge changes: it is part of the cache key.
RENDER_VERSION = 1
#: The faces of matplotlib's ``fonts/ttf`` that map Unicode to real glyphs (file stems).
GLYPH_FACES = (
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSans-Oblique",
    "DejaVuSans-BoldOblique",
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "DejaVuSansMono-Oblique",
    "DejaVuSansMono-BoldOblique",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSerif-Italic",
    "DejaVuSerif-BoldItalic",
    "STIXGeneral",
    "STIXGeneralBol",
    "STIXGeneralItalic",
    "STIXGeneralBolIta",
)
KEPT_CATEGORIES = ("L", "N", "P", "S")
CACHE_ENV = "MARGINKIT_CACHE_DIR"
_BASELINE = 0.72


@dataclass(frozen=True)
class GlyphSet:
    """Rendered glyphs: one image per (class, face).

    Attributes:
        images: (N, H, W) uint8 images, white ink on black.
        labels: (N,) int64 class of each image, in ``0..len(classes)-1``.
        fonts: (N,) int64 index of each image's face in :attr:`faces`.
        classes: the characters of each class (homoglyphs merged: ``"BΒВ"``), lowest first.
        faces: the font file stems, in the order of :attr:`fonts`.
    """

    images: np.ndarray
    labels: np.ndarray
    fonts: np.ndarray
    classes: tuple[str, ...]
    faces: tuple[str, ...]


def fonts_dir() -> Path:
    """matplotlib's bundled TrueType folder (``<matplotlib data>/fonts/ttf``)."""
    try:
        import matplotlib
    except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "data=glyphs draws the fonts matplotlib ships: `pip install matplotlib` "
            "(or `pip install marginkit[plot]`)"
        ) from error
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def default_cache_dir() -> Path:
    """``$MARGINKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/marginkit``, else ``~/.cache/marginkit``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "marginkit"


def _font_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cache_key(settings: dict, paths: Sequence[Path]) -> str:
    """A 16-hex-digit key over the font files' bytes, ``settings``, the renderer and Pillow."""
    import PIL
    from PIL import features

    payload = {
        "settings": settings,
        "fonts": _font_digest(paths),
        "version": RENDER_VERSION,
        "pillow": PIL.__version__,
        "freetype": features.version("freetype2"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _covered(path: Path) -> set[int]:
    """Code points of categories L/N/P/S that the face's cmap maps to a real glyph."""
    from fontTools.ttLib import TTFont

    font = TTFont(str(path), lazy=True)
    try:
        cmap = font.getBestCmap() or {}
    finally:
        font.close()
    return {
        code
        for code, glyph in cmap.items()
        if glyph != ".notdef" and unicodedata.category(chr(code))[0] in KEPT_CATEGORIES
    }


def _render_face(
    path: Path, codes: Sequence[int], image_size: int, font_fraction: float
) -> dict[int, np.ndarray]:
    """The images of ``codes`` in one face; a code whose glyph draws no ink is left out."""
    from PIL import Image, ImageDraw, ImageFont

    size = max(1, round(font_fraction * image_size))
    fonts = {size: ImageFont.truetype(str(path), size=size)}
    baseline = _BASELINE * image_size
    images = {}
    for code in codes:
        char, font_size = chr(code), size
        while True:
            left, top, right, bottom = fonts[font_size].getbbox(char, anchor="ls")
            fits = right - left <= image_size and baseline + top >= 0
            fits = fits and baseline + bottom <= image_size
            if fits or font_size <= 4:
                break
            font_size = max(4, int(font_size * 0.85))
            if font_size not in fonts:
                fonts[font_size] = ImageFont.truetype(str(path), size=font_size)
        if right <= left or bottom <= top:
            continue
        image = Image.new("L", (image_size, image_size), 0)
        x = (image_size - (right - left)) / 2 - left
        ImageDraw.Draw(image).text(
            (x, baseline), char, font=fonts[font_size], fill=255, anchor="ls"
        )
        pixels = np.asarray(image, dtype=np.uint8)
        if pixels.any():
            images[code] = pixels
    return images


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        root = item
        while self.parent.setdefault(root, root) != root:
            root = self.parent[root]
        while item != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:  # the lower code point names the class
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


def _near_identical_pairs(images: dict[int, np.ndarray], tolerance: float) -> list[tuple[int, int]]:
    """Pairs of codes (lower first) whose images are within ``tolerance`` RMS in one face."""
    import torch

    codes = sorted(images)
    if len(codes) < 2:
        return []
    flat = torch.from_numpy(np.stack([images[c] for c in codes]).reshape(len(codes), -1))
    flat = flat.float().div_(255.0)
    bound = tolerance**2 * flat.shape[1]
    squares = flat.square().sum(1)
    pairs = []
    for start in range(0, len(codes), 1024):
        block = flat[start : start + 1024]
        distances = squares[start : start + 1024, None] + squares[None] - 2 * block @ flat.T
        rows, cols = torch.nonzero(distances <= bound, as_tuple=True)
        for row, col in zip((rows + start).tolist(), cols.tolist(), strict=True):
            if row < col:
                pairs.append((codes[row], codes[col]))
    return pairs


def render_glyphs(
    image_size: int = 32,
    font_fraction: float = 0.7,
    min_fonts: int = 6,
    min_ink: float = 12.0,
    homoglyph_tolerance: float = 0.02,
    faces: Sequence[str] = GLYPH_FACES,
    font_folder: str | os.PathLike | None = None,
    max_code_point: int | None = None,
) -> GlyphSet:
    """Render the glyph classes (no cache; see :func:`load_glyphs` and the module docstring).

    ``max_code_point`` keeps only the characters up to it (None: all; ``0x24F`` is the Latin
    blocks, a few hundred classes for quick tests).
    """
    folder = Path(font_folder) if font_folder is not None else fonts_dir()
    paths = [folder / f"{face}.ttf" for face in faces]
    covered = [_covered(path) for path in paths]
    counts = Counter(code for codes in covered for code in codes)
    candidates = sorted(
        code
        for code, n in counts.items()
        if n >= min_fonts and (max_code_point is None or code <= max_code_point)
    )
    rendered = [
        _render_face(path, [c for c in candidates if c in codes], image_size, font_fraction)
        for path, codes in zip(paths, covered, strict=True)
    ]
    ink: dict[int, list[float]] = {}
    for face_images in rendered:
        for code, pixels in face_images.items():
            ink.setdefault(code, []).append(float(pixels.sum()) / 255.0)
    ink_floor = min_ink * (image_size / 32) ** 2
    kept = {code for code, values in ink.items() if np.median(values) >= ink_floor}
    rendered = [{c: p for c, p in face.items() if c in kept} for face in rendered]

    similar: Counter = Counter()
    for face_images in rendered:
        similar.update(_near_identical_pairs(face_images, homoglyph_tolerance))
    groups = _UnionFind()
    for (a, b), n_similar in similar.items():
        n_both = sum(a in face and b in face for face in rendered)
        if 2 * n_similar >= n_both:
            groups.union(a, b)

    members: dict[int, list[int]] = {}
    for code in sorted(kept):
        members.setdefault(groups.find(code), []).append(code)
    images, labels, font_ids, classes = [], [], [], []
    for root in sorted(members):
        per_face = []
        for face_id, face_images in enumerate(rendered):
            code = next((c for c in members[root] if c in face_images), None)
            if code is not None:
                per_face.append((face_id, face_images[code]))
        if len(per_face) < min_fonts:
            continue
        for face_id, pixels in per_face:
            images.append(pixels)
            labels.append(len(classes))
            font_ids.append(face_id)
        classes.append("".join(chr(c) for c in members[root]))
    return GlyphSet(
        images=np.stack(images) if images else np.zeros((0, image_size, image_size), np.uint8),
        labels=np.asarray(labels, dtype=np.int64),
        fonts=np.asarray(font_ids, dtype=np.int64),
        classes=tuple(classes),
        faces=tuple(faces),
    )


def load_glyphs(
    image_size: int = 32,
    font_fraction: float = 0.7,
    min_fonts: int = 6,
    min_ink: float = 12.0,
    homoglyph_tolerance: float = 0.02,
    faces: Sequence[str] = GLYPH_FACES,
    cache_dir: str | os.PathLike | None = None,
    font_folder: str | os.PathLike | None = None,
    max_code_point: int | None = None,
) -> GlyphSet:
    """:func:`render_glyphs`, cached in ``cache_dir`` (None: :func:`default_cache_dir`).

    The cache file is ``glyphs-<key>.npz`` with ``key`` from :func:`cache_key`; it is written
    atomically (a temporary file, then a rename), so concurrent first runs are safe.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     glyphs = load_glyphs(image_size=16, max_code_point=0x7E, cache_dir=folder)
        ...     again = load_glyphs(image_size=16, max_code_point=0x7E, cache_dir=folder)
        >>> glyphs.images.shape[1:], bool((glyphs.images == again.images).all())
        ((16, 16), True)
    """
    folder = Path(font_folder) if font_folder is not None else fonts_dir()
    faces = tuple(faces)
    missing = [face for face in faces if not (folder / f"{face}.ttf").is_file()]
    if missing:
        raise ValueError(f"`faces` must name .ttf files of {folder}, missing {missing}")
    settings = {
        "image_size": image_size,
        "font_fraction": font_fraction,
        "min_fonts": min_fonts,
        "min_ink": min_ink,
        "homoglyph_tolerance": homoglyph_tolerance,
        "faces": list(faces),
        "max_code_point": max_code_point,
    }
    key = cache_key(settings, [folder / f"{face}.ttf" for face in faces])
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"glyphs-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            return GlyphSet(
                images=stored["images"],
                labels=stored["labels"],
                fonts=stored["fonts"],
                classes=tuple(str(c) for c in stored["classes"]),
                faces=tuple(str(f) for f in stored["faces"]),
            )
    glyphs = render_glyphs(
        image_size,
        font_fraction,
        min_fonts,
        min_ink,
        homoglyph_tolerance,
        faces,
        folder,
        max_code_point,
    )
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(
        partial,
        images=glyphs.images,
        labels=glyphs.labels,
        fonts=glyphs.fonts,
        classes=np.asarray(glyphs.classes, dtype=str),
        faces=np.asarray(glyphs.faces, dtype=str),
    )
    os.replace(partial, path)
    return glyphs
