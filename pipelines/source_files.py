"""Image sources made of one file per image: folder:, glob: and openimages_csv: (local or gs://).

- `folder:DIR`: DIR/<class>/.../<image>. Image id = path relative to DIR ('n01440764/img1.jpg').
  When every class folder name is an ImageNet synset (n01440764, ...) the label is its ImageNet
  class index (`distillery.imagenet.synset_to_index`, e.g. n02123045 -> 281) even for a subset of
  classes; otherwise labels are the positions of the folder names in sorted order (as Keras
  `image_dataset_from_directory` and torchvision `ImageFolder` do). Files directly in DIR belong
  to no class and are skipped with a warning; names starting with '.' are skipped.
- `glob:PATTERN`: every matching file, unlabeled (-1); id = path relative to the directory before
  the first glob character ('glob:/data/oi/train/*.jpg' -> 'abc123.jpg').
- `openimages_csv:CSV[:IMAGE_DIR]`: a CSV with an ImageID column (Open Images image lists).
  The image is IMAGE_DIR/<ImageID>.jpg when IMAGE_DIR is given, else the `path` column (relative
  paths are relative to the CSV's folder), else the `OriginalURL` (or `url`) column, fetched with
  a timeout. Unlabeled (-1): the Open Images role in distillation is unlabeled transfer data.

Files are listed and ordered by path once, when the source is opened; a shard is a tuple of
(image id, location, label) entries.

    python -m pipelines.sources folder:/data/imagenet/val 3
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from distillery import imagenet
from pipelines import file_io
from pipelines.sources import (
    ImageSource,
    ReadFailure,
    SourceExample,
    SourceItem,
    SourceSpecError,
    chunk,
    split_locations,
)

# Seconds before a URL fetch is abandoned (and becomes a ReadFailure).
URL_TIMEOUT_SECONDS = 30.0
PATH_COLUMNS = ("path", "Path", "filepath", "file_path")
URL_COLUMNS = ("OriginalURL", "url", "URL")


@dataclasses.dataclass(frozen=True)
class FileShard:
    """A work unit: (image_id, location, label) entries, read in order."""
    entries: tuple[tuple[str, str, int], ...]


def read_location(location: str) -> bytes:
    """Bytes of a local path, gs:// object, or http(s):// / file:// URL.

    Raises:
      OSError (including urllib.error.URLError) or a Beam IO error when it cannot be read.
    """
    if location.startswith(("http://", "https://", "file://")):
        with urllib.request.urlopen(location, timeout=URL_TIMEOUT_SECONDS) as response:
            return response.read()
    return file_io.read_bytes(location)


def read_file_shard(shard: FileShard) -> Iterator[SourceItem]:
    """Reads each entry; any failure to read becomes a ReadFailure with the reason."""
    for image_id, location, label in shard.entries:
        try:
            encoded = read_location(location)
        except Exception as error:  # pylint: disable=broad-except  # one bad input must not stop the job
            yield ReadFailure(image_id, location, f"cannot read: {type(error).__name__}: {error}")
            continue
        yield SourceExample(image_id, encoded, label, location)


class _FileListSource(ImageSource):
    """A source whose inputs are listed up front as (image_id, location, label) entries."""

    def __init__(self, spec: str, argument: str, max_examples: int | None, examples_per_shard: int):
        super().__init__(spec, max_examples, examples_per_shard)
        self.argument = argument
        start = time.monotonic()
        entries = self._list_entries()
        logging.info("source %r: %d inputs listed in %.1f s", spec, len(entries), time.monotonic() - start)
        self._entries: list[tuple[str, str, int]] | None = entries[:max_examples] if max_examples else entries

    def _list_entries(self) -> list[tuple[str, str, int]]:
        raise NotImplementedError

    def __getstate__(self):
        # Workers need only their shard, not the (possibly million-entry) listing.
        state = dict(self.__dict__)
        state["_entries"] = None
        return state

    def entries(self) -> list[tuple[str, str, int]]:
        """All (image_id, location, label) entries, in order, after max_examples."""
        if self._entries is None:
            entries = self._list_entries()
            self._entries = entries[:self.max_examples] if self.max_examples else entries
        return self._entries

    def shards(self) -> list[FileShard]:
        return [FileShard(entries) for entries in chunk(self.entries(), self.examples_per_shard)]

    def read_shard(self, shard: FileShard) -> Iterator[SourceItem]:
        return read_file_shard(shard)

    def unread_inputs(self, shard: FileShard, already_read: int) -> list[tuple[str, str]]:
        return [(image_id, location) for image_id, location, _ in shard.entries[already_read:]]


def _strip_directory(path: str) -> str:
    stripped = path.rstrip("/")
    return stripped if stripped and not stripped.endswith(":/") else path


class FolderSource(_FileListSource):
    """folder:DIR, one sub-folder per class (see the module docstring for labels)."""

    class_names: tuple[str, ...]
    class_to_label: dict[str, int]

    def _list_entries(self) -> list[tuple[str, str, int]]:
        directory = _strip_directory(self.argument)
        if not file_io.is_directory(directory):
            raise FileNotFoundError(f"source {self.spec!r}: directory {directory} does not exist (or is empty)")
        prefix = directory + "/"
        by_class: list[tuple[str, str, str]] = []  # (class, image_id, path)
        top_level = 0
        for path in file_io.match_files(prefix + "**"):
            relative = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, directory)
            parts = relative.replace(os.sep, "/").split("/")
            if any(part.startswith(".") for part in parts):
                continue
            if len(parts) < 2:
                top_level += 1
                continue
            by_class.append((parts[0], "/".join(parts), path))
        if top_level:
            logging.warning("source %r: skipped %d file(s) directly in %s (not in a class folder)",
                            self.spec, top_level, directory)
        if not by_class:
            raise SourceSpecError(f"source {self.spec!r}: no files in class sub-folders of {directory}")
        self.class_names = tuple(sorted({name for name, _, _ in by_class}))
        self.class_to_label = class_labels(self.class_names)
        return [(image_id, path, self.class_to_label[name]) for name, image_id, path in sorted(by_class,
                                                                                              key=lambda e: e[1])]


def class_labels(class_names: tuple[str, ...]) -> dict[str, int]:
    """Folder name -> label: ImageNet indices when all names are ImageNet synsets, else sorted order."""
    synset_index = imagenet.synset_to_index()
    if all(name in synset_index for name in class_names):
        return {name: synset_index[name] for name in class_names}
    return {name: index for index, name in enumerate(sorted(class_names))}


class GlobSource(_FileListSource):
    """glob:PATTERN, unlabeled files."""

    def _list_entries(self) -> list[tuple[str, str, int]]:
        pattern = self.argument
        paths = file_io.match_files(pattern)
        if not paths:
            raise FileNotFoundError(f"source {self.spec!r}: no file matches {pattern}")
        base = file_io.glob_base(pattern) if file_io.has_glob(pattern) else pattern[:pattern.rfind("/") + 1]
        return [(path[len(base):] if path.startswith(base) else path, path, -1) for path in paths]


class OpenImagesCsvSource(_FileListSource):
    """openimages_csv:CSV[:IMAGE_DIR], unlabeled, ids are the ImageID column."""

    def _list_entries(self) -> list[tuple[str, str, int]]:
        parts = split_locations(self.argument)
        if len(parts) > 2 or not parts[0]:
            raise SourceSpecError(f"source {self.spec!r} is not openimages_csv:CSV[:IMAGE_DIR]")
        csv_path = parts[0]
        image_dir = _strip_directory(parts[1]) if len(parts) == 2 and parts[1] else None
        if not file_io.exists(csv_path):
            raise FileNotFoundError(f"source {self.spec!r}: CSV file {csv_path} does not exist")
        if image_dir is not None and not file_io.is_directory(image_dir):
            raise FileNotFoundError(f"source {self.spec!r}: image directory {image_dir} does not exist")
        csv_folder = csv_path[:csv_path.rfind("/") + 1] if "/" in csv_path else ""
        entries = []
        with file_io.open_file(csv_path) as raw:
            reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            columns = reader.fieldnames or []
            if "ImageID" not in columns:
                raise SourceSpecError(f"source {self.spec!r}: {csv_path} has no ImageID column (columns: {columns})")
            path_column = next((column for column in PATH_COLUMNS if column in columns), None)
            url_column = next((column for column in URL_COLUMNS if column in columns), None)
            if image_dir is None and path_column is None and url_column is None:
                raise SourceSpecError(
                    f"source {self.spec!r}: {csv_path} has neither a path column {PATH_COLUMNS} nor a URL column "
                    f"{URL_COLUMNS}; give an image directory as openimages_csv:CSV:IMAGE_DIR")
            for row in reader:
                image_id = row["ImageID"]
                if image_dir is not None:
                    location = f"{image_dir}/{image_id}.jpg"
                elif path_column is not None and row.get(path_column):
                    location = row[path_column]
                    if not (location.startswith("/") or "://" in location):
                        location = csv_folder + location
                else:
                    location = row.get(url_column or "", "") or ""
                entries.append((image_id, location, -1))
                if self.max_examples and len(entries) >= self.max_examples:
                    break
        return entries
