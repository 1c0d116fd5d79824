"""data=glyphs: coverage, tiny-ink and homoglyph rules, the cache, the splits and the views."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from marginkit.data import GlyphsDataModule, augment_glyphs, glyph_render
from marginkit.data.glyph_render import GLYPH_FACES, fonts_dir, load_glyphs

# Latin, Greek and Cyrillic at 16x16: a few hundred classes, rendered in about a second.
SMALL = {"image_size": 16, "max_code_point": 0x4FF}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("glyph_cache")


@pytest.fixture(scope="module")
def glyphs(cache):
    return load_glyphs(cache_dir=cache, **SMALL)


def _cmaps():
    from fontTools.ttLib import TTFont

    cmaps = []
    for face in GLYPH_FACES:
        font = TTFont(str(fonts_dir() / f"{face}.ttf"), lazy=True)
        cmaps.append(font.getBestCmap())
        font.close()
    return cmaps


def test_every_class_has_one_image_per_covering_face(glyphs):
    cmaps = _cmaps()
    assert glyphs.images.dtype == np.uint8 and glyphs.images.shape[1:] == (16, 16)
    pairs = set(zip(glyphs.labels.tolist(), glyphs.fonts.tolist(), strict=True))
    assert len(pairs) == len(glyphs.labels)  # one image per (class, face)
    counts = np.bincount(glyphs.labels)
    assert counts.min() >= 6 and counts.max() <= len(GLYPH_FACES)
    for label, face in list(pairs)[::50]:
        members = glyphs.classes[label]
        # The face maps one of the class's characters to a real glyph (fontTools, not our code).
        assert any(cmaps[face].get(ord(c), ".notdef") != ".notdef" for c in members)
    assert all(img.any() for img in glyphs.images)  # every image draws ink
    categories = {unicodedata.category(c)[0] for chars in glyphs.classes for c in chars}
    assert categories <= {"L", "N", "P", "S"}


def test_homoglyphs_are_merged_and_look_alikes_kept_apart(glyphs):
    by_char = {c: i for i, chars in enumerate(glyphs.classes) for c in chars}
    assert by_char["B"] == by_char["\u0392"] == by_char["\u0412"]  # Latin, Greek, Cyrillic B
    assert by_char["A"] == by_char["\u0391"] == by_char["\u0410"]
    assert by_char["O"] != by_char["0"] and by_char["l"] != by_char["1"]
    assert len(set(by_char)) == sum(len(chars) for chars in glyphs.classes)  # a partition


def test_tiny_ink_characters_are_dropped(glyphs):
    kept = {c for chars in glyphs.classes for c in chars}
    assert not {"'", ".", "`", "\u2032"} & kept  # apostrophe, full stop, grave, prime
    assert {"W", "@", "%"} <= kept


def test_the_cache_is_read_back_and_keyed_by_the_settings(cache, glyphs, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(glyph_render, "render_glyphs", fail)
    again = load_glyphs(cache_dir=cache, **SMALL)
    np.testing.assert_array_equal(again.images, glyphs.images)
    np.testing.assert_array_equal(again.labels, glyphs.labels)
    assert again.classes == glyphs.classes and again.faces == glyphs.faces
    with pytest.raises(AssertionError, match="rendered again"):  # another setting, another key
        load_glyphs(cache_dir=cache, image_size=16, max_code_point=0x4FF, min_fonts=7)


def test_the_cache_directory_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MARGINKIT_CACHE_DIR", str(tmp_path / "env_cache"))
    load_glyphs(image_size=12, max_code_point=0x7E)
    assert len(list((tmp_path / "env_cache").glob("glyphs-*.npz"))) == 1


def test_rendering_is_deterministic(tmp_path, glyphs):
    fresh = glyph_render.render_glyphs(**SMALL)
    np.testing.assert_array_equal(fresh.images, glyphs.images)


def test_augment_identity_and_strokes_against_torch_pooling():
    images = torch.zeros(6, 1, 12, 12)
    images[:, :, 3:9, 5:7] = 1.0
    still = {"rotation": 0.0, "scale": 0.0, "shear": 0.0, "translation": 0.0, "noise": 0.0}
    same = augment_glyphs(images, torch.Generator().manual_seed(0), stroke_p=0.0, **still)
    torch.testing.assert_close(same, images, atol=1e-6, rtol=0)
    changed = augment_glyphs(images, torch.Generator().manual_seed(0), stroke_p=1.0, **still)
    thick = (images + F.max_pool2d(images, 3, 1, 1)) / 2
    thin = (images - F.max_pool2d(-images, 3, 1, 1)) / 2
    for out, a, b in zip(changed, thick, thin, strict=True):
        assert torch.allclose(out, a, atol=1e-6) or torch.allclose(out, b, atol=1e-6)
    assert changed.sum() != images.sum()


def test_augment_moves_pixels_and_stays_in_range():
    images = torch.rand(4, 1, 16, 16)
    out = augment_glyphs(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert (out - images).abs().mean() > 0.01
    again = augment_glyphs(images, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, again, rtol=0, atol=0)  # a function of the generator


def _datamodule(cache, **kwargs):
    dm = GlyphsDataModule(cache_dir=cache, **SMALL, **kwargs)
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_splits_are_class_disjoint_and_seeded(cache, glyphs):
    dm = _datamodule(cache)
    val, test = set(dm.labels("val").tolist()), set(dm.labels("test").tolist())
    n_classes = len(glyphs.classes)
    assert not val & test
    assert dm.num_classes + len(val) + len(test) == n_classes
    assert len(val) == int(0.1 * n_classes) and len(test) == int(0.3 * n_classes)
    assert dm.labels("train").unique().tolist() == list(range(dm.num_classes))
    assert len(dm.datasets["train"]) + len(dm.labels("val")) + len(dm.labels("test")) == len(
        glyphs.labels
    )
    other = _datamodule(cache, seed=1)
    assert set(other.labels("test").tolist()) != test
    torch.testing.assert_close(
        _datamodule(cache).datasets["test"].tensors[0], dm.datasets["test"].tensors[0]
    )


def test_class_names_name_each_split_s_labels(cache, glyphs):
    dm = _datamodule(cache)
    held_out = set(dm.labels("val").tolist()) | set(dm.labels("test").tolist())
    train_rows = ~np.isin(glyphs.labels, sorted(held_out))  # the training images, in order
    names = dm.class_names("train")
    assert len(names) == dm.num_classes
    for row, label in enumerate(dm.labels("train").tolist()):
        assert names[label] == glyphs.classes[glyphs.labels[train_rows][row]]
    test_names = dm.class_names("test")
    assert [test_names[c] for c in dm.labels("test").tolist()[:50]] == [
        glyphs.classes[c] for c in dm.labels("test").tolist()[:50]
    ]


def test_training_items_are_fresh_views_and_clean_without_augment(cache, glyphs):
    dm = _datamodule(cache)
    first, _ = dm.datasets["train"][3]
    second, _ = dm.datasets["train"][3]
    assert first.shape == (1, 16, 16) and not torch.equal(first, second)
    clean = _datamodule(cache, augment=False)
    train_ids = sorted(
        set(range(len(glyphs.classes)))
        - set(clean.labels("val").tolist())
        - set(clean.labels("test").tolist())
    )
    pixels = torch.from_numpy(glyphs.images[np.isin(glyphs.labels, train_ids)]).float() / 255
    mean, std = pixels.mean(), pixels.std()
    item, _ = clean.datasets["train"][3]
    torch.testing.assert_close(item[0], (pixels[3] - mean) / std)


def test_baseline_features_are_per_pixel_standardised(cache):
    dm = _datamodule(cache)
    features = dm.baseline_features("test")
    assert features.shape == (len(dm.labels("test")), 256) and torch.isfinite(features).all()
    pairs = dm.verification_pairs("test")
    assert len(pairs.issame) == 2 * 10 * 300


def test_batches_have_the_contract_shapes(cache):
    dm = _datamodule(cache, batch_size=32)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 16, 16) and labels.dtype == torch.int64
    images, labels, indices = next(iter(dm.test_dataloader()))
    assert indices.tolist() == list(range(len(indices)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "`val_fraction` \\+ `test_fraction`"),
        ({"test_fraction": 1.5}, "`test_fraction`"),
        ({"min_fonts": 3, "faces": ["DejaVuSans", "STIXGeneral"]}, "`min_fonts`"),
        ({"image_size": 4}, "`image_size`"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GlyphsDataModule(**kwargs)


def test_a_missing_face_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"`faces`.*NoSuchFont"):
        load_glyphs(faces=["DejaVuSans", "NoSuchFont"], cache_dir=tmp_path)


@pytest.mark.slow
def test_the_full_benchmark_sizes_and_raw_pixel_baseline(tmp_path):
    from marginkit.metrics.functional import retrieval_metrics

    dm = GlyphsDataModule(cache_dir=tmp_path)
    dm.setup("fit")
    dm.setup("test")
    n_classes = len(dm.glyphs.classes)
    assert 2500 <= n_classes <= 3600
    counts = np.bincount(dm.glyphs.labels)
    assert counts.min() >= 6 and counts.max() <= 16
    raw = retrieval_metrics(dm.baseline_features("test"), dm.labels("test"), top_k=(1,))
    assert float(raw["map@r"]) <= 0.15  # the README's claim: raw pixels do not solve it
