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
  paths are relative to the CSV's folder), else the `OriginalURL` (or `url`) column. Unlabeled (-1):
  the Open Images role in distillation is unlabeled transfer data. The CSV is untrusted input: an
  ImageID that is not a plain name is refused, a local or gs:// path must lie inside IMAGE_DIR (or the
  CSV's folder) (`pipelines.path_checks`), and a URL is fetched by `pipelines.url_fetch` (http(s) to
  public addresses only, one deadline, a byte cap, retries on 429/5xx; `FetchSettings`). Each refusal
  is a ReadFailure with its reason.

Files are listed and ordered by path once, when the source is opened; a shard is a tuple of
(image id, location, label) entries.

    python -m pipelines.sources folder:/data/imagenet/val 3
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator

from apache_beam.io.filesystems import FileSystems

from distillery import imagenet
from pipelines import file_io, path_checks, url_fetch
from pipelines import listing as listing_module
from pipelines.sources import (
    ImageSource,
    ReadFailure,
    SourceExample,
    SourceItem,
    SourceSpecError,
    chunk,
    split_locations,
)

PATH_COLUMNS = ("path", "Path", "filepath", "file_path")
URL_COLUMNS = ("OriginalURL", "url", "URL")


@dataclasses.dataclass(frozen=True)
class FileShard:
    """A work unit: (image_id, location, label) entries, read in order."""
    entries: tuple[tuple[str, str, int], ...]


def read_location(location: str, fetch_settings: url_fetch.FetchSettings | None = None) -> bytes:
    """Bytes of a local path, gs:// object, or http(s):// URL (fetched by `url_fetch.fetch` within
    `fetch_settings`); any other scheme (file://, ftp://, data: ...) is refused.

    Raises:
      OSError (url_fetch.FetchError for a refused or failed URL) or a Beam IO error when it cannot be read.
    """
    if url_fetch.is_url(location):
        return url_fetch.fetch(location, fetch_settings or url_fetch.FetchSettings())
    scheme = urllib.parse.urlsplit(location).scheme
    if scheme and scheme != "gs":
        raise url_fetch.FetchError(f"{location}: scheme {scheme!r} is not allowed (local paths, gs://, http and "
                                   "https only)")
    return file_io.read_bytes(location)


def read_file_shard(shard: FileShard, read: Callable[[str, str], bytes] | None = None) -> Iterator[SourceItem]:
    """Reads each entry (with `read(image_id, location)`, default `read_location`); any failure to read
    becomes a ReadFailure with the reason."""
    for image_id, location, label in shard.entries:
        try:
            encoded = read(image_id, location) if read is not None else read_location(location)
        except Exception as error:  # pylint: disable=broad-except  # one bad input must not stop the job
            yield ReadFailure(image_id, location, f"cannot read: {type(error).__name__}: {error}")
            continue
        yield SourceExample(image_id, encoded, label, location)


class _FileListSource(ImageSource):
    """A source whose inputs are (image_id, location, label) entries.

    Opening it only validates the spec (`_validate`); the entries are listed when first asked for, in
    this process (`entries`, `shards`: local runs, tests), or on the Beam workers (`listing`: the job).
    """

    def __init__(self, spec: str, argument: str, max_examples: int | None, examples_per_shard: int):
        super().__init__(spec, max_examples, examples_per_shard)
        self.argument = argument
        self._entries: list[tuple[str, str, int]] | None = None
        self._validate()

    def _validate(self) -> None:
        """Raises SourceSpecError / FileNotFoundError for a spec that cannot work, without listing it all."""
        self.entries()

    def _list_entries(self) -> list[tuple[str, str, int]]:
        raise NotImplementedError

    def read_keys(self, shard: FileShard) -> Iterator[tuple[str, str]]:
        """(image id, location) of the shard's entries, without reading any image."""
        for image_id, location, _ in shard.entries:
            yield image_id, location

    def __getstate__(self):
        # Workers need only their shard, not the (possibly million-entry) listing.
        state = dict(self.__dict__)
        state["_entries"] = None
        return state

    def entries(self) -> list[tuple[str, str, int]]:
        """All (image_id, location, label) entries, in order, after max_examples (listed here, once)."""
        if self._entries is None:
            start = time.monotonic()
            entries = self._list_entries()
            logging.info("source %r: %d inputs listed in %.1f s", self.spec, len(entries), time.monotonic() - start)
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


def folder_entry(prefix: str, path: str) -> tuple[str, str, str | None] | None:
    """(image id, path, class folder) of a file under a folder: source, None for a hidden file or one
    directly in the folder (it belongs to no class)."""
    relative = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, prefix)
    parts = relative.replace(os.sep, "/").split("/")
    if any(part.startswith(".") for part in parts) or len(parts) < 2:
        return None
    return "/".join(parts), path, parts[0]


