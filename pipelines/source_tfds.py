"""TFDS image sources: `tfds:NAME[:SPLIT]` (imagenet2012, open_images_v4, fashion_mnist, ...).

The dataset must already be prepared in the TFDS data dir (TFDS_DATA_DIR or ~/tensorflow_datasets;
imagenet2012 needs its manual tars, as TFDS documents); nothing is downloaded here. SPLIT is any
TFDS split expression ('validation', 'train[:1%]', 'train[:1000]+validation'); default 'train'.

Images are read with `tfds.decode.SkipDecoding()`, so the encoded bytes are the stored JPEG/PNG
file. Image id: the `file_name` feature (imagenet2012, e.g. 'n01440764_10026.JPEG'), else
`image/filename` (open_images_v4), else `id`, else the TFDS id ('<file>__<index>'). Label: the
`label` ClassLabel (imagenet2012, fashion_mnist); -1 when there is none, and always -1 for
open_images_v4 (multi-label boxes; its role here is unlabeled transfer data).

Shards are absolute index ranges of the split (`examples_per_shard` each), computed from the split
sizes the prepared dataset records; max_examples keeps the first examples in split order. When the
split sizes are unknown (e.g. under `tfds.testing.mock_data` without metadata) the whole split is
one shard, capped by max_examples.

    TFDS_DATA_DIR=~/tensorflow_datasets python -m pipelines.sources tfds:imagenet2012:validation 3
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from pipelines.sources import ImageSource, ReadFailure, SourceExample, SourceItem, SourceSpecError

ID_FEATURES = ("file_name", "image/filename", "id", "image/id")
UNLABELED_DATASETS = ("open_images_v4",)


@dataclasses.dataclass(frozen=True)
class TfdsShard:
    """Examples [start, stop) of one split, or the whole split expression when start is None."""
    split: str
    start: int | None
    stop: int | None


def absolute_ranges(split: str, num_examples: dict[str, int]) -> list[tuple[str, int, int]]:
    """(split name, start, stop) ranges a TFDS split expression selects, in order.

    Raises:
      ValueError: malformed expression, unknown split name, or a slice out of range.
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    @dataclasses.dataclass
    class _Sizes:  # what ReadInstruction.to_absolute reads from a SplitInfo
        num_examples: int
        shard_lengths: list[int]

    infos = {name: _Sizes(count, [count]) for name, count in num_examples.items()}
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
    # TFDS writes a range that starts at 0 or ends at the split's end as None.
    return [(instruction.splitname, instruction.from_ or 0,
             num_examples[instruction.splitname] if instruction.to is None else instruction.to)
            for instruction in instructions]


def range_shards(ranges: list[tuple[str, int, int]], max_examples: int | None,
                 examples_per_shard: int) -> list[TfdsShard]:
    """Cuts ranges into shards of at most `examples_per_shard`, keeping the first `max_examples`."""
    shards, remaining = [], max_examples
    for name, start, stop in ranges:
        if remaining is not None:
            stop = min(stop, start + remaining)
            remaining -= stop - start
        for begin in range(start, stop, examples_per_shard):
            shards.append(TfdsShard(name, begin, min(begin + examples_per_shard, stop)))
        if remaining is not None and remaining <= 0:
            break
    return shards


