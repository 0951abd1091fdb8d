"""Image sources behind one interface: every input image as (image id, encoded bytes, label or -1).

A source is opened from a spec string and validated at once (unknown scheme, missing file or
directory, empty glob, bad split: a ValueError or FileNotFoundError naming the spec). It splits its
input into small picklable shards so that a Beam job scales over millions of images:

    source = open_source("folder:gs://bucket/imagenet/train", max_examples=1000)
    (pipeline | beam.Create(source.shards()) | beam.Reshuffle() | beam.FlatMap(source.read_shard))

Reading never raises for one bad input and never drops one silently: an input that cannot be read at
all (missing, unreadable, URL not fetchable) comes out as a `ReadFailure` with the reason, so the job
can write it to its dead letters. Whether the bytes are a decodable image is decided later, by
`distillery.images.decode_rgb`.

Specs (README.md "Image sources" has the full table):
  tfds:NAME[:SPLIT]                 imagenet2012, open_images_v4, fashion_mnist, ... (TFDS_DATA_DIR)
  folder:DIR                        class sub-folders; ImageNet synset names -> ImageNet indices
  glob:PATTERN                      unlabeled files (the Open Images layout)
  openimages_csv:CSV[:IMAGE_DIR]    ImageID plus a path or URL column, or IMAGE_DIR/<ImageID>.jpg
  tfrecord:GLOB                     tf.Example with image/encoded and image/class/label
  idx:DIR[:train|test]              Fashion-MNIST / MNIST idx files, yielded as PNG

    python -m pipelines.sources idx:/usr/share/datasets/fashion-mnist:test 3
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

SCHEMES = ("tfds", "folder", "glob", "openimages_csv", "tfrecord", "idx")
# Work units per source: big enough that per-shard overhead is small, small enough to balance.
DEFAULT_EXAMPLES_PER_SHARD = 256


@dataclasses.dataclass(frozen=True)
class SourceExample:
    """One input image.

    Attributes:
      image_id: stable and unique within its source (relative path, ImageID, TFDS file name, ...).
      encoded: the image file's bytes exactly as stored (PNG for idx sources).
      label: class index, or -1 when the source is unlabeled.
      origin: where it came from (a path, URL or `tfds:NAME:SPLIT[index]`), for messages.
    """
    image_id: str
    encoded: bytes
    label: int
    origin: str


@dataclasses.dataclass(frozen=True)
class ReadFailure:
    """An input that could not be read at all; the job records it as a dead letter."""
    image_id: str
    origin: str
    reason: str


SourceItem = SourceExample | ReadFailure


class SourceSpecError(ValueError):
    """A source spec that cannot be used; the message names the spec."""


class ImageSource(abc.ABC):
    """A validated image source. Sources and their shards pickle, so Beam can ship them to workers.

    Attributes:
      spec: the spec string it was opened from.
      max_examples: cap on the number of inputs read over all shards (None: everything).
    """

    def __init__(self, spec: str, max_examples: int | None, examples_per_shard: int):
        self.spec = spec
        self.max_examples = max_examples
        self.examples_per_shard = examples_per_shard

    @abc.abstractmethod
    def shards(self) -> list[Any]:
        """Small picklable work units; reading all of them in order reads the source in order."""

    @abc.abstractmethod
    def read_shard(self, shard: Any) -> Iterator[SourceItem]:
        """Yields the examples (or read failures) of one shard, in a deterministic order."""

    # Whether image ids cannot repeat by construction (paths, indices): the job then skips its
    # deduplication pass over (id, origin) keys.
    unique_ids = False

    def unread_inputs(self, shard: Any, already_read: int) -> list[tuple[str, str]] | None:
        """(image id, origin) of the inputs of `shard` after its first `already_read`, when the shard
        knows them without reading (file lists, index ranges); None when it does not (a TFRecord file).

        A job whose read of a shard fails part-way dead-letters each of these, so that no input is
        silently lost.
        """
        del shard, already_read
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, max_examples={self.max_examples})"


def iterate_source(source: ImageSource) -> Iterator[SourceItem]:
    """Reads every shard of `source` in order (local runs and tests)."""
    for shard in source.shards():
        yield from source.read_shard(shard)


def split_locations(text: str) -> list[str]:
    """Splits 'a:b' on colons that are not part of a URL scheme ('gs://x/a.csv:/dir' -> 2 parts)."""
    return re.split(r":(?!//)", text)


def chunk(items: Sequence[Any], size: int) -> list[tuple[Any, ...]]:
    """Consecutive tuples of at most `size` items."""
    return [tuple(items[start:start + size]) for start in range(0, len(items), size)]


def open_source(spec: str, max_examples: int | None = None,
                examples_per_shard: int = DEFAULT_EXAMPLES_PER_SHARD, fetch_settings: Any = None) -> ImageSource:
    """Parses and validates a source spec.

    Args:
      spec: 'scheme:argument', see the module docstring.
      max_examples: read at most this many inputs, the first ones in the source's order.
      examples_per_shard: inputs per work unit (files, records or examples).
      fetch_settings: openimages_csv: only: the limits of its URL fetches (`pipelines.url_fetch.FetchSettings`;
        None = the defaults). They travel with the source to the workers.

    Raises:
      SourceSpecError (a ValueError): unknown scheme, bad split, empty glob, malformed argument.
      FileNotFoundError: a file or directory the spec names does not exist.
    """
    # Implementations are imported here: the tfds and tfrecord readers pull in TensorFlow.
    # pylint: disable=import-outside-toplevel
    if max_examples is not None and max_examples < 1:
        raise SourceSpecError(f"max_examples must be positive for source {spec!r}, got {max_examples}")
    if examples_per_shard < 1:
        raise SourceSpecError(f"examples_per_shard must be positive for source {spec!r}")
    scheme, separator, argument = spec.partition(":")
    if not separator or not argument:
        raise SourceSpecError(f"source spec {spec!r} is not 'scheme:argument' "
                              f"(schemes: {', '.join(SCHEMES)})")
    if scheme in ("folder", "glob", "openimages_csv"):
        from pipelines import source_files
        opener = {"folder": source_files.FolderSource, "glob": source_files.GlobSource,
                  "openimages_csv": source_files.OpenImagesCsvSource}[scheme]
    elif scheme in ("tfrecord", "idx"):
        from pipelines import source_records
        opener = {"tfrecord": source_records.TFRecordSource, "idx": source_records.IdxSource}[scheme]
    elif scheme == "tfds":
        from pipelines import source_tfds
        opener = source_tfds.TfdsSource
    else:
        raise SourceSpecError(f"unknown source scheme {scheme!r} in {spec!r} (schemes: {', '.join(SCHEMES)})")
    options = {"fetch_settings": fetch_settings} if scheme == "openimages_csv" and fetch_settings is not None else {}
    return opener(spec, argument, max_examples=max_examples, examples_per_shard=examples_per_shard, **options)


def main(argv: list[str]) -> None:
    """Prints the first examples of a source: `python -m pipelines.sources SPEC [N]`."""
    # Run as `python -m`, this file is __main__: use the importable module's classes.
    from pipelines import sources  # pylint: disable=import-outside-toplevel,import-self
    logging.basicConfig(level=logging.INFO)
    limit = int(argv[2]) if len(argv) > 2 else 5
    source = sources.open_source(argv[1], max_examples=limit)
    print(f"{source!r}: {len(source.shards())} shard(s)")
    for item in sources.iterate_source(source):
        if isinstance(item, sources.SourceExample):
            print(f"{item.image_id}\tlabel={item.label}\t{len(item.encoded)} bytes\t{item.origin}")
        else:
            print(f"FAILED {item.image_id}\t{item.reason}\t{item.origin}")


if __name__ == "__main__":
    main(sys.argv)
