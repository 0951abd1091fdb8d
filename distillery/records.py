"""The soft-label record: the one contract between Distillery's jobs.

Every job reads and writes soft labels only through this module. It imports TensorFlow and NumPy
alone (no Beam), so the trainer and the benchmark do not pull Beam in.

One `tf.train.Example` per image, format version `FORMAT_VERSION`:

| feature                 | type        | what                                                             |
| ----------------------- | ----------- | ---------------------------------------------------------------- |
| `distillery/version`    | int64       | `FORMAT_VERSION`; readers refuse any other                       |
| `image/id`              | bytes       | stable image id (unique within a dataset)                        |
| `image/encoded`         | bytes       | the image (JPEG/PNG), maybe re-encoded smaller; empty when only `image/path` is set |
| `image/path`            | bytes       | where the original image lives; may be empty                     |
| `image/class/label`     | int64       | hard label, or -1 when unlabeled (the Open Images role)          |
| `teacher/names`         | bytes list  | the teacher(s); several = an ensemble whose logits were averaged |
| `teacher/num_classes`   | int64       | C                                                                |
| `teacher/top_k`         | int64       | k; k == C means the full logits are stored                       |
| `teacher/logit_dtype`   | bytes       | `float16` or `float32`                                           |
| `view/count`            | int64       | V                                                                |
| `view/crop`             | bytes       | V x 4 uint16 LE: y_min, x_min, y_max, x_max, fractions of the image x 65535 |
| `view/flip`             | bytes       | V uint8: 1 when the crop was flipped left-right                  |
| `view/class_ids`        | bytes       | V x k uint16 (int32 when C > 65536): top-k classes, best first; absent if k == C |
| `view/logits`           | bytes       | V x k logits of those classes, in `teacher/logit_dtype`          |
| `view/logsumexp`        | bytes       | V float32: log-sum-exp of the teacher's *full* logits            |

Rebuilding probabilities. With the log-sum-exp of the full logits, the probability of each stored class
at temperature 1 is exact: `p_i = exp(logit_i - logsumexp)` (exact to the storage dtype; float32 by
default). The mass the top-k misses, `r = 1 - sum(p_i)`, is spread uniformly over the other C - k
classes. At temperature T the teacher distribution is `q_i ∝ p_i ** (1 / T)` over all C classes (with
the uniform residual for unstored classes). For full logits this is exactly `softmax(logits / T)`;
for top-k it is that same formula applied to the best available estimate of the full distribution.
`teacher_distribution` implements it for NumPy and TensorFlow alike.

Storage per view (measured by `bytes_per_view`, float32 logits / float16 logits, 1000 classes):
see README.md "The soft-label record" for the table that `python -m distillery.records` prints.

    python -m distillery.records            # prints bytes per view for k = 1, 5, 10 and full logits
"""

from __future__ import annotations

import dataclasses
import glob as glob_module
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tensorflow as tf

FORMAT_VERSION = 1
CROP_SCALE = 65535  # crop fractions are stored as uint16 on this grid
LOGIT_DTYPES = ("float16", "float32")

_VERSION = "distillery/version"
_IMAGE_ID = "image/id"
_IMAGE_ENCODED = "image/encoded"
_IMAGE_PATH = "image/path"
_LABEL = "image/class/label"
_TEACHERS = "teacher/names"
_NUM_CLASSES = "teacher/num_classes"
_TOP_K = "teacher/top_k"
_LOGIT_DTYPE = "teacher/logit_dtype"
_VIEW_COUNT = "view/count"
_CROP = "view/crop"
_FLIP = "view/flip"
_CLASS_IDS = "view/class_ids"
_LOGITS = "view/logits"
_LOGSUMEXP = "view/logsumexp"


class RecordError(ValueError):
    """A soft-label record that cannot be read: names the file and the record index."""


