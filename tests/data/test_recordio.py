"""The RecordIO reader against an independent writer; pack/info round trip; corrupt files."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from marginkit.data.recordio import (
    IndexedRecordFile,
    RecordIOError,
    RecordWriter,
    main,
    open_insightface,
    unpack_payload,
)
from tests.helpers.insightface_data import (
    REC_MAGIC,
    draw_identities,
    insightface_records,
    ir_header,
    write_property,
    write_rec,
)


@pytest.fixture
def folders(tmp_path):
    return draw_identities(tmp_path / "ids", n_identities=4, per_identity=3, size=12)


@pytest.mark.parametrize("identity_records", [True, False])
@pytest.mark.parametrize("array_labels", [False, True])
def test_reader_reads_an_independently_written_insightface_set(
    tmp_path, folders, identity_records, array_labels
):
    records, labels = insightface_records(folders, identity_records, array_labels)
    write_rec(tmp_path / "train", records)
    write_property(tmp_path, len(folders), 12)
    data = open_insightface(tmp_path / "train")
    files = [path for paths in folders.values() for path in paths]
    assert data.keys.tolist() == list(range(1, len(files) + 1))
    assert data.labels.tolist() == labels
    assert data.num_classes == len(folders) and data.image_size == (12, 12)
    for key, path in zip(data.keys.tolist(), files, strict=True):
        header, image = unpack_payload(data.records.read(key))
        assert image == path.read_bytes()
        assert header.flag == (2 if array_labels else 0)


def test_records_cut_at_the_magic_are_joined_back(tmp_path):
    magic = struct.pack("<I", REC_MAGIC)
    payloads = [b"abcd" + magic + b"efgh" + magic + b"ij", magic + b"x", b"no magic here", b""]
    write_rec(tmp_path / "cut", list(enumerate(payloads)))
    records = IndexedRecordFile(tmp_path / "cut.rec")
    assert [records.read(key) for key in range(len(payloads))] == payloads


def test_package_writer_is_read_by_the_test_framing(tmp_path):
    magic = struct.pack("<I", REC_MAGIC)
    payloads = [b"1234" + magic + b"5", b"hello", magic]
    with RecordWriter(tmp_path / "own") as writer:
        for key, payload in enumerate(payloads):
            writer.write(key, payload)
    write_rec(tmp_path / "ref", list(enumerate(payloads)))
    assert (tmp_path / "own.rec").read_bytes() == (tmp_path / "ref.rec").read_bytes()
    assert (tmp_path / "own.idx").read_text() == (tmp_path / "ref.idx").read_text()


def test_pack_round_trip_keeps_bytes_and_labels(tmp_path, folders, capsys):
    assert main(["pack", str(tmp_path / "ids"), str(tmp_path / "out" / "train")]) == 0
    data = open_insightface(tmp_path / "out" / "train")
    files = [path for paths in folders.values() for path in paths]
    expected_labels = [label for label, paths in enumerate(folders.values()) for _ in paths]
    assert data.labels.tolist() == expected_labels
    assert [unpack_payload(data.records.read(k))[1] for k in data.keys.tolist()] == [
        path.read_bytes() for path in files
    ]
    assert (tmp_path / "out" / "property").read_text() == "4,12,12"
    assert main(["info", str(tmp_path / "out" / "train")]) == 0
    out = capsys.readouterr().out
    assert "identities: 4" in out and "images: 12" in out and "12x12" in out


def test_truncated_rec_is_one_error_naming_file_and_record(tmp_path, folders):
    records, _ = insightface_records(folders)
    write_rec(tmp_path / "train", records)
    rec = tmp_path / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-30])
    with pytest.raises(RecordIOError, match=r"train\.rec.*record \d+"):
        open_insightface(tmp_path / "train")


def test_corrupt_idx_and_bad_magic_are_errors(tmp_path, folders):
    records, _ = insightface_records(folders)
    write_rec(tmp_path / "train", records)
    idx = tmp_path / "train.idx"
    good = idx.read_text()
    idx.write_text(good.replace("\n", "\nnot a line\n", 1))
    with pytest.raises(RecordIOError, match=r"train\.idx: line 2"):
        open_insightface(tmp_path / "train")
    idx.write_text(good)
    data = open_insightface(tmp_path / "train")
    offset = data.records.offset(3)
    blob = bytearray((tmp_path / "train.rec").read_bytes())
    blob[offset : offset + 4] = b"XXXX"
    (tmp_path / "train.rec").write_bytes(bytes(blob))
    with pytest.raises(RecordIOError, match=r"train\.rec: record 3 \(byte \d+\) is corrupt"):
        IndexedRecordFile(tmp_path / "train.rec").read(3)


def test_label_outside_property_is_an_error(tmp_path, folders):
    records, _ = insightface_records(folders)
    write_rec(tmp_path / "train", records)
    write_property(tmp_path, 2, 12)  # 4 identities in the records
    with pytest.raises(RecordIOError, match="outside"):
        open_insightface(tmp_path / "train")


def test_records_without_header_zero_are_all_images(tmp_path):
    write_rec(tmp_path / "plain", [(5, ir_header(1, b"a")), (2, ir_header(0, b"b"))])
    data = open_insightface(tmp_path / "plain")
    assert data.keys.tolist() == [2, 5] and data.labels.tolist() == [0, 1]
    assert data.num_classes == 2


def _read_all(dataset, workers: int, context: str | None) -> list[tuple[int, bytes]]:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, multiprocessing_context=context
    )
    return list(loader)


class _Payloads(torch.utils.data.Dataset):
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        key = int(self.records.keys[index])
        return key, self.records.read(key)


@pytest.mark.parametrize("context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_workers_read_the_same_records(tmp_path, folders, context):
    records, _ = insightface_records(folders)
    write_rec(tmp_path / "train", records)
    opened = IndexedRecordFile(tmp_path / "train.rec")
    opened.read(1)  # the parent's descriptor is open before the workers start
    dataset = _Payloads(opened)
    expected = _read_all(dataset, 0, None)
    assert _read_all(dataset, 2, context) == expected
    assert [payload for _, payload in expected] == [payload for _, payload in records]


def test_reader_does_not_read_the_whole_file(tmp_path, folders, monkeypatch):
    records, _ = insightface_records(folders)
    write_rec(tmp_path / "train", records)
    sizes = []
    real = __import__("os").pread

    def spy(fd, n, offset):
        sizes.append(n)
        return real(fd, n, offset)

    monkeypatch.setattr("marginkit.data.recordio.os.pread", spy)
    data = open_insightface(tmp_path / "train")
    data.records.read(int(data.keys[0]))
    assert max(sizes) < max(len(p) for _, p in records) + 8
    assert np.all(data.labels >= 0)
