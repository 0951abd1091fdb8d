"""File access for local paths and gs:// through Beam's FileSystems (docs/decisions/005-gcs-and-its-emulator.md).

The same calls work on a laptop and on a cluster worker: `match_files` lists a glob pattern
(`*` stays within one path segment, `**` crosses segments), `read_bytes` reads a whole file,
`open_file` streams one (.gz is decompressed by extension). Before the first gs:// access of a
process, `pipelines.gcs.use_emulator_credentials()` runs so that tests against the GCS emulator do
not wait for Beam's credential search.

    python -c "from pipelines import file_io; print(file_io.match_files('/usr/share/datasets/fashion-mnist/*.gz'))"
"""

from __future__ import annotations

import os
import re
from typing import BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines import gcs

_GLOB_CHARACTERS = re.compile(r"[*?\[]")


def _prepare(path: str) -> None:
    if gcs.is_gcs_path(path):
        gcs.use_emulator_credentials()


def has_glob(pattern: str) -> bool:
    """Whether `pattern` holds a glob character (* ? [)."""
    return bool(_GLOB_CHARACTERS.search(pattern))


def glob_base(pattern: str) -> str:
    """The directory part of `pattern` before its first glob character, ending in '/'.

    'gs://bucket/train/*.jpg' -> 'gs://bucket/train/'; file ids are paths relative to it.
    """
    match = _GLOB_CHARACTERS.search(pattern)
    head = pattern if match is None else pattern[:match.start()]
    return head[:head.rfind("/") + 1]


def match_files(pattern: str) -> list[str]:
    """Sorted paths of the files matching a glob pattern (local or gs://); [] when none match."""
    _prepare(pattern)
    result = FileSystems.match([pattern])[0]
    return sorted(metadata.path for metadata in result.metadata_list)


def exists(path: str) -> bool:
    """Whether a file (or, locally, a directory) exists."""
    _prepare(path)
    return FileSystems.exists(path)


def is_directory(path: str) -> bool:
    """Whether `path` is a directory (local) or a non-empty prefix (gs://)."""
    _prepare(path)
    if gcs.is_gcs_path(path):
        prefix = path.rstrip("/") + "/"
        return bool(FileSystems.match([prefix + "**"], limits=[1])[0].metadata_list)
    return os.path.isdir(path)


def join(base: str, *parts: str) -> str:
    """Joins path parts the way the file system of `base` does."""
    return FileSystems.join(base, *parts)


def open_file(path: str, decompress: bool = True) -> BinaryIO:
    """Opens a file for streaming reads; .gz/.bz2 are decompressed by extension when `decompress`."""
    _prepare(path)
    compression = CompressionTypes.AUTO if decompress else CompressionTypes.UNCOMPRESSED
    return FileSystems.open(path, mime_type="application/octet-stream", compression_type=compression)


def read_to_end(file: BinaryIO) -> bytes:
    """Everything left in `file`. Beam's CompressedFile.read() without a size returns one buffer
    (16 MiB), not the whole stream, so read in chunks until the stream is exhausted."""
    chunks = []
    while chunk := file.read(1 << 24):
        chunks.append(chunk)
    return b"".join(chunks)


def read_bytes(path: str) -> bytes:
    """The exact bytes of a file (no decompression)."""
    with open_file(path, decompress=False) as file:
        return read_to_end(file)