@dataclasses.dataclass(frozen=True)
class RecordSpec:
    """What every record of one dataset shares; the trainer builds its graph parser from it."""

    num_classes: int
    top_k: int
    num_views: int
    logit_dtype: str = "float32"

    @property
    def full_logits(self) -> bool:
        return self.top_k == self.num_classes

    @property
    def class_id_dtype(self) -> np.dtype:
        return np.dtype("<u2") if self.num_classes <= 65536 else np.dtype("<i4")


@dataclasses.dataclass
class SoftLabelRecord:
    """One image with its teacher's outputs for V views.

    Attributes:
      image_id: stable id of the image.
      label: hard label, -1 when unlabeled.
      teachers: names of the teachers whose logits were averaged.
      num_classes: C.
      crops: [V, 4] float32 boxes (y_min, x_min, y_max, x_max), fractions of the image, on the
        uint16 grid (use `quantize_crops` before extraction so teacher and student see the same box).
      flips: [V] bool.
      class_ids: [V, k] int32 top-k class indices, best first (for full logits: 0..C-1 in order).
      logits: [V, k] float32 teacher logits of those classes.
      logsumexp: [V] float32 log-sum-exp of the full logits.
      encoded_image: the image bytes, or b"".
      image_path: where the original lives, or "".
      logit_dtype: storage dtype of the logits.
    """

    image_id: str
    label: int
    teachers: Sequence[str]
    num_classes: int
    crops: np.ndarray
    flips: np.ndarray
    class_ids: np.ndarray
    logits: np.ndarray
    logsumexp: np.ndarray
    encoded_image: bytes = b""
    image_path: str = ""
    logit_dtype: str = "float32"

    @property
    def num_views(self) -> int:
        return int(self.crops.shape[0])

    @property
    def top_k(self) -> int:
        return int(self.class_ids.shape[1])

    @property
    def spec(self) -> RecordSpec:
        return RecordSpec(self.num_classes, self.top_k, self.num_views, self.logit_dtype)

    def top_probabilities(self, view: int) -> list[tuple[int, float]]:
        """The stored classes of one view with their exact temperature-1 probabilities, best first."""
        probabilities = np.exp(self.logits[view].astype(np.float64) - float(self.logsumexp[view]))
        return [(int(c), float(p)) for c, p in zip(self.class_ids[view], probabilities)]

    def probabilities(self, view: int, temperature: float = 1.0) -> np.ndarray:
        """The [C] teacher distribution of one view at `temperature` (module docstring)."""
        return teacher_distribution_numpy(
            self.class_ids[view : view + 1], self.logits[view : view + 1],
            self.logsumexp[view : view + 1], self.num_classes, temperature)[0]


def quantize_crops(crops: np.ndarray) -> np.ndarray:
    """Round [V, 4] crop fractions to the stored uint16 grid (so stored == used)."""
    grid = np.round(np.clip(np.asarray(crops, np.float64), 0.0, 1.0) * CROP_SCALE)
    return (grid / CROP_SCALE).astype(np.float32)


