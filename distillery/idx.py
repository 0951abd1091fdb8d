"""idx files (MNIST, Fashion-MNIST: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]) as NumPy arrays.

An idx file is a 4-byte magic (0, 0, the value type, the number of dimensions), one big-endian uint32
size per dimension, then the values in C order. Only unsigned bytes (type 0x08) are read: every
MNIST-style file holds them. A bad magic, a short header, fewer values than the header promises, or a
.gz that does not decompress raise `IdxFormatError` naming the file; bytes after the last value are
ignored. `read` opens local files (.gz decompressed by extension); `read_array` takes any binary
stream, so `pipelines.source_records` reads gs:// through Beam FileSystems with the same code.

    python -c "from distillery import idx; print(idx.read('/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz')[:10])"
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable
from typing import BinaryIO

import numpy as np

UNSIGNED_BYTE = 0x08
_CHUNK_BYTES = 1 << 24


class IdxFormatError(ValueError):
    """A file that is not a complete idx file of unsigned bytes; the message names the file."""


def open_local(path: str) -> BinaryIO:
    """A local idx file opened for reading, decompressed when its name ends in .gz."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read_exactly(file: BinaryIO, size: int, path: str) -> bytes:
    """Up to `size` bytes (fewer only at the end of the file), in chunks: some streams (Beam's
    CompressedFile) return at most one buffer per read."""
    chunks, remaining = [], size
    try:
        while remaining > 0:
            chunk = file.read(min(remaining, _CHUNK_BYTES))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except (EOFError, OSError, zlib.error) as error:  # a truncated or corrupt .gz
        raise IdxFormatError(f"{path}: cannot read idx file: {error}") from None
    return b"".join(chunks)


def read_shape(file: BinaryIO, path: str) -> tuple[int, ...]:
    """The dimensions in the header of an idx stream, leaving the stream at the first value.

    Raises:
      IdxFormatError: naming `path` for a bad magic or a short header.
    """
    magic = _read_exactly(file, 4, path)
    if len(magic) != 4 or magic[:2] != b"\0\0" or magic[2] != UNSIGNED_BYTE or magic[3] < 1:
        raise IdxFormatError(f"{path}: not an idx file of unsigned bytes (magic {magic!r}, expected "
                             "b'\\x00\\x00\\x08' then the number of dimensions)")
    dimensions = magic[3]
    sizes = _read_exactly(file, 4 * dimensions, path)
    if len(sizes) != 4 * dimensions:
        raise IdxFormatError(f"{path}: truncated idx header ({4 + len(sizes)} of {4 + 4 * dimensions} bytes)")
    return struct.unpack(f">{dimensions}I", sizes)


def read_array(file: BinaryIO, path: str) -> np.ndarray:
    """The uint8 array of an idx stream, shaped as its header says (read-only).

    Raises:
      IdxFormatError: naming `path` for a bad magic, a short header or missing values.
    """
    shape = read_shape(file, path)
    expected = int(np.prod(shape))
    data = _read_exactly(file, expected, path)
    if len(data) < expected:
        raise IdxFormatError(f"{path}: truncated idx data ({len(data)} of {expected} bytes)")
    return np.frombuffer(data, np.uint8).reshape(shape)


def read_header(path: str, opener: Callable[[str], BinaryIO] = open_local) -> tuple[int, ...]:
    """The dimensions of the idx file at `path`, reading only its header."""
    with opener(path) as file:
        return read_shape(file, path)


def read(path: str, opener: Callable[[str], BinaryIO] = open_local) -> np.ndarray:
    """The uint8 array stored in the idx file at `path`; `opener` opens it (default: local, .gz by name).

    Raises:
      IdxFormatError: naming `path` when the file is not a complete idx file of unsigned bytes.
      FileNotFoundError: when `path` does not exist.
    """
    with opener(path) as file:
        return read_array(file, path)