class TfdsSource(ImageSource):
    """tfds:NAME[:SPLIT]. Image ids are the dataset's own keys (file names, ids): unique by construction
    within a split, so the extraction skips its deduplication pass."""

    unique_ids = True

    def __init__(self, spec: str, argument: str, max_examples: int | None, examples_per_shard: int):
        super().__init__(spec, max_examples, examples_per_shard)
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        name, _, split = argument.partition(":")
        self.name, self.split = name, split or "train"
        self.data_dir = os.environ.get("TFDS_DATA_DIR") or None
        try:
            builder = tfds.builder(name, data_dir=self.data_dir)
        except Exception as error:  # pylint: disable=broad-except  # DatasetNotFoundError and friends
            raise SourceSpecError(f"source {spec!r}: no TFDS dataset {name!r}: {error}") from None
        self._builder = builder
        features = builder.info.features
        self.image_key = next((key for key, feature in features.items()
                               if isinstance(feature, tfds.features.Image)), None)
        if self.image_key is None:
            raise SourceSpecError(f"source {spec!r}: TFDS dataset {name!r} has no image feature")
        self.id_key = next((key for key in ID_FEATURES if key in features), None)
        labeled = "label" in features and isinstance(features["label"], tfds.features.ClassLabel)
        self.label_key = "label" if labeled and builder.name not in UNLABELED_DATASETS else None
        try:
            tfds.core.ReadInstruction.from_spec(self.split)
        except (ValueError, AssertionError) as error:
            raise SourceSpecError(f"source {spec!r}: bad TFDS split {self.split!r}: {error}") from None
        known = {split_name: info.num_examples for split_name, info in builder.info.splits.items()}
        if known:
            try:
                ranges = absolute_ranges(self.split, known)
            except (ValueError, AssertionError, KeyError) as error:
                raise SourceSpecError(f"source {spec!r}: bad TFDS split {self.split!r}: {error}") from None
            self._shards = range_shards(ranges, max_examples, examples_per_shard)
        else:
            # Split sizes unknown: the dataset is not prepared (or TFDS is mocked). Building the
            # dataset fails at once for an unprepared one, so the error still comes before any work.
            try:
                self._dataset(self.split)
            except Exception as error:  # pylint: disable=broad-except  # AssertionError, DatasetNotFoundError
                raise SourceSpecError(f"source {spec!r}: TFDS dataset {name!r} is not prepared in "
                                      f"{builder.data_dir}: {error}") from None
            self._shards = [TfdsShard(self.split, None, max_examples)]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_builder"] = None  # rebuilt on the worker
        return state

    def _get_builder(self) -> Any:
        if self._builder is None:
            import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
            self._builder = tfds.builder(self.name, data_dir=self.data_dir)
        return self._builder

    def _dataset(self, split: str) -> Any:
        """The tf.data.Dataset of a split, parsing only the image (left encoded), id and label."""
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        wanted = {key: True for key in (self.image_key, self.id_key, self.label_key) if key}
        decoders = tfds.decode.PartialDecoding(wanted, decoders={self.image_key: tfds.decode.SkipDecoding()})
        return self._get_builder().as_dataset(split=split, shuffle_files=False, decoders=decoders,
                                              read_config=tfds.ReadConfig(add_tfds_id=True, try_autocache=False))

    def shards(self) -> list[TfdsShard]:
        return list(self._shards)

    def unread_inputs(self, shard: TfdsShard, already_read: int) -> list[tuple[str, str]] | None:
        if shard.start is None:
            return None
        # TFDS ids are only known once read: the origin stands in for the id of what was never read.
        base = shard.split.split("[")[0]
        return [(f"tfds:{self.name}:{base}[{index}]",) * 2 for index in range(shard.start + already_read, shard.stop)]

    def read_shard(self, shard: TfdsShard) -> Iterator[SourceItem]:
        import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
        if shard.start is None:
            split, first, count = shard.split, 0, shard.stop
        else:
            split, first, count = f"{shard.split}[{shard.start}:{shard.stop}]", shard.start, shard.stop - shard.start
        dataset = self._dataset(split)
        if count is not None:
            dataset = dataset.take(count)
        base = shard.split.split("[")[0]
        for offset, example in enumerate(tfds.as_numpy(dataset)):
            index = first + offset
            origin = f"tfds:{self.name}:{base}[{index}]"
            image_id = _text(example[self.id_key]) if self.id_key else _text(example["tfds_id"])
            encoded = example[self.image_key]
            if not isinstance(encoded, bytes) or not encoded:
                yield ReadFailure(image_id, origin, "TFDS example has no encoded image")
                continue
            label = int(example[self.label_key]) if self.label_key else -1
            yield SourceExample(image_id, encoded, label, origin)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
