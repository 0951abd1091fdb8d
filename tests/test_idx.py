"""distillery.idx: a small idx file and its .gz twin read by value; truncated, corrupt and bad-magic files are
errors that name the file, also through the idx: image source.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_idx.py
"""

from __future__ import annotations

import gzip
import os
import re
import struct

import numpy as np
import pytest

from distillery import idx
from pipelines import file_io, source_records
from pipelines.sources import ReadFailure, SourceSpecError, iterate_source, open_source

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGES = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10  # 0, 10, ..., 230
LABELS = np.array([7, 2], np.uint8)


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write(path, content: bytes) -> str:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as file:
        file.write(content)
    return str(path)


def test_reads_an_idx_file_and_its_gz_twin_by_value(tmp_path):
    plain = _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(IMAGES))
    packed = _write(tmp_path / "t10k-images-idx3-ubyte.gz", _idx_bytes(IMAGES))
    for path in (plain, packed):
        array = idx.read(path)
        assert array.dtype == np.uint8 and array.shape == (2, 3, 4)
        assert array[1, 2, 3] == 230 and array[0, 0, 1] == 10
        np.testing.assert_array_equal(array, IMAGES)
        assert idx.read_header(path) == (2, 3, 4)
        np.testing.assert_array_equal(idx.read(path, file_io.open_file), IMAGES)  # Beam FileSystems, as the source
    labels = _write(tmp_path / "t10k-labels-idx1-ubyte.gz", _idx_bytes(LABELS))
    assert idx.read(labels).tolist() == [7, 2]
    with_trailing_bytes = _write(tmp_path / "trailing", _idx_bytes(LABELS) + b"\xff\xff")
    assert idx.read(with_trailing_bytes).tolist() == [7, 2]


@pytest.mark.parametrize("name", ["images", "images.gz"])
def test_truncated_data_names_the_file(tmp_path, name):
    path = _write(tmp_path / name, _idx_bytes(IMAGES)[:-5])
    with pytest.raises(idx.IdxFormatError, match=rf"^{re.escape(path)}: truncated idx data \(19 of 24 bytes\)$"):
        idx.read(path)


def test_truncated_header_names_the_file(tmp_path):
    path = _write(tmp_path / "short", _idx_bytes(IMAGES)[:10])  # magic and 6 of the 12 size bytes
    with pytest.raises(idx.IdxFormatError, match=rf"^{re.escape(path)}: truncated idx header \(10 of 16 bytes\)$"):
        idx.read(path)


@pytest.mark.parametrize("content", [_idx_bytes(IMAGES, type_code=0x0D),  # float32 values
                                     b"\x89PNG\r\n\x1a\n" + bytes(20),
                                     bytes([0, 0, 8, 0]),  # no dimension
                                     b"\0\0"])
def test_a_bad_magic_names_the_file(tmp_path, content):
    path = _write(tmp_path / "not-idx", content)
    with pytest.raises(idx.IdxFormatError, match=rf"^{re.escape(path)}: not an idx file of unsigned bytes \(magic "):
        idx.read(path)


def test_a_corrupt_gz_names_the_file(tmp_path):
    packed = gzip.compress(_idx_bytes(IMAGES))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(packed[:len(packed) // 2])
    with pytest.raises(idx.IdxFormatError, match=rf"^{re.escape(str(cut))}: cannot read idx file: "):
        idx.read(str(cut))
    not_gzip = tmp_path / "labels.gz"
    not_gzip.write_bytes(_idx_bytes(LABELS))  # a .gz name, uncompressed content
    with pytest.raises(idx.IdxFormatError, match=rf"^{re.escape(str(not_gzip))}: cannot read idx file: "):
        idx.read(str(not_gzip))


def test_the_idx_source_reports_bad_files_by_name(tmp_path):
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(LABELS))
    images = _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(IMAGES, type_code=0x0B))
    with pytest.raises(SourceSpecError, match=rf"{re.escape(images)}: not an idx file of unsigned bytes"):
        open_source(f"idx:{tmp_path}:test")
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(IMAGES)[:-1])  # header fine, data short
    items = list(iterate_source(open_source(f"idx:{tmp_path}:test")))
    assert [type(item) for item in items] == [ReadFailure, ReadFailure]
    assert items[0].reason == f"cannot read idx file: {images}: truncated idx data (23 of 24 bytes)"


def test_the_source_and_the_benchmarks_read_real_fashion_mnist_alike():
    path = os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")
    if not os.path.exists(path):
        pytest.skip(f"Fashion-MNIST idx files not in {FASHION_MNIST_DIR} (Debian package dataset-fashion-mnist)")
    labels = idx.read(path)
    assert labels.shape == (10000,) and labels[:5].tolist() == [9, 2, 1, 1, 6]
    np.testing.assert_array_equal(source_records.read_idx(path), labels)