def glob_entry(base: str, path: str) -> tuple[str, str, None]:
    """(image id relative to the pattern's base, path, no class) of a file of a glob: source."""
    return (path[len(base):] if path.startswith(base) else path), path, None


def _one_match(pattern: str) -> bool:
    """Whether anything matches `pattern` (stops at the first match: nothing is listed)."""
    try:
        return bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)
    except Exception:  # pylint: disable=broad-except  # Beam raises for a missing local folder
        return False


class FolderSource(_FileListSource):
    """folder:DIR, one sub-folder per class (see the module docstring for labels). Image ids are paths
    relative to DIR, unique by construction."""

    unique_ids = True

    def _directory(self) -> str:
        return _strip_directory(self.argument)

    def _validate(self) -> None:
        directory = self._directory()
        if not file_io.is_directory(directory):
            raise FileNotFoundError(f"source {self.spec!r}: directory {directory} does not exist (or is empty)")
        if not _one_match(directory + "/*/**"):
            raise SourceSpecError(f"source {self.spec!r}: no files in class sub-folders of {directory}")

    @property
    def class_names(self) -> tuple[str, ...]:
        """The class folders' names, sorted (lists the folder in this process)."""
        return tuple(sorted({image_id.split("/", 1)[0] for image_id, _, _ in self.entries()}))

    def _list_entries(self) -> list[tuple[str, str, int]]:
        prefix = self._directory() + "/"
        found = [entry for path in file_io.match_files(prefix + "**")
                 if (entry := folder_entry(prefix, path)) is not None]
        if not found:
            raise SourceSpecError(f"source {self.spec!r}: no files in class sub-folders of {self._directory()}")
        labels = class_labels(tuple(sorted({name for _, _, name in found})))
        return [(image_id, path, labels[name]) for image_id, path, name in sorted(found)]

    def listing(self) -> listing_module.FileListing:
        """The folder listed on the workers: one pattern, labels from the class names found there."""
        prefix = self._directory() + "/"
        return listing_module.FileListing(
            patterns=(prefix + "**",), entry=functools.partial(folder_entry, prefix), make_shard=FileShard,
            class_labels=class_labels, examples_per_shard=self.examples_per_shard, max_examples=self.max_examples)


def class_labels(class_names: tuple[str, ...]) -> dict[str, int]:
    """Folder name -> label: ImageNet indices when all names are ImageNet synsets, else sorted order."""
    synset_index = imagenet.synset_to_index()
    if all(name in synset_index for name in class_names):
        return {name: synset_index[name] for name in class_names}
    return {name: index for index, name in enumerate(sorted(class_names))}


class GlobSource(_FileListSource):
    """glob:PATTERN, unlabeled files. Image ids are paths relative to the pattern's base, unique by
    construction."""

    unique_ids = True

    def _base(self) -> str:
        pattern = self.argument
        return file_io.glob_base(pattern) if file_io.has_glob(pattern) else pattern[:pattern.rfind("/") + 1]

    def _validate(self) -> None:
        file_io.exists(self.argument)  # sets up gs:// credentials where needed
        if not _one_match(self.argument):
            raise FileNotFoundError(f"source {self.spec!r}: no file matches {self.argument}")

    def _list_entries(self) -> list[tuple[str, str, int]]:
        paths = file_io.match_files(self.argument)
        if not paths:
            raise FileNotFoundError(f"source {self.spec!r}: no file matches {self.argument}")
        base = self._base()
        return [(image_id, path, -1) for image_id, path, _ in (glob_entry(base, path) for path in paths)]

    def listing(self) -> listing_module.FileListing:
        """The pattern matched on the workers."""
        return listing_module.FileListing(
            patterns=(self.argument,), entry=functools.partial(glob_entry, self._base()), make_shard=FileShard,
            class_labels=None, examples_per_shard=self.examples_per_shard, max_examples=self.max_examples)


@dataclasses.dataclass(frozen=True)
class CsvLayout:
    """Where an Open Images CSV's images are: its columns (from its header) and IMAGE_DIR."""

    csv_path: str
    columns: tuple[str, ...]
    image_dir: str | None
    path_column: str | None
    url_column: str | None
    csv_folder: str

    def entry(self, values: list[str]) -> tuple[str, str, None] | None:
        """(ImageID, location, no class) of one row's values; None for an empty line (no row at all). A row
        whose ImageID is unusable, empty included, is kept: reading it refuses it as a dead letter."""
        if not values:
            return None
        row = dict(zip(self.columns, values))
        image_id = row.get("ImageID", "")
        if self.image_dir is not None:
            location = f"{self.image_dir}/{image_id}.jpg"
        elif self.path_column is not None and row.get(self.path_column):
            location = row[self.path_column]
            if not (location.startswith("/") or "://" in location):
                location = self.csv_folder + location
        else:
            location = row.get(self.url_column or "", "") or ""
        return image_id, location, None

    def line_entry(self, line: str) -> tuple[str, str, None] | None:
        """`entry` of one line of the CSV (rows have no embedded newlines in Open Images' lists)."""
        return self.entry(next(csv.reader([line]), []))