def top_k_of_logits(full_logits: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From [V, C] full logits: ([V, k] class ids best first, [V, k] logits, [V] log-sum-exp).

    With top_k == C the classes stay in index order (0..C-1) so no index needs storing.
    """
    full_logits = np.asarray(full_logits, np.float32)
    if full_logits.ndim != 2:
        raise ValueError(f"full_logits must be [views, classes], got shape {full_logits.shape}")
    num_classes = full_logits.shape[1]
    if not 1 <= top_k <= num_classes:
        raise ValueError(f"top_k must be in 1..{num_classes}, got {top_k}")
    as_float64 = full_logits.astype(np.float64)
    peak = as_float64.max(axis=1, keepdims=True)
    logsumexp = (peak[:, 0] + np.log(np.exp(as_float64 - peak).sum(axis=1))).astype(np.float32)
    if top_k == num_classes:
        class_ids = np.broadcast_to(np.arange(num_classes, dtype=np.int32), full_logits.shape).copy()
        return class_ids, full_logits.copy(), logsumexp
    # argsort of the negated logits, stable, so ties keep the lower class index first.
    class_ids = np.argsort(-full_logits, axis=1, kind="stable")[:, :top_k].astype(np.int32)
    return class_ids, np.take_along_axis(full_logits, class_ids, axis=1), logsumexp


def make_record(image_id: str, label: int, teachers: Sequence[str], crops: np.ndarray, flips: np.ndarray,
                full_logits: np.ndarray, top_k: int, encoded_image: bytes = b"", image_path: str = "",
                logit_dtype: str = "float32") -> SoftLabelRecord:
    """Builds a record from the teacher's [V, C] full logits, keeping the top-k of each view."""
    class_ids, logits, logsumexp = top_k_of_logits(full_logits, top_k)
    return SoftLabelRecord(
        image_id=image_id, label=int(label), teachers=list(teachers), num_classes=int(np.shape(full_logits)[1]),
        crops=quantize_crops(crops), flips=np.asarray(flips, bool), class_ids=class_ids,
        logits=logits.astype(logit_dtype).astype(np.float32), logsumexp=logsumexp,
        encoded_image=encoded_image, image_path=image_path, logit_dtype=logit_dtype)


def _bytes_feature(values: Iterable[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _int_feature(values: Iterable[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def encode(record: SoftLabelRecord) -> bytes:
    """Serializes a record to a tf.train.Example (the bytes a TFRecord file holds)."""
    spec = record.spec
    if record.logit_dtype not in LOGIT_DTYPES:
        raise ValueError(f"logit_dtype must be one of {LOGIT_DTYPES}, got {record.logit_dtype!r}")
    shapes = {"crops": (record.crops.shape, (spec.num_views, 4)), "flips": (record.flips.shape, (spec.num_views,)),
              "logits": (record.logits.shape, (spec.num_views, spec.top_k)),
              "logsumexp": (record.logsumexp.shape, (spec.num_views,))}
    for name, (actual, expected) in shapes.items():
        if tuple(actual) != expected:
            raise ValueError(f"record {record.image_id!r}: {name} has shape {tuple(actual)}, expected {expected}")
    if not record.teachers:
        raise ValueError(f"record {record.image_id!r}: at least one teacher name is needed")
    crop_grid = np.round(np.clip(record.crops, 0.0, 1.0) * CROP_SCALE).astype("<u2")
    features = {
        _VERSION: _int_feature([FORMAT_VERSION]),
        _IMAGE_ID: _bytes_feature([record.image_id.encode("utf-8")]),
        _LABEL: _int_feature([record.label]),
        _TEACHERS: _bytes_feature(name.encode("utf-8") for name in record.teachers),
        _NUM_CLASSES: _int_feature([spec.num_classes]),
        _TOP_K: _int_feature([spec.top_k]),
        _LOGIT_DTYPE: _bytes_feature([record.logit_dtype.encode()]),
        _VIEW_COUNT: _int_feature([spec.num_views]),
        _CROP: _bytes_feature([crop_grid.tobytes()]),
        _FLIP: _bytes_feature([record.flips.astype(np.uint8).tobytes()]),
        _LOGITS: _bytes_feature([record.logits.astype(np.dtype(record.logit_dtype).newbyteorder("<")).tobytes()]),
        _LOGSUMEXP: _bytes_feature([record.logsumexp.astype("<f4").tobytes()]),
    }
    if not spec.full_logits:
        features[_CLASS_IDS] = _bytes_feature([record.class_ids.astype(spec.class_id_dtype).tobytes()])
    if record.encoded_image:
        features[_IMAGE_ENCODED] = _bytes_feature([record.encoded_image])
    if record.image_path:
        features[_IMAGE_PATH] = _bytes_feature([record.image_path.encode("utf-8")])
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def _single(example: tf.train.Example, key: str, kind: str, required: bool = True):
    feature = example.features.feature.get(key)
    values = getattr(feature, kind).value if feature is not None else []
    if not values:
        if required:
            raise ValueError(f"missing feature {key!r}")
        return None
    if len(values) != 1:
        raise ValueError(f"feature {key!r} must hold one value, holds {len(values)}")
    return values[0]


def _raw(example: tf.train.Example, key: str, dtype: np.dtype, count: int) -> np.ndarray:
    data = _single(example, key, "bytes_list")
    array = np.frombuffer(data, dtype=dtype)
    if array.size != count:
        raise ValueError(f"feature {key!r} holds {array.size} values of {dtype}, expected {count}")
    return array


def decode(serialized: bytes) -> SoftLabelRecord:
    """Parses one serialized record. Raises ValueError on anything malformed, of another version, or whose
    teacher logits or log-sum-exps are not finite (NaN or infinity: nothing to distill from; the trainer's
    graph parser flags such records instead, `tf_parser`'s `finite_logits`, and the trainer skips them)."""
    record = _parse(serialized)
    for name, values in (("logits", record.logits), ("logsumexp", record.logsumexp)):
        if not np.all(np.isfinite(values)):
            views = sorted({int(index[0]) for index in np.argwhere(~np.isfinite(values))})
            raise ValueError(f"non-finite teacher {name} (NaN or infinity) in view(s) {views}")
    return record


def _parse(serialized: bytes) -> SoftLabelRecord:
    """`decode` without the finiteness check (read_spec reads a file's spec even from a record it would refuse)."""
    example = tf.train.Example()
    try:
        example.ParseFromString(serialized)
    except Exception as error:  # protobuf raises its own DecodeError
        raise ValueError(f"not a tf.train.Example: {error}") from None
    version = _single(example, _VERSION, "int64_list", required=False)
    if version is None:
        raise ValueError(f"not a Distillery soft-label record (no {_VERSION!r} feature)")
    if version != FORMAT_VERSION:
        raise ValueError(f"record format version {version}, this Distillery reads version {FORMAT_VERSION}")
    num_classes = int(_single(example, _NUM_CLASSES, "int64_list"))
    top_k = int(_single(example, _TOP_K, "int64_list"))
    num_views = int(_single(example, _VIEW_COUNT, "int64_list"))
    logit_dtype = _single(example, _LOGIT_DTYPE, "bytes_list").decode()
    if logit_dtype not in LOGIT_DTYPES:
        raise ValueError(f"unknown logit dtype {logit_dtype!r}")
    if not (num_classes >= 1 and 1 <= top_k <= num_classes and num_views >= 1):
        raise ValueError(f"inconsistent sizes: num_classes={num_classes} top_k={top_k} views={num_views}")
    spec = RecordSpec(num_classes, top_k, num_views, logit_dtype)
    if spec.full_logits:
        class_ids = np.broadcast_to(np.arange(num_classes, dtype=np.int32), (num_views, num_classes)).copy()
    else:
        class_ids = _raw(example, _CLASS_IDS, spec.class_id_dtype, num_views * top_k)
        class_ids = class_ids.reshape(num_views, top_k).astype(np.int32)
        if class_ids.max() >= num_classes:
            raise ValueError(f"class id {class_ids.max()} out of range for {num_classes} classes")
    logits = _raw(example, _LOGITS, np.dtype(logit_dtype).newbyteorder("<"), num_views * top_k)
    crops = _raw(example, _CROP, np.dtype("<u2"), num_views * 4).reshape(num_views, 4)
    path = _single(example, _IMAGE_PATH, "bytes_list", required=False)
    return SoftLabelRecord(
        image_id=_single(example, _IMAGE_ID, "bytes_list").decode("utf-8"),
        label=int(_single(example, _LABEL, "int64_list")),
        teachers=[name.decode("utf-8") for name in example.features.feature[_TEACHERS].bytes_list.value],
        num_classes=num_classes,
        crops=(crops.astype(np.float64) / CROP_SCALE).astype(np.float32),
        flips=_raw(example, _FLIP, np.dtype(np.uint8), num_views).astype(bool),
        class_ids=class_ids,
        logits=logits.reshape(num_views, top_k).astype(np.float32),
        logsumexp=_raw(example, _LOGSUMEXP, np.dtype("<f4"), num_views).copy(),
        encoded_image=_single(example, _IMAGE_ENCODED, "bytes_list", required=False) or b"",
        image_path=path.decode("utf-8") if path else "",
        logit_dtype=logit_dtype)


SUMMARY_SUFFIX = ".summary.json"


def summary_shards(path: str) -> list[str]:
    """The record files an extraction summary (PREFIX.summary.json) lists: exactly what that run wrote.

    Raises:
      FileNotFoundError: the summary is missing. RecordError: it lists no shards (not an extraction summary).
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"no extraction summary at {path!r}")
    try:
        with tf.io.gfile.GFile(path) as file:
            shards = json.load(file)["shards"]
        return [str(shard["file"]) for shard in shards]
    except (ValueError, KeyError, TypeError) as error:
        raise RecordError(f"{path}: not an extraction summary with a 'shards' list ({type(error).__name__}: "
                          f"{error})") from None


def record_sources(pattern: str | Sequence[str]) -> list[tuple[str, bool]]:
    """(entry, listed) for each entry of `pattern` (comma-separated or a list), in order.

    An entry ending in .summary.json is an extraction's summary and is replaced by exactly the record files
    it lists (listed=True: file names, not whatever else matches PREFIX-*); any other entry is a glob
    (listed=False). The one place that reads summaries for readers: `expand_paths` here, and the Beam
    accuracy job, which hands each entry to its own file reader.

    Raises:
      FileNotFoundError: a summary is missing or lists no files. RecordError: it is not a summary.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    entries: list[tuple[str, bool]] = []
    for item in (p for entry in patterns for p in entry.split(",") if p):
        if not item.endswith(SUMMARY_SUFFIX):
            entries.append((item, False))
            continue
        listed = summary_shards(item)
        if not listed:
            raise FileNotFoundError(f"{item}: the extraction summary lists no record files")
        entries.extend((path, True) for path in listed)
    return entries


def expand_paths(pattern: str | Sequence[str]) -> list[str]:
    """Files matching a glob (or several, comma-separated or as a list); local or gs:// via tf.io.gfile.

    An entry ending in .summary.json stands for exactly the record files it lists (`record_sources`).

    Raises:
      FileNotFoundError: naming the pattern when nothing matches.
    """
    paths: list[str] = []
    for item, listed in record_sources(pattern):
        if listed:
            paths.append(item)
            continue
        if "://" in item:
            matched = sorted(tf.io.gfile.glob(item))
        else:
            matched = sorted(glob_module.glob(item)) or sorted(tf.io.gfile.glob(item))
        if not matched:
            raise FileNotFoundError(f"no soft-label record files match {item!r}")
        paths.extend(matched)
    return paths


def iterate_serialized(path: str) -> Iterator[bytes]:
    """The raw records of one TFRecord file; a corrupt file raises RecordError naming it."""
    index = 0
    try:
        for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
            yield serialized
            index += 1
    except tf.errors.OpError as error:
        raise RecordError(f"{path}: record {index}: unreadable TFRecord data ({error.message.splitlines()[0]})") from None


def read_records(pattern: str | Sequence[str], limit: int | None = None) -> Iterator[SoftLabelRecord]:
    """Yields the records of every file matching `pattern`, in file order.

    Raises:
      FileNotFoundError: when nothing matches.
      RecordError: naming the file and the record index of the first malformed record.
    """
    count = 0
    for path in expand_paths(pattern):
        for index, serialized in enumerate(iterate_serialized(path)):
            if limit is not None and count >= limit:
                return
            try:
                yield decode(serialized)
            except ValueError as error:
                raise RecordError(f"{path}: record {index}: {error}") from None
            count += 1


@dataclasses.dataclass(frozen=True)
class Survey:
    """What the first record of every file of a dataset says: their shared spec, and whether they all hold
    their image bytes (extraction writes every record of a run alike: stored images, or paths only)."""

    spec: RecordSpec
    images_stored: bool
    first_records: tuple[str, ...] = ()  # per file, in order: sha256 (16 hex) of its first serialized record


def survey(pattern: str | Sequence[str]) -> Survey:
    """The Survey of `pattern`'s files, from the first record of every file (one read each).

    Raises:
      RecordError: when a file is empty, malformed, or disagrees with the first file.
    """
    spec, first_path, images_stored, first_records = None, None, True, []
    for path in expand_paths(pattern):
        first = next(iter(iterate_serialized(path)), None)
        if first is None:
            raise RecordError(f"{path}: holds no records")
        first_records.append(hashlib.sha256(first).hexdigest()[:16])
        try:
            record = _parse(first)
        except ValueError as error:
            raise RecordError(f"{path}: record 0: {error}") from None
        if spec is None:
            spec, first_path = record.spec, path
        elif record.spec != spec:
            raise RecordError(f"{path}: records of {record.spec} do not match {first_path} ({spec})")
        images_stored = images_stored and bool(record.encoded_image)
    return Survey(spec, images_stored, tuple(first_records))


def read_spec(pattern: str | Sequence[str]) -> RecordSpec:
    """The RecordSpec shared by the records of `pattern`, checked on the first record of every file.

    Raises:
      RecordError: when a file is empty, malformed, or disagrees with the first file.
    """
    return survey(pattern).spec


def write_records(path: str, records: Iterable[SoftLabelRecord]) -> int:
    """Writes records to one TFRecord file; returns how many."""
    count = 0
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(encode(record))
            count += 1
    return count


def teacher_distribution_numpy(class_ids: np.ndarray, logits: np.ndarray, logsumexp: np.ndarray,
                               num_classes: int, temperature: float = 1.0) -> np.ndarray:
    """[N, C] teacher distributions at `temperature` from [N, k] stored views (module docstring)."""
    class_ids = np.asarray(class_ids, np.int64)
    log_p = np.asarray(logits, np.float64) - np.asarray(logsumexp, np.float64)[:, None]
    count, top_k = class_ids.shape
    residual = np.clip(1.0 - np.exp(log_p).sum(axis=1), 0.0, 1.0)
    others = num_classes - top_k
    with np.errstate(divide="ignore"):
        log_other = np.log(residual / others) if others else np.full(count, -np.inf)
    scores = np.repeat((log_other / temperature)[:, None], num_classes, axis=1)
    np.put_along_axis(scores, class_ids, log_p / temperature, axis=1)
    scores -= scores.max(axis=1, keepdims=True)
    weights = np.exp(scores)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def teacher_distribution(class_ids: tf.Tensor, logits: tf.Tensor, logsumexp: tf.Tensor,
                         num_classes: int, temperature: float = 1.0) -> tf.Tensor:
    """TensorFlow twin of `teacher_distribution_numpy`: [N, C] float32 from [N, k] stored views."""
    log_p = tf.cast(logits, tf.float32) - tf.cast(logsumexp, tf.float32)[:, None]
    top_k = log_p.shape[-1]
    others = num_classes - top_k
    if others:
        residual = tf.clip_by_value(1.0 - tf.reduce_sum(tf.exp(log_p), axis=1), 0.0, 1.0)
        log_other = tf.math.log(residual / others)  # -inf where nothing is left: weight 0 below
    else:
        log_other = tf.fill(tf.shape(log_p)[:1], -np.inf)
    base = tf.tile((log_other / temperature)[:, None], [1, num_classes])
    # The stored classes' scores scattered into the [N, C] residual scores: no [N, k, C] one-hot, which for
    # full logits is N x C x C floats (peak memory before and after: docs/results.md "Training").
    class_ids = tf.cast(class_ids, tf.int32)
    rows = tf.broadcast_to(tf.range(tf.shape(class_ids)[0])[:, None], tf.shape(class_ids))
    scores = tf.tensor_scatter_nd_update(base, tf.stack([rows, class_ids], axis=-1), log_p / temperature)
    return tf.nn.softmax(scores, axis=-1)


def tf_parser(spec: RecordSpec):
    """A function serialized -> dict of tensors, for tf.data.map over records of `spec`.

    The dict holds: image_id (string), encoded_image (string, may be empty), image_path (string, may be
    empty), label (int64), crops [V, 4] float32,
    flips [V] bool, class_ids [V, k] int32, logits [V, k] float32, logsumexp [V] float32, and finite_logits
    (bool): whether every logit and log-sum-exp is finite. A record `decode` refuses for non-finite logits is
    flagged here, not raised on, so that a tf.data pipeline can skip it and count it; anything malformed
    (sizes, another format version) still raises.
    """
    feature_spec = {
        _VERSION: tf.io.FixedLenFeature([], tf.int64),
        _IMAGE_ID: tf.io.FixedLenFeature([], tf.string),
        _IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
        _IMAGE_PATH: tf.io.FixedLenFeature([], tf.string, default_value=""),
        _LABEL: tf.io.FixedLenFeature([], tf.int64),
        _CROP: tf.io.FixedLenFeature([], tf.string),
        _FLIP: tf.io.FixedLenFeature([], tf.string),
        _LOGITS: tf.io.FixedLenFeature([], tf.string),
        _LOGSUMEXP: tf.io.FixedLenFeature([], tf.string),
    }
    if not spec.full_logits:
        feature_spec[_CLASS_IDS] = tf.io.FixedLenFeature([], tf.string)
    views, top_k = spec.num_views, spec.top_k
    logit_dtype = tf.float16 if spec.logit_dtype == "float16" else tf.float32

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.io.parse_single_example(serialized, feature_spec)
        version_ok = tf.debugging.assert_equal(
            features[_VERSION], tf.constant(FORMAT_VERSION, tf.int64),
            message=f"soft-label record of another format version (this Distillery reads {FORMAT_VERSION})")
        with tf.control_dependencies([version_ok]):
            crops = tf.cast(tf.io.decode_raw(features[_CROP], tf.uint16), tf.float32) / CROP_SCALE
        if spec.full_logits:
            class_ids = tf.tile(tf.range(top_k, dtype=tf.int32)[None, :], [views, 1])
        else:
            raw_dtype = tf.uint16 if spec.class_id_dtype == np.dtype("<u2") else tf.int32
            class_ids = tf.cast(tf.io.decode_raw(features[_CLASS_IDS], raw_dtype), tf.int32)
        logits = tf.reshape(tf.cast(tf.io.decode_raw(features[_LOGITS], logit_dtype), tf.float32), [views, top_k])
        logsumexp = tf.reshape(tf.io.decode_raw(features[_LOGSUMEXP], tf.float32), [views])
        return {
            "image_id": features[_IMAGE_ID],
            "encoded_image": features[_IMAGE_ENCODED],
            "image_path": features[_IMAGE_PATH],
            "label": features[_LABEL],
            "crops": tf.reshape(crops, [views, 4]),
            "flips": tf.reshape(tf.io.decode_raw(features[_FLIP], tf.uint8) > 0, [views]),
            "class_ids": tf.reshape(class_ids, [views, top_k]),
            "logits": logits,
            "logsumexp": logsumexp,
            "finite_logits": tf.reduce_all(tf.math.is_finite(logits)) & tf.reduce_all(tf.math.is_finite(logsumexp)),
        }

    return parse


def tf_batch_parser(spec: RecordSpec):
    """A function [n] serialized -> dict of [n, ...] tensors: `tf_parser` for a batch of records at once
    (one parse for the batch: the trainer's input pipeline parses each record file in chunks).

    The dict holds what tf_parser's does, each with a leading [n] (no image_id), plus well_formed [n] bool:
    False for a record of another format version, with missing features, sizes that disagree with `spec`
    or class ids out of range. Such records are flagged, not raised on (their other values are zeros or
    truncated bytes); only bytes that are not tf.train.Examples at all raise, for the whole batch.
    """
    views, top_k = spec.num_views, spec.top_k
    logit_dtype = tf.float16 if spec.logit_dtype == "float16" else tf.float32
    logit_bytes = 2 if spec.logit_dtype == "float16" else 4
    id_dtype, id_bytes = (tf.uint16, 2) if spec.class_id_dtype == np.dtype("<u2") else (tf.int32, 4)
    sizes = {_CROP: views * 4 * 2, _FLIP: views, _LOGITS: views * top_k * logit_bytes, _LOGSUMEXP: views * 4}
    if not spec.full_logits:
        sizes[_CLASS_IDS] = views * top_k * id_bytes
    feature_spec = {name: tf.io.FixedLenFeature([], tf.string, default_value="") for name in sizes}
    feature_spec.update({_VERSION: tf.io.FixedLenFeature([], tf.int64, default_value=0),
                         _IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
                         _IMAGE_PATH: tf.io.FixedLenFeature([], tf.string, default_value=""),
                         _LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1)})

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.io.parse_example(serialized, feature_spec)
        count = tf.shape(serialized)[0]
        well_formed = tf.equal(features[_VERSION], FORMAT_VERSION)
        for name, size in sizes.items():
            well_formed &= tf.equal(tf.strings.length(features[name]), size)

        def raw(name, dtype, shape):
            read_as = tf.uint16 if dtype == tf.float16 else dtype  # DecodePaddedRaw has no float16 kernel
            values = tf.io.decode_raw(features[name], read_as, fixed_length=sizes[name])  # zero-padded when short
            values = tf.bitcast(values, tf.float16) if dtype == tf.float16 else values
            return tf.reshape(values, tf.concat([[count], shape], axis=0))

        if spec.full_logits:
            class_ids = tf.broadcast_to(tf.range(top_k, dtype=tf.int32), tf.stack([count, views, top_k]))
        else:
            class_ids = tf.cast(raw(_CLASS_IDS, id_dtype, [views, top_k]), tf.int32)
            in_range = (class_ids >= 0) & (class_ids < spec.num_classes)
            well_formed &= tf.reduce_all(in_range, axis=[1, 2])
            class_ids = tf.where(in_range, class_ids, 0)
        logits = tf.cast(raw(_LOGITS, logit_dtype, [views, top_k]), tf.float32)
        logsumexp = raw(_LOGSUMEXP, tf.float32, [views])
        return {
            "encoded_image": features[_IMAGE_ENCODED],
            "image_path": features[_IMAGE_PATH],
            "label": features[_LABEL],
            "crops": tf.cast(raw(_CROP, tf.uint16, [views, 4]), tf.float32) / CROP_SCALE,
            "flips": raw(_FLIP, tf.uint8, [views]) > 0,
            "class_ids": class_ids,
            "logits": logits,
            "logsumexp": logsumexp,
            "finite_logits": (tf.reduce_all(tf.math.is_finite(logits), axis=[1, 2])
                              & tf.reduce_all(tf.math.is_finite(logsumexp), axis=1)),
            "well_formed": well_formed,
        }

    return parse


def bytes_per_view(top_k: int, num_classes: int = 1000, logit_dtype: str = "float32") -> float:
    """Measured serialized bytes each extra view adds to a record (difference of 11- and 1-view records)."""
    rng = np.random.default_rng(0)

    def size(views: int) -> int:
        record = make_record("img", 3, ["teacher"], rng.uniform(0, 1, (views, 4)), rng.integers(0, 2, views),
                             rng.normal(size=(views, num_classes)).astype(np.float32), top_k, logit_dtype=logit_dtype)
        return len(encode(record))

    return (size(11) - size(1)) / 10


def main(argv: Sequence[str] | None = None) -> None:
    del argv
    print(f"soft-label record format version {FORMAT_VERSION}: bytes per view, 1000 classes")
    print("| top-k | float32 logits | float16 logits |\n| --- | --- | --- |")
    for top_k in (1, 5, 10, 1000):
        name = "full (1000)" if top_k == 1000 else str(top_k)
        print(f"| {name} | {bytes_per_view(top_k):.1f} | {bytes_per_view(top_k, logit_dtype='float16'):.1f} |")


if __name__ == "__main__":
    main(sys.argv)
