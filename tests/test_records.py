"""Tests of the soft-label record contract: round trips, exact probabilities, clear errors."""

import numpy as np
import pytest
import tensorflow as tf

from distillery import records


def _softmax(logits, temperature=1.0):
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    weights = np.exp(scaled)
    return weights / weights.sum(axis=-1, keepdims=True)


def _record(top_k=5, num_classes=20, views=3, seed=0, logit_dtype="float32", label=7, **kwargs):
    rng = np.random.default_rng(seed)
    full_logits = rng.normal(scale=3.0, size=(views, num_classes)).astype(np.float32)
    record = records.make_record(
        image_id=f"img-{seed}", label=label, teachers=["teacher_a", "teacher_b"], crops=rng.uniform(0, 1, (views, 4)),
        flips=rng.integers(0, 2, views), full_logits=full_logits, top_k=top_k, logit_dtype=logit_dtype, **kwargs)
    return record, full_logits


def test_round_trip_keeps_every_field(tmp_path):
    record, _ = _record(encoded_image=b"\xff\xd8jpegbytes", image_path="gs://bucket/a.jpg")
    path = str(tmp_path / "r.tfrecord")
    assert records.write_records(path, [record]) == 1
    (back,) = list(records.read_records(path))
    assert back.image_id == "img-0" and back.label == 7
    assert list(back.teachers) == ["teacher_a", "teacher_b"]
    assert back.encoded_image == b"\xff\xd8jpegbytes" and back.image_path == "gs://bucket/a.jpg"
    np.testing.assert_array_equal(back.crops, record.crops)
    np.testing.assert_array_equal(back.flips, record.flips)
    np.testing.assert_array_equal(back.class_ids, record.class_ids)
    np.testing.assert_array_equal(back.logits, record.logits)
    np.testing.assert_array_equal(back.logsumexp, record.logsumexp)
    assert back.spec == records.RecordSpec(num_classes=20, top_k=5, num_views=3, logit_dtype="float32")


def test_unlabeled_record_keeps_minus_one():
    record, _ = _record(label=-1)
    assert records.decode(records.encode(record)).label == -1


