"""The .bin loader: Python 2 and 3 pickles load, anything that would run code is refused."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from marginkit.data.verification_bin import UnsafePickleError, folder_verification_set, load_bin
from tests.helpers.insightface_data import draw_identities, py2_bin_pickle

IMAGES = [b"\xff\xd8jpeg'one\"", bytes(range(256)) * 2, b"\x00", b"x" * 300]
ISSAME = [True, False]


@pytest.mark.parametrize("protocol", [0, 2])
def test_python2_pickles_load(tmp_path, protocol):
    path = tmp_path / "lfw.bin"
    path.write_bytes(py2_bin_pickle(IMAGES, ISSAME, protocol))
    # the bytes are what Python 2 writes: no global, str as (SHORT_)BINSTRING / STRING
    assert b"c_codecs" not in path.read_bytes()
    images, issame = load_bin(path)
    assert images == IMAGES and issame.dtype == np.bool_ and issame.tolist() == ISSAME


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("as_array", [False, True])
def test_python3_pickles_load(tmp_path, protocol, as_array):
    path = tmp_path / "agedb_30.bin"
    flags = np.array(ISSAME) if as_array else ISSAME
    path.write_bytes(pickle.dumps((IMAGES, flags), protocol=protocol))
    images, issame = load_bin(path)
    assert images == IMAGES and issame.tolist() == ISSAME


class _Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_bin_that_would_run_a_command_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(([_Exploit(f"touch {marker}")], [True]), protocol=protocol))
    with pytest.raises(UnsafePickleError) as caught:
        load_bin(path)
    message = str(caught.value)
    assert str(path) in message and "system" in message and "\n" not in message
    assert not marker.exists()


def test_other_globals_and_non_bool_arrays_are_refused(tmp_path):
    path = tmp_path / "cfp_fp.bin"
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafePickleError, match=r"cfp_fp\.bin.*builtins\.eval"):
        load_bin(path)
    path.write_bytes(pickle.dumps((IMAGES, np.array([1.5, 2.5])), protocol=2))
    with pytest.raises(UnsafePickleError, match="bool"):
        load_bin(path)
    path.write_bytes(pickle.dumps((IMAGES, np.array([None, None], dtype=object)), protocol=2))
    with pytest.raises(UnsafePickleError):
        load_bin(path)


def test_wrong_shapes_are_errors(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(py2_bin_pickle(IMAGES[:3], ISSAME))
    with pytest.raises(UnsafePickleError, match="3 images for 2 pairs"):
        load_bin(path)
    path.write_bytes(b"\x80\x02]q\x00")  # truncated
    with pytest.raises(UnsafePickleError, match=r"x\.bin"):
        load_bin(path)


def test_folder_and_pairs_give_the_bin_bytes(tmp_path):
    folders = draw_identities(tmp_path / "lfw", n_identities=3, per_identity=2, size=8)
    lines = ["1\t1", "id_000\t1\t2", "id_001\t1\tid_002\t2"]
    (tmp_path / "lfw" / "pairs.txt").write_text("\n".join(lines) + "\n")
    for folder in folders:  # LFW names: <name>/<name>_000n.jpg
        for number, path in enumerate(folders[folder], start=1):
            path.rename(path.parent / f"{folder}_{number:04d}.jpg")
    images, issame = folder_verification_set(tmp_path / "lfw")
    root = tmp_path / "lfw"
    expected = [
        (root / "id_000/id_000_0001.jpg").read_bytes(),
        (root / "id_000/id_000_0002.jpg").read_bytes(),
        (root / "id_001/id_001_0001.jpg").read_bytes(),
        (root / "id_002/id_002_0002.jpg").read_bytes(),
    ]
    assert images == expected and issame.tolist() == [True, False]


def test_build_on_the_stand_ins_changes_nothing_that_outlives_the_load(tmp_path):
    import marginkit.data.verification_bin as module

    before = dict(vars(module._BoolArray)), dict(vars(module._BoolDtype))
    path = tmp_path / "lfw.bin"
    # GLOBAL numpy ndarray, then BUILD (None, {"__setstate__": 1}) on it (slot state: setattr)
    path.write_bytes(b"\x80\x02cnumpy\nndarray\nN}U\x0c__setstate__K\x01s\x86b.")
    with pytest.raises(UnsafePickleError):
        load_bin(path)
    # GLOBAL numpy dtype (a per-load function): BUILD on it stays with that function
    path.write_bytes(b"\x80\x02cnumpy\ndtype\nN}U\x08__code__K\x01s\x86b.")
    with pytest.raises(UnsafePickleError):
        load_bin(path)
    assert (dict(vars(module._BoolArray)), dict(vars(module._BoolDtype))) == before
    path.write_bytes(pickle.dumps((IMAGES, np.array(ISSAME)), protocol=2))
    assert load_bin(path)[1].tolist() == ISSAME
