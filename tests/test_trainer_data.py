"""The input pipeline replays stored views: pixels, teacher distributions and labels checked by value."""

import os

import numpy as np
import pytest
import trainer_fixtures as fixtures

from distillery import cpus, numpy_views, record_pixels, records, views
from trainer import data

TEMPERATURE = 2.0


@pytest.fixture(scope="module")
def record_glob(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    teacher = fixtures.tiny_teacher_model()
    return fixtures.write_tiny_records(directory, teacher, num_files=2, per_file=6, num_views=3, top_k=2,
                                       unlabeled_every=4)


def _all_views(pattern, size):
    """(record, view index, [S, S, 3] pixels) for every stored view, computed eagerly."""
    return [(record, view, record_pixels.stored_view(record, view, size))
            for record in records.read_records(pattern) for view in range(record.num_views)]


def test_training_batches_replay_stored_views_with_their_teacher_distribution(record_glob):
    candidates = _all_views(record_glob, 32)
    dataset = data.make_dataset(record_glob, 32, 4, training=True, seed=3, shuffle_buffer=64, temperature=TEMPERATURE,
                                teacher_image_size=(24, 24))
    matched_views = {}
    for images, targets in dataset.take(6):  # 24 examples = two passes over the 12 records
        assert images.shape == (4, 32, 32, 3) and targets["teacher_probabilities"].shape == (4, fixtures.NUM_CLASSES)
        for i in range(4):
            errors = [np.abs(pixels - images[i].numpy()).max() for _, _, pixels in candidates]
            record, view, _ = candidates[int(np.argmin(errors))]
            assert min(errors) < 1e-3  # the tf.data.map pixels equal record_pixels' NumPy view of a stored view
            assert int(targets["labels"][i]) == record.label
            np.testing.assert_allclose(targets["teacher_probabilities"][i].numpy(),
                                       record.probabilities(view, TEMPERATURE), rtol=1e-5, atol=1e-7)
            teacher_pixels = record_pixels.stored_view(record, view, 24)
            np.testing.assert_allclose(targets["teacher_images"][i].numpy(), teacher_pixels, atol=1e-3)
            matched_views.setdefault(record.image_id, set()).add(view)
    assert len(matched_views) >= 9  # the shuffle buffer mixes passes, so most (not all) records show up
    assert any(len(seen) > 1 for seen in matched_views.values())  # a new random view on the next pass


def test_stream_does_not_depend_on_batch_split(record_glob):
    whole = next(iter(data.make_dataset(record_glob, 32, 8, training=True, seed=5, shuffle_buffer=64, temperature=TEMPERATURE,
                                        deterministic=True)))
    halves = list(data.make_dataset(record_glob, 32, 4, training=True, seed=5, shuffle_buffer=64, temperature=TEMPERATURE,
                                    deterministic=True).take(2))
    np.testing.assert_array_equal(whole[0].numpy(), np.concatenate([h[0].numpy() for h in halves]))
    np.testing.assert_array_equal(whole[1]["labels"].numpy(), np.concatenate([h[1]["labels"].numpy() for h in halves]))


def test_raw_targets_without_temperature(record_glob):
    images, targets = next(iter(data.make_dataset(record_glob, 32, 4, training=True, seed=0, shuffle_buffer=64)))
    assert targets["class_ids"].shape == (4, 2) and targets["logits"].shape == (4, 2)
    assert targets["logsumexp"].shape == (4,)
    # best first, and exact log-probabilities: logits - logsumexp <= 0
    assert np.all(targets["logits"].numpy()[:, 0] >= targets["logits"].numpy()[:, 1])
    assert np.all(targets["logits"].numpy() - targets["logsumexp"].numpy()[:, None] <= 1e-6)


def test_eval_is_one_ordered_pass_of_centre_crops(record_glob):
    batches = list(data.make_dataset(record_glob, 32, 5, training=False))
    stored = list(records.read_records(record_glob))
    labels = np.concatenate([t["labels"].numpy() for _, t in batches])
    np.testing.assert_array_equal(labels, [r.label for r in stored])  # includes the -1 of unlabeled records
    first = stored[0]
    np.testing.assert_allclose(batches[0][0][0].numpy(), record_pixels.eval_view(first, 32), atol=1e-3)
    assert data.count_records(record_glob) == 12


def test_images_are_read_from_image_path_when_bytes_are_absent(tmp_path):
    teacher = fixtures.tiny_teacher_model()
    image = fixtures.make_image(0)
    path = tmp_path / "img.png"
    path.write_bytes(fixtures.png_bytes(image))
    crops, flips = views.sample_views("img", 0, 1, *image.shape[:2])
    logits = np.asarray(teacher(numpy_views.crop_views(image, crops, flips, 24)))
    record = records.make_record("img", 1, ["t"], crops, flips, logits, 5, image_path=str(path))
    records.write_records(str(tmp_path / "r-0"), [record])
    images, _ = next(iter(data.make_dataset(str(tmp_path / "r-*"), 32, 1, training=True, seed=0, shuffle_buffer=64)))
    expected = views.crop_view(image, crops[0], flips[0], 32).numpy()
    np.testing.assert_allclose(images[0].numpy(), expected, atol=1e-3)


def _image_ids(dataset, candidates):
    """The image id of every example of `dataset`, found by the stored (or centre) view its pixels equal."""
    ids = []
    for images, _ in dataset:
        for image in images.numpy():
            errors = [np.abs(pixels - image).max() for _, pixels in candidates]
            assert min(errors) < 1e-3  # every example is a view of a record
            ids.append(candidates[int(np.argmin(errors))][0])
    return ids


def test_sharding_over_input_pipelines_splits_the_records(record_glob):
    """One pass of every input pipeline: their records are disjoint and together all 12, each read once; by file
    with as many files as pipelines (2), by record with more pipelines than files (3); training and eval."""
    import tensorflow as tf

    stored = list(records.read_records(record_glob))
    candidates = [(record.image_id, pixels) for record, _, pixels in _all_views(record_glob, 32)]
    candidates += [(record.image_id, record_pixels.eval_view(record, 32)) for record in stored]
    every_id = {record.image_id for record in stored}
    assert os.path.basename(record_glob) == "train-*" and len(every_id) == 12
    for pipelines in (2, 3):
        for training in (True, False):
            seen = []
            for pipeline in range(pipelines):
                context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline,
                                                     num_replicas_in_sync=pipelines)
                dataset = data.make_dataset(record_glob, 32, 1, training=training, seed=0, shuffle_buffer=64,
                                            input_context=context, repeat=False)
                seen.append(_image_ids(dataset, candidates))
            where = f"{pipelines} pipelines, training={training}"
            assert all(len(ids) == len(set(ids)) == 12 // pipelines for ids in seen), (where, seen)
            assert sum(len(set(ids)) for ids in seen) == len(set().union(*seen)), (where, seen)  # disjoint
            assert set().union(*seen) == every_id, where  # and together complete



def test_training_input_on_a_cpu_has_a_private_thread_pool(record_glob):
    """No accelerator here: the train step needs the cores, so the training input gets a quarter of those
    the process may use (affinity and cgroup quota)."""
    training = data.make_dataset(record_glob, 32, 4, training=True, seed=0, shuffle_buffer=64)
    expected = max(1, cpus.available_cpus() // 4)
    assert training.options().threading.private_threadpool_size == expected == data.input_threads()
    for shared in (data.make_dataset(record_glob, 32, 4, training=True, threads=0),
                   data.make_dataset(record_glob, 32, 4, training=False)):
        assert shared.options().threading.private_threadpool_size in (0, None)