class OpenImagesCsvSource(_FileListSource):
    """openimages_csv:CSV[:IMAGE_DIR], unlabeled, ids are the ImageID column; reading checks every entry
    (see the module docstring) and fetches URLs within `fetch_settings`."""

    def __init__(self, spec: str, argument: str, max_examples: int | None, examples_per_shard: int,
                 fetch_settings: url_fetch.FetchSettings | None = None):
        self.fetch_settings = fetch_settings or url_fetch.FetchSettings()
        super().__init__(spec, argument, max_examples, examples_per_shard)

    def _image_root(self) -> str:
        """The folder every local or gs:// image must lie in: IMAGE_DIR, else the CSV's folder."""
        parts = split_locations(self.argument)
        if len(parts) == 2 and parts[1]:
            return _strip_directory(parts[1])
        return parts[0][:parts[0].rfind("/") + 1] if "/" in parts[0] else ""

    def read_shard(self, shard: FileShard) -> Iterator[SourceItem]:
        return read_file_shard(shard, functools.partial(self._read_checked, self._image_root()))

    def _read_checked(self, root: str, image_id: str, location: str) -> bytes:
        path_checks.check_image_id(image_id)
        if not location:
            raise path_checks.PathRefused("the row has neither a path nor a URL")
        if url_fetch.is_url(location):
            return url_fetch.fetch(location, self.fetch_settings)
        if urllib.parse.urlsplit(location).scheme not in ("", "gs"):
            return read_location(location)  # refuses the scheme
        return file_io.read_bytes(path_checks.inside(root, location))

    def _layout(self) -> CsvLayout:
        """The CSV's columns and where its images are, from its first line only (the launcher's check)."""
        parts = split_locations(self.argument)
        if len(parts) > 2 or not parts[0]:
            raise SourceSpecError(f"source {self.spec!r} is not openimages_csv:CSV[:IMAGE_DIR]")
        csv_path = parts[0]
        image_dir = _strip_directory(parts[1]) if len(parts) == 2 and parts[1] else None
        if not file_io.exists(csv_path):
            raise FileNotFoundError(f"source {self.spec!r}: CSV file {csv_path} does not exist")
        if image_dir is not None and not file_io.is_directory(image_dir):
            raise FileNotFoundError(f"source {self.spec!r}: image directory {image_dir} does not exist")
        with file_io.open_file(csv_path) as raw:
            columns = next(csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline="")), [])
        if "ImageID" not in columns:
            raise SourceSpecError(f"source {self.spec!r}: {csv_path} has no ImageID column (columns: {columns})")
        path_column = next((column for column in PATH_COLUMNS if column in columns), None)
        url_column = next((column for column in URL_COLUMNS if column in columns), None)
        if image_dir is None and path_column is None and url_column is None:
            raise SourceSpecError(
                f"source {self.spec!r}: {csv_path} has neither a path column {PATH_COLUMNS} nor a URL column "
                f"{URL_COLUMNS}; give an image directory as openimages_csv:CSV:IMAGE_DIR")
        return CsvLayout(csv_path=csv_path, columns=tuple(columns), image_dir=image_dir, path_column=path_column,
                         url_column=url_column, csv_folder=csv_path[:csv_path.rfind("/") + 1] if "/" in csv_path else "")

    def _validate(self) -> None:
        self._layout()

    def _list_entries(self) -> list[tuple[str, str, int]]:
        layout = self._layout()
        entries = []
        with file_io.open_file(layout.csv_path) as raw:
            reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            next(reader, None)
            for values in reader:
                entry = layout.entry(values)
                if entry is None:
                    continue
                entries.append((entry[0], entry[1], -1))
                if self.max_examples and len(entries) >= self.max_examples:
                    break
        return entries

    def listing(self) -> listing_module.FileListing | None:
        """The CSV read in splits on the workers (Beam's text source), one entry per row; None with
        --max_examples, which takes the first N rows (the launcher reads only those)."""
        if self.max_examples:
            return None
        layout = self._layout()
        return listing_module.FileListing(
            patterns=(), entry=layout.line_entry, make_shard=FileShard, class_labels=None,
            examples_per_shard=self.examples_per_shard, text_file=layout.csv_path)