def test_crops_are_stored_on_the_uint16_grid_exactly():
    record, _ = _record()
    back = records.decode(records.encode(record))
    np.testing.assert_array_equal(back.crops, record.crops)
    np.testing.assert_allclose(back.crops * records.CROP_SCALE, np.round(back.crops * records.CROP_SCALE), atol=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_full_logit_records_reproduce_softmax_exactly(temperature):
    record, full_logits = _record(top_k=20)
    back = records.decode(records.encode(record))
    for view in range(3):
        np.testing.assert_allclose(back.probabilities(view, temperature), _softmax(full_logits[view], temperature),
                                   rtol=1e-5, atol=1e-7)
    tf_probabilities = records.teacher_distribution(back.class_ids, back.logits, back.logsumexp, 20, temperature)
    np.testing.assert_allclose(tf_probabilities.numpy(), _softmax(full_logits, temperature), rtol=1e-5, atol=1e-7)


def test_top_k_records_reproduce_the_teachers_top_k_probabilities_exactly():
    record, full_logits = _record(top_k=5, num_classes=1000, views=2)
    back = records.decode(records.encode(record))
    for view in range(2):
        expected = _softmax(full_logits[view])
        best = np.argsort(-expected)[:5]
        top = back.top_probabilities(view)
        assert [c for c, _ in top] == list(best)
        np.testing.assert_allclose([p for _, p in top], expected[best], rtol=1e-6)


def test_top_k_distribution_spreads_the_residual_uniformly():
    record, full_logits = _record(top_k=3, num_classes=10, views=1)
    distribution = record.probabilities(0)
    expected = _softmax(full_logits[0])
    best = np.argsort(-expected)[:3]
    np.testing.assert_allclose(distribution[best], expected[best], rtol=1e-5)
    others = np.setdiff1d(np.arange(10), best)
    np.testing.assert_allclose(distribution[others], (1 - expected[best].sum()) / 7, rtol=1e-5)
    # At temperature T the stored definition is q ∝ p ** (1 / T); NumPy and TF agree on it.
    hand = np.where(np.isin(np.arange(10), best), expected, (1 - expected[best].sum()) / 7) ** 0.5
    hand /= hand.sum()
    np.testing.assert_allclose(record.probabilities(0, temperature=2.0), hand, rtol=1e-5)
    tf_version = records.teacher_distribution(record.class_ids, record.logits, record.logsumexp, 10, 2.0)
    np.testing.assert_allclose(tf_version.numpy()[0], hand, rtol=1e-5)


def test_float16_logits_are_within_half_precision():
    record, full_logits = _record(top_k=20, logit_dtype="float16")
    back = records.decode(records.encode(record))
    np.testing.assert_allclose(back.logits, full_logits, rtol=1e-3, atol=1e-3)
    assert len(records.encode(record)) < len(records.encode(_record(top_k=20)[0]))


def test_tf_parser_matches_python_decoder_eagerly_and_in_dataset_map(tmp_path):
    items = [_record(top_k=4, seed=seed)[0] for seed in range(3)]
    path = str(tmp_path / "r.tfrecord")
    records.write_records(path, items)
    spec = records.read_spec(path)
    parse = records.tf_parser(spec)
    eager = [parse(tf.constant(records.encode(item))) for item in items]
    mapped = list(tf.data.TFRecordDataset(path).map(parse).as_numpy_iterator())
    for item, from_eager, from_map in zip(items, eager, mapped):
        for parsed in (from_eager, from_map):
            assert parsed["image_id"] == item.image_id.encode()
            assert int(parsed["label"]) == item.label
            np.testing.assert_array_equal(np.asarray(parsed["class_ids"]), item.class_ids)
            np.testing.assert_array_equal(np.asarray(parsed["logits"]), item.logits)
            np.testing.assert_array_equal(np.asarray(parsed["crops"]), item.crops)
            np.testing.assert_array_equal(np.asarray(parsed["flips"]), item.flips)


def test_tf_parser_handles_full_logits_without_stored_class_ids():
    record, _ = _record(top_k=20)
    parsed = records.tf_parser(record.spec)(tf.constant(records.encode(record)))
    np.testing.assert_array_equal(parsed["class_ids"].numpy(), np.tile(np.arange(20), (3, 1)))


def test_malformed_record_names_file_and_index(tmp_path):
    good = records.encode(_record()[0])
    path = str(tmp_path / "bad.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(good)
        writer.write(good)
        writer.write(b"\x08\x96\x01 definitely not an example")
    with pytest.raises(records.RecordError, match=r"bad\.tfrecord: record 2: "):
        list(records.read_records(path))


def test_record_of_another_version_names_file_and_index(tmp_path):
    example = tf.train.Example()
    example.ParseFromString(records.encode(_record()[0]))
    example.features.feature["distillery/version"].int64_list.value[:] = [99]
    path = str(tmp_path / "old.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(records.encode(_record()[0]))
        writer.write(example.SerializeToString())
    with pytest.raises(records.RecordError, match=r"old\.tfrecord: record 1: record format version 99"):
        list(records.read_records(path))
    with pytest.raises(tf.errors.InvalidArgumentError, match="another format version"):
        list(tf.data.TFRecordDataset(path).map(records.tf_parser(records.read_spec(str(tmp_path / "old.tfrecord")))))


def test_foreign_tf_example_is_refused(tmp_path):
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))}))
    path = str(tmp_path / "foreign.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(example.SerializeToString())
    with pytest.raises(records.RecordError, match=r"foreign\.tfrecord: record 0: not a Distillery soft-label record"):
        records.read_spec(path)


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "cut.tfrecord"
    records.write_records(str(path), [_record(seed=s)[0] for s in range(3)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(records.RecordError, match=r"cut\.tfrecord: record 2: unreadable"):
        list(records.read_records(str(path)))


def test_read_spec_rejects_mixed_datasets_and_empty_files(tmp_path):
    records.write_records(str(tmp_path / "a.tfrecord"), [_record(top_k=5)[0]])
    records.write_records(str(tmp_path / "b.tfrecord"), [_record(top_k=4)[0]])
    with pytest.raises(records.RecordError, match=r"b\.tfrecord: records of .*top_k=4.* do not match"):
        records.read_spec(str(tmp_path / "*.tfrecord"))
    records.write_records(str(tmp_path / "empty.tfrecord"), [])
    with pytest.raises(records.RecordError, match=r"empty\.tfrecord: holds no records"):
        records.read_spec(str(tmp_path / "empty.tfrecord"))
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        records.read_spec(str(tmp_path / "nothing-here*"))


def test_read_records_limit_and_order(tmp_path):
    records.write_records(str(tmp_path / "part-0"), [_record(seed=s)[0] for s in range(3)])
    records.write_records(str(tmp_path / "part-1"), [_record(seed=s)[0] for s in range(3, 5)])
    ids = [r.image_id for r in records.read_records(str(tmp_path / "part-*"))]
    assert ids == [f"img-{s}" for s in range(5)]
    assert [r.image_id for r in records.read_records(str(tmp_path / "part-*"), limit=4)] == ids[:4]


def test_bytes_per_view_is_the_packed_size():
    # Per view: 8 B crop + 1 B flip + 4 B log-sum-exp + k ids (2 B) + k logits (4 B or 2 B).
    assert records.bytes_per_view(5) == pytest.approx(8 + 1 + 4 + 5 * 2 + 5 * 4, abs=1)
    assert records.bytes_per_view(5, logit_dtype="float16") == pytest.approx(8 + 1 + 4 + 5 * 2 + 5 * 2, abs=1)
    assert records.bytes_per_view(1000) == pytest.approx(8 + 1 + 4 + 1000 * 4, abs=1)


def test_make_record_rejects_bad_shapes():
    with pytest.raises(ValueError, match="top_k must be in 1..10"):
        records.make_record("x", 0, ["t"], np.zeros((1, 4)), [False], np.zeros((1, 10)), top_k=11)
    bad = _record()[0]
    bad.logsumexp = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="logsumexp has shape"):
        records.encode(bad)


def _one_hot_distribution(class_ids, logits, logsumexp, num_classes, temperature):
    """The formula teacher_distribution used before its scatter, in NumPy: an [N, k, C] one-hot of the stored
    classes, their scores summed into [N, C], the uniform residual's score elsewhere, then a softmax."""
    log_p = np.asarray(logits, np.float64) - np.asarray(logsumexp, np.float64)[:, None]
    others = num_classes - log_p.shape[1]
    residual = np.clip(1.0 - np.exp(log_p).sum(axis=1), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        log_other = np.log(residual / others) if others else np.full(len(log_p), -np.inf)
    one_hot = np.eye(num_classes)[np.asarray(class_ids)]  # [N, k, C]
    stored = (one_hot * (log_p / temperature)[:, :, None]).sum(axis=1)
    scores = np.where(one_hot.sum(axis=1) > 0, stored, (log_other / temperature)[:, None])
    return _softmax(scores)


@pytest.mark.parametrize("top_k", [1, 3, 37, 100])
def test_the_scattered_distribution_equals_the_one_hot_formula(top_k):
    """On random records (top-k and full logits, k = C = 100) at several temperatures."""
    items = [_record(top_k=top_k, num_classes=100, views=4, seed=seed)[0] for seed in range(8)]
    class_ids = np.concatenate([item.class_ids for item in items])
    logits = np.concatenate([item.logits for item in items])
    logsumexp = np.concatenate([item.logsumexp for item in items])
    for temperature in (1.0, 2.0, 4.0):
        scattered = records.teacher_distribution(class_ids, logits, logsumexp, 100, temperature).numpy()
        np.testing.assert_allclose(scattered, _one_hot_distribution(class_ids, logits, logsumexp, 100, temperature),
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(scattered, records.teacher_distribution_numpy(class_ids, logits, logsumexp, 100,
                                                                                 temperature), rtol=1e-5, atol=1e-7)


def test_non_finite_logits_are_refused_by_the_reader_and_flagged_by_the_graph_parser(tmp_path):
    good, _ = _record(top_k=4)
    for name, value in (("logits", np.nan), ("logits", -np.inf), ("logsumexp", np.inf)):
        bad, _ = _record(top_k=4, seed=1)
        setattr(bad, name, getattr(bad, name).copy())
        getattr(bad, name)[2] = value
        path = str(tmp_path / f"{name}-{value}.tfrecord")
        records.write_records(path, [good, bad])
        with pytest.raises(records.RecordError, match=rf"record 1: non-finite teacher {name} \(NaN or infinity\) "
                                                      r"in view\(s\) \[2\]"):
            list(records.read_records(path))
        assert records.read_spec(path) == good.spec
        flags = [bool(parsed["finite_logits"]) for parsed in
                 tf.data.TFRecordDataset(path).map(records.tf_parser(good.spec)).as_numpy_iterator()]
        assert flags == [True, False]
