"""Image sources packed many to a file: tfrecord: and idx: (local or gs://, through Beam FileSystems).

- `tfrecord:GLOB`: TFRecord files of tf.train.Example with `image/encoded` (bytes) and
  `image/class/label` (int64, taken as stored; -1 when absent; note that TFRecords made by the
  Inception/Model Garden ImageNet scripts store 1..1000, with 0 for "background"). Image id:
  `image/source_id`, else `image/filename`, else '<file basename>:<record index>'. GZIP files
  (.gz) are decompressed. One shard per file; with max_examples the files are counted in order and
  the last shard stops at the cap. The TFRecord framing is read here (length, masked CRC32C) so
  that gs:// goes through FileSystems like everything else (tf.io.gfile cannot reach an emulator).
- `idx:DIR[:train|test]`: Fashion-MNIST / MNIST idx files ({train,t10k}-{images-idx3,labels-idx1}
  -ubyte, optionally .gz); default split train. Image id '<split>/<index:05d>', label from the idx
  labels, and the 28x28 grayscale image encoded losslessly as PNG so the rest of the pipeline sees
  ordinary image files. Shards are index ranges. The files are read by `distillery.idx` (a corrupt or
  truncated file is an error naming it).

    python -m pipelines.sources idx:/usr/share/datasets/fashion-mnist:test 3
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
from collections.abc import Iterator

import numpy as np
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from distillery import idx
from pipelines import file_io
from pipelines.listing import FileListing
from pipelines.sources import ImageSource, ReadFailure, SourceExample, SourceItem, SourceSpecError, split_locations
from pipelines.tfrecord_format import iterate_tfrecord


def count_tfrecord(path: str, stop_at: int | None = None) -> tuple[int, Exception | None]:
    """(records readable in a TFRecord file, the error that ended the count early or None); counting
    stops once `stop_at` are counted. A truncated or unreadable file is not an exception here: the
    reader of its shard reports it as a dead letter."""
    count = 0
    try:
        with file_io.open_file(path) as file:
            for _ in iterate_tfrecord(file, verify=False):
                count += 1
                if stop_at is not None and count >= stop_at:
                    break
    except Exception as error:  # pylint: disable=broad-except  # TFRecordFormatError, OSError, gzip errors
        return count, error
    return count, None


@dataclasses.dataclass(frozen=True)
class TFRecordShard:
    """Records [0, stop) of one file (stop None: all)."""
    path: str
    stop: int | None = None


def _any_match(pattern: str) -> bool:
    try:
        return bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)
    except Exception:  # pylint: disable=broad-except  # Beam raises for a missing local folder
        return False


def _tfrecord_entry(path: str) -> tuple[str, str, None]:
    return path, path, None


def _tfrecord_shard(entries: tuple[tuple[str, str, int], ...]) -> TFRecordShard:
    ((_, path, _),) = entries
    return TFRecordShard(path)


def _feature_bytes(feature_map, key: str) -> bytes | None:
    if key in feature_map and feature_map[key].bytes_list.value:
        return feature_map[key].bytes_list.value[0]
    return None


class TFRecordSource(ImageSource):
    """tfrecord:GLOB of tf.Example. One work unit per file; in the job the files are matched on the workers
    (`listing`), unless --max_examples asks for the first N records in file order, which the launcher
    counts. Image ids come from inside the records, so the job deduplicates them (a key pass)."""

    def __init__(self, spec: str, argument: str, max_examples: int | None, examples_per_shard: int):
        super().__init__(spec, max_examples, examples_per_shard)
        self.pattern = argument
        if not file_io.match_files(argument) if max_examples else not _any_match(argument):
            raise FileNotFoundError(f"source {spec!r}: no TFRecord file matches {argument}")
        self._shards: list[TFRecordShard] | None = None

    def _capped(self, paths: list[str], max_examples: int) -> list[TFRecordShard]:
        shards, remaining = [], max_examples
        for path in paths:
            count, error = count_tfrecord(path, stop_at=remaining)
            if error is not None:  # read up to the damage; the shard's reader dead-letters the rest
                logging.warning("source %r: %s is unreadable after record %d (%s)", self.spec, path, count, error)
                shards.append(TFRecordShard(path, None))
                remaining -= count + 1
            elif count:
                shards.append(TFRecordShard(path, count))
                remaining -= count
            if remaining <= 0:
                break
        return shards

    def shards(self) -> list[TFRecordShard]:
        if self._shards is None:
            paths = file_io.match_files(self.pattern)
            self._shards = self._capped(paths, self.max_examples) if self.max_examples else [
                TFRecordShard(path) for path in paths]
        return list(self._shards)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_shards"] = None  # workers get their shard, not the file list
        return state

    def listing(self) -> FileListing | None:
        """Every matching file is a work unit, matched on the workers (None with --max_examples: the
        launcher counts the first N records)."""
        if self.max_examples:
            return None
        return FileListing(patterns=(self.pattern,), entry=_tfrecord_entry, make_shard=_tfrecord_shard,
                           class_labels=None, examples_per_shard=1, max_examples=None, per_file=True)

    def read_shard(self, shard: TFRecordShard) -> Iterator[SourceItem]:
        basename = shard.path.rstrip("/").rsplit("/", 1)[-1]
        index = -1
        try:
            with file_io.open_file(shard.path) as file:
                for index, record in enumerate(iterate_tfrecord(file)):
                    if shard.stop is not None and index >= shard.stop:
                        return
                    yield self._example(record, basename, index, shard.path)
        except Exception as error:  # pylint: disable=broad-except  # the rest of the file is unreadable
            position = f"{basename}:{index + 1}"
            yield ReadFailure(position, shard.path,
                              f"cannot read TFRecord after record {index}: {type(error).__name__}: {error}")

    @staticmethod
    def _example(record: bytes, basename: str, index: int, path: str) -> SourceItem:
        from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
        fallback_id = f"{basename}:{index}"
        origin = f"{path}[{index}]"
        try:
            feature_map = example_pb2.Example.FromString(record).features.feature
        except Exception as error:  # pylint: disable=broad-except  # protobuf DecodeError
            return ReadFailure(fallback_id, origin, f"not a tf.Example: {error}")
        identifier = _feature_bytes(feature_map, "image/source_id") or _feature_bytes(feature_map, "image/filename")
        image_id = identifier.decode("utf-8", "replace") if identifier else fallback_id
        encoded = _feature_bytes(feature_map, "image/encoded")
        if encoded is None:
            return ReadFailure(image_id, origin, "tf.Example has no image/encoded bytes")
        label = -1
        if "image/class/label" in feature_map and feature_map["image/class/label"].int64_list.value:
            label = int(feature_map["image/class/label"].int64_list.value[0])
        return SourceExample(image_id, encoded, label, origin)


# ---------------------------------------------------------------------------------------------- idx

IDX_PREFIXES = {"train": "train", "test": "t10k"}


def _find_idx_file(directory: str, name: str) -> str | None:
    for candidate in (f"{directory}/{name}.gz", f"{directory}/{name}"):
        if file_io.exists(candidate):
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def read_idx(path: str) -> np.ndarray:
    """The uint8 array stored in an idx file (local or gs://, .gz decompressed), read by `distillery.idx`
    through Beam FileSystems; cached per process.

    Raises:
      idx.IdxFormatError: naming the file when it is not a complete idx file of unsigned bytes.
    """
    return idx.read(path, file_io.open_file)


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG bytes of a [H, W] (grayscale) or [H, W, 3] uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class IdxShard:
    """Examples [start, stop) of one idx split."""
    start: int
    stop: int


class IdxSource(ImageSource):
    """idx:DIR[:train|test]. Image ids are split/index: unique by construction."""

    unique_ids = True

    def __init__(self, spec: str, argument: str, max_examples: int | None, examples_per_shard: int):
        super().__init__(spec, max_examples, examples_per_shard)
        parts = split_locations(argument)
        self.split = "train"
        if len(parts) > 1 and parts[-1] in IDX_PREFIXES:
            self.split = parts.pop()
        elif len(parts) > 1:
            raise SourceSpecError(f"source {spec!r}: split must be train or test, got {parts[-1]!r}")
        directory = ":".join(parts).rstrip("/")
        prefix = IDX_PREFIXES[self.split]
        images = _find_idx_file(directory, f"{prefix}-images-idx3-ubyte")
        labels = _find_idx_file(directory, f"{prefix}-labels-idx1-ubyte")
        if images is None or labels is None:
            raise FileNotFoundError(f"source {spec!r}: {directory} lacks {prefix}-images-idx3-ubyte[.gz] "
                                    f"or {prefix}-labels-idx1-ubyte[.gz]")
        self.images_path, self.labels_path = images, labels
        try:
            image_shape = idx.read_header(images, file_io.open_file)
            label_shape = idx.read_header(labels, file_io.open_file)
        except idx.IdxFormatError as error:
            raise SourceSpecError(f"source {spec!r}: {error}") from None
        if len(image_shape) != 3 or len(label_shape) != 1 or image_shape[0] != label_shape[0]:
            raise SourceSpecError(f"source {spec!r}: idx shapes {image_shape} (images) and {label_shape} "
                                  "(labels) do not match")
        self.num_examples = min(image_shape[0], max_examples) if max_examples else image_shape[0]

    def shards(self) -> list[IdxShard]:
        return [IdxShard(start, min(start + self.examples_per_shard, self.num_examples))
                for start in range(0, self.num_examples, self.examples_per_shard)]

    def image_id(self, index: int) -> str:
        """The id of example `index` of the split: '<split>/<index:05d>'."""
        return f"{self.split}/{index:05d}"

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The first `num_examples` images ([N, H, W] uint8) and labels ([N]) as stored, without the
        per-image PNG encoding of `read_shard`: for callers that transform the pixels before encoding
        them once (the demo pads every image to 32x32)."""
        return read_idx(self.images_path)[:self.num_examples], read_idx(self.labels_path)[:self.num_examples]

    def unread_inputs(self, shard: IdxShard, already_read: int) -> list[tuple[str, str]]:
        return [(self.image_id(index), f"{self.images_path}[{index}]")
                for index in range(shard.start + already_read, shard.stop)]

    def read_shard(self, shard: IdxShard) -> Iterator[SourceItem]:
        try:
            images, labels = read_idx(self.images_path), read_idx(self.labels_path)
        except Exception as error:  # pylint: disable=broad-except  # account for every index of the shard
            for index in range(shard.start, shard.stop):
                yield ReadFailure(self.image_id(index), self.images_path, f"cannot read idx file: {error}")
            return
        for index in range(shard.start, shard.stop):
            yield SourceExample(self.image_id(index), encode_png(images[index]), int(labels[index]),
                                f"{self.images_path}[{index}]")
