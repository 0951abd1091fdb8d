"""The TFRecord file format: framing and its masked CRC-32C, read and written without TensorFlow.

Each record is: uint64 length (little-endian), uint32 masked CRC of the length, the data, uint32 masked
CRC of the data. The extraction job reads sources and writes its shards with these, through Beam's
FileSystems (local or gs://), in processes that need not import TensorFlow for it.

    python -c "from pipelines import tfrecord_format as t; print(len(t.frame_record(b'abc')))"   # 19
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c

_CRC_MASK_DELTA = 0xA282EAD8


class TFRecordFormatError(IOError):
    """A TFRecord file whose framing or checksums are wrong."""


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of `data` (the framing's checksum)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def iterate_tfrecord(file: BinaryIO, verify: bool = True) -> Iterator[bytes]:
    """Yields the records of a TFRecord stream: uint64 length, uint32 masked CRC of it, data, CRC.

    Raises:
      TFRecordFormatError: truncated file or checksum mismatch.
    """
    while True:
        header = file.read(12)
        if not header:
            return
        if len(header) != 12:
            raise TFRecordFormatError("truncated record header")
        length, length_crc = struct.unpack("<QI", header)
        if verify and masked_crc(header[:8]) != length_crc:
            raise TFRecordFormatError("corrupt record length (CRC mismatch)")
        data = file.read(length)
        footer = file.read(4)
        if len(data) != length or len(footer) != 4:
            raise TFRecordFormatError("truncated record")
        if verify and masked_crc(data) != struct.unpack("<I", footer)[0]:
            raise TFRecordFormatError("corrupt record data (CRC mismatch)")
        yield data


def frame_record(data: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))
