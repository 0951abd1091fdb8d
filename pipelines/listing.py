"""Listing a file source inside the Beam job: the submitted pipeline holds patterns, never the file list.

A source that can be listed in the job (folder:, glob:, tfrecord:, openimages_csv:) gives a `FileListing`: the patterns to
match and how a matched path becomes an entry (image id, path, class). `ListedShards` expands it on the
workers with `fileio.MatchAll`, labels folder classes from the class names found (a side input), and
groups the entries into work units by a stable hash of their image id, so the units and their keys are
the same on every run over the same files. With `max_examples=N` it keeps the N entries whose image ids
sort first (one small global combine), again the same N on every run.

The pipeline's size therefore does not grow with the number of images (tests/test_extract_scale.py
builds it over 200,000 files), and the launcher lists nothing but what validates the spec.

    python -c "from pipelines import listing; help(listing.ListedShards)"
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio

from pipelines import shard_output

# (image id, path, class name or None): the label is resolved once every class name is known.
Entry = tuple[str, str, str | None]


@dataclasses.dataclass(frozen=True)
class FileListing:
    """What a source lists in the job.

    Attributes:
      patterns: file patterns matched on the workers (`DIR/**`, a glob, ...).
      entry: matched path -> Entry, or None to skip the file (hidden files, files outside class folders).
      make_shard: the work unit of a tuple of labelled (image id, path, label) entries.
      class_labels: class names -> {name: label} (folder:); None = unlabeled (-1).
      examples_per_shard: entries per work unit (on average: units are hash buckets).
      max_examples: keep only the N entries whose image ids sort first.
      per_file: every file is its own work unit, keyed by its path (TFRecord files), instead of hash
        buckets of `examples_per_shard` entries.
      text_file: instead of matching `patterns`, read this text file in splits (its first line is a
        header) and make `entry` of each line (a CSV of images).
    """

    patterns: tuple[str, ...]
    entry: Callable[[str], Entry | None]
    make_shard: Callable[[tuple[tuple[str, str, int], ...]], Any]
    class_labels: Callable[[Sequence[str]], Mapping[str, int]] | None
    examples_per_shard: int
    max_examples: int | None = None
    per_file: bool = False
    text_file: str | None = None


def bucket_of(image_id: str, buckets: int) -> int:
    """A stable bucket of an image id (the same in every process and run, unlike hash())."""
    return int.from_bytes(hashlib.sha256(image_id.encode("utf-8")).digest()[:8], "big") % buckets


def bucket_count(entries: int, examples_per_shard: int) -> int:
    """Work units for `entries` inputs: ceil(entries / examples_per_shard), at least one."""
    return max(1, -(-entries // examples_per_shard))


def _keyed_shard(bucketed: tuple[int, Sequence[tuple[str, str, int]]], buckets: int,
                 make_shard: Callable) -> tuple[str, Any]:
    bucket, entries = bucketed
    width = max(5, len(str(buckets)))
    return f"{bucket:0{width}d}-of-{buckets:0{width}d}", make_shard(tuple(sorted(entries)))


def _entries(path: str, entry: Callable[[str], Entry | None]) -> Iterator[Entry]:
    made = entry(path)
    if made is not None:
        yield made


class ListedShards(beam.PTransform):
    """PBegin -> (key, shard) of every work unit of a FileListing, listed on the workers."""

    def __init__(self, listing: FileListing):
        super().__init__()
        self._listing = listing

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        listing = self._listing
        if listing.text_file is not None:
            lines = pbegin | "ReadLines" >> beam.io.ReadFromText(listing.text_file, skip_header_lines=1)
        else:
            lines = (pbegin
                     | "Patterns" >> beam.Create(list(listing.patterns))
                     | "MatchFiles" >> fileio.MatchAll()
                     | "Paths" >> beam.Map(lambda metadata: metadata.path))
        entries = lines | "ToEntries" >> beam.FlatMap(_entries, entry=listing.entry)
        if listing.per_file:
            return (entries
                    | "OnePerFile" >> beam.Map(lambda item, make: (shard_output.shard_key(item[0].split("://")[-1]),
                                                                   make(((item[0], item[1], -1),))),
                                               make=listing.make_shard))
        if listing.max_examples:
            entries = (entries
                       | "FirstIds" >> beam.combiners.Top.Smallest(listing.max_examples, key=lambda item: item[0])
                       | "Unpack" >> beam.FlatMap(lambda items: items))
        if listing.class_labels is not None:
            labels = beam.pvalue.AsSingleton(
                entries
                | "ClassNames" >> beam.Map(lambda item: item[2])
                | "DistinctNames" >> beam.Distinct()
                | "AllNames" >> beam.combiners.ToList()
                | "Labels" >> beam.Map(lambda names, make: dict(make(tuple(sorted(names)))), make=listing.class_labels))
            labelled = entries | "Label" >> beam.Map(lambda item, table: (item[0], item[1], table[item[2]]), table=labels)
        else:
            labelled = entries | "Unlabeled" >> beam.Map(lambda item: (item[0], item[1], -1))
        buckets = beam.pvalue.AsSingleton(
            labelled
            | "CountEntries" >> beam.combiners.Count.Globally()
            | "Buckets" >> beam.Map(bucket_count, examples_per_shard=listing.examples_per_shard))
        return (labelled
                | "ToBucket" >> beam.Map(lambda item, count: (bucket_of(item[0], count), item), count=buckets)
                | "GroupBuckets" >> beam.GroupByKey()
                | "ToShards" >> beam.Map(_keyed_shard, buckets=buckets, make_shard=listing.make_shard))
