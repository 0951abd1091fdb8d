"""The demo's inputs and settings: padded Fashion-MNIST images whose evaluation view is the original
image, the teacher and its on-the-fly views drawn like the stored ones, the presets' rank selection."""

import os

import numpy as np
import pytest
import tensorflow as tf

from demo import data as demo_data
from demo import teacher as demo_teacher
from distillery import views
from pipelines import source_records


def test_padding_makes_the_evaluation_view_the_original_image():
    original = np.random.default_rng(0).integers(1, 256, (28, 28), dtype=np.uint8)
    padded = demo_data.pad_images(original[None])[0]
    assert padded.shape == (32, 32)
    assert (padded[:2] == 0).all() and (padded[-2:] == 0).all() and (padded[:, :2] == 0).all()
    box = views.centre_crop(32, 32)
    y0, y1, x0, x1 = (int(value) for value in views.pixel_box(box, 32, 32))
    np.testing.assert_array_equal(padded[y0:y1, x0:x1], original)


def _ids(path: str) -> list[str]:
    return [tf.train.Example.FromString(record.numpy()).features.feature["image/source_id"].bytes_list.value[0]
            .decode() for record in tf.data.TFRecordDataset(path)]


def test_write_splits_reads_back_padded_images_ids_and_labels(tmp_path):
    if not os.path.isdir(demo_data.FASHION_MNIST_DIR):
        pytest.skip(f"{demo_data.FASHION_MNIST_DIR} missing: install the Debian package dataset-fashion-mnist")
    splits = demo_data.write_splits(str(tmp_path), labelled=5, unlabeled=4, test=3)
    assert splits.counts == {"labelled": 5, "unlabeled": 4, "test": 3}
    train_images = source_records.read_idx(f"{demo_data.FASHION_MNIST_DIR}/train-images-idx3-ubyte.gz")
    train_labels = source_records.read_idx(f"{demo_data.FASHION_MNIST_DIR}/train-labels-idx1-ubyte.gz")
    test_images = source_records.read_idx(f"{demo_data.FASHION_MNIST_DIR}/t10k-images-idx3-ubyte.gz")
    test_labels = source_records.read_idx(f"{demo_data.FASHION_MNIST_DIR}/t10k-labels-idx1-ubyte.gz")
    expected = {"labelled": (train_images[:5], train_labels[:5], [f"train/{i:05d}" for i in range(5)]),
                "unlabeled": (train_images[5:9], [-1] * 4, [f"train/{i:05d}" for i in range(5, 9)]),
                "test": (test_images[:3], test_labels[:3], [f"test/{i:05d}" for i in range(3)])}
    for part, (originals, labels, ids) in expected.items():
        images, read_labels = demo_data.read_images(getattr(splits, part))
        assert images.shape == (len(ids), 32, 32, 3)
        # Grey decoded as RGB: every channel is the padded original.
        for channel in range(3):
            np.testing.assert_array_equal(images[..., channel], np.pad(originals, ((0, 0), (2, 2), (2, 2))))
        np.testing.assert_array_equal(read_labels, labels)
        assert _ids(getattr(splits, part)) == ids


def test_write_validation_reads_back_its_range_of_training_images(tmp_path):
    if not os.path.isdir(demo_data.FASHION_MNIST_DIR):
        pytest.skip(f"{demo_data.FASHION_MNIST_DIR} missing: install the Debian package dataset-fashion-mnist")
    path = str(tmp_path / "val" / "val.tfrecord")
    assert demo_data.write_validation(path, first=30000, count=3) == 3
    train_images = source_records.read_idx(f"{demo_data.FASHION_MNIST_DIR}/train-images-idx3-ubyte.gz")
    train_labels = source_records.read_idx(f"{demo_data.FASHION_MNIST_DIR}/train-labels-idx1-ubyte.gz")
    images, labels = demo_data.read_images(path)
    np.testing.assert_array_equal(images[..., 0], np.pad(train_images[30000:30003], ((0, 0), (2, 2), (2, 2))))
    np.testing.assert_array_equal(labels, train_labels[30000:30003])
    assert _ids(path) == ["train/30000", "train/30001", "train/30002"]
    for first, count in ((59999, 2), (-1, 3), (30000, 0)):
        with pytest.raises(ValueError, match=f"first={first}, count={count}"):
            demo_data.write_validation(path, first=first, count=count)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        demo_data.write_validation(path, idx_dir=str(tmp_path / "missing"))


def test_the_default_validation_range_is_disjoint_from_the_demo_parts():
    import inspect  # pylint: disable=import-outside-toplevel

    from configs import demo as demo_config  # pylint: disable=import-outside-toplevel

    defaults = inspect.signature(demo_data.write_validation).parameters
    assert defaults["first"].default >= demo_config.FULL.labelled + demo_config.FULL.unlabeled
    assert defaults["first"].default + defaults["count"].default <= 60000


def test_random_views_follow_the_stored_view_distribution():
    boxes, flips = [], []
    for position in range(400):
        box, flip = views.random_view_tensor(32, 32, tf.constant([7, position], tf.int64), min_scale=0.6)
        boxes.append(box.numpy())
        flips.append(bool(flip))
    boxes = np.array(boxes)
    assert (boxes >= 0).all() and (boxes <= 1 + 1e-6).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # Clipping a box that does not fit only makes it smaller than asked, and only slightly (ratio <= 4/3).
    assert areas.max() <= 1 + 1e-6 and areas.min() >= 0.6 * 0.75 - 1e-6
    assert np.median(areas) > 0.7
    assert 0.4 < np.mean(flips) < 0.6
    # Stateless: the same seed gives the same view.
    again, _ = views.random_view_tensor(32, 32, tf.constant([7, 3], tf.int64), min_scale=0.6)
    np.testing.assert_array_equal(again.numpy(), boxes[3])


def test_teacher_training_views_keep_each_image_with_its_label():
    # Image i is the constant 10 * i, so any crop, resize or flip of it is still 10 * i: each view names
    # the image it came from, and its label must be that image's.
    images = np.repeat(np.arange(0, 200, 10, dtype=np.uint8), 32 * 32 * 3).reshape(20, 32, 32, 3)
    labels = np.arange(20) % 4
    seen = []
    for batch_images, batch_labels in demo_teacher.augmented_dataset(images, labels, 8, 0.6, seed=0).take(5):
        assert batch_images.shape == (8, 32, 32, 3) and batch_images.dtype == tf.float32
        for view, label in zip(batch_images.numpy(), batch_labels.numpy()):
            source = int(round(view[0, 0, 0] / 10))
            np.testing.assert_allclose(view, 10 * source, atol=1e-3)
            assert label == labels[source]
            seen.append(source)
    assert sorted(seen[:20]) == list(range(20))  # the first 20 views: one epoch, each image once


def test_demo_config_takes_exactly_one_rank_selection():
    from configs import demo as demo_config  # pylint: disable=import-outside-toplevel

    assert demo_config.TINY.factorize_ranks and demo_config.FULL.factorize_ranks == demo_config.FULL_STUDENT_RANKS
    for settings in ({"factorize_ranks": None},
                     {"factorize_energy": 0.9},
                     {"factorize_latency_reduction": 0.25}):
        with pytest.raises(ValueError, match="exactly one of"):
            demo_config.DemoConfig(**settings)
    assert demo_config.DemoConfig(factorize_ranks=None, factorize_latency_reduction=0.25)


def test_full_preset_ranks_are_an_eighth_of_the_wide_1x1_convolutions():
    from compress import (
        factorize,  # pylint: disable=import-outside-toplevel
        factorize_job,  # pylint: disable=import-outside-toplevel
    )
    from configs import demo as demo_config  # pylint: disable=import-outside-toplevel
    from trainer import students  # pylint: disable=import-outside-toplevel

    full = demo_config.FULL
    student = students.build_student(full.student, full.student_width, full.image_size, 10)
    layers = {layer.name: layer for layer in factorize.find_factorizable_layers(student)}
    ranks = factorize_job.parse_ranks(full.factorize_ranks)
    wide = {name for name, layer in layers.items() if layer.kind == "conv1x1" and layer.output_channels >= 128}
    assert set(ranks) == wide and len(wide) == 8
    for name, rank in ranks.items():
        assert rank * 8 == layers[name].full_rank
    factorize.check_ranks(student, ranks)  # every one of them saves MACs


def test_teacher_architecture_by_hand():
    model = demo_teacher.build_teacher(32, 10, width=32)
    # convolutions 3x3x3x32, 3x3x32x64, 3x3x64x128 (no bias) + 4 BN values per channel; dense 2048 -> 256
    # (4x4x128 after three poolings) and 256 -> 10 with biases.
    assert model.count_params() == (864 + 18432 + 73728) + 4 * (32 + 64 + 128) + (2048 * 256 + 256) + (256 * 10 + 10)
    logits = model.predict(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32), verbose=0)
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


def test_rank_flag_follows_the_one_selection_the_config_sets():
    from configs import chain  # pylint: disable=import-outside-toplevel
    from configs import demo as demo_config  # pylint: disable=import-outside-toplevel
    from demo import run as demo_run  # pylint: disable=import-outside-toplevel

    def rank_flags(cfg):
        stage = chain.factorize_at(demo_config.recipe(cfg), chain.ChainPaths("/o"), "distilled")
        return [arg for arg in demo_run.command(stage).args
                if arg.split("=")[0] in ("--ranks", "--energy", "--latency_reduction", "--rank_ratio")]

    assert rank_flags(demo_config.FULL) == [f"--ranks={demo_config.FULL_STUDENT_RANKS}"]
    assert rank_flags(demo_config.TINY) == ["--ranks=conv_pw_12:16,conv_pw_13:32"]
    assert rank_flags(demo_config.DemoConfig(factorize_ranks=None, factorize_energy=0.9)) == ["--energy=0.9"]
    budget = demo_config.DemoConfig(factorize_ranks=None, factorize_latency_reduction=0.25)
    assert rank_flags(budget) == ["--latency_reduction=0.25"]


def test_student_runs_give_each_student_its_records_alpha_temperature_and_steps():
    from configs import chain  # pylint: disable=import-outside-toplevel
    from configs import demo as demo_config  # pylint: disable=import-outside-toplevel

    def runs(cfg):
        return {stage.label.split()[1]: (stage.config.train_pattern, stage.config.alpha, stage.config.temperature,
                                         stage.config.steps)
                for stage in chain.train_stages(demo_config.recipe(cfg), chain.ChainPaths("o"))}

    cfg = demo_config.DemoConfig(alpha=0.3, distilled_temperature=5.0, unlabeled_temperature=2.0, train_steps=7,
                                 train_steps_unlabeled=11)
    assert runs(cfg) == {"distilled_unlabeled": ("o/soft/labelled-*,o/soft/unlabeled-*", 0.3, 2.0, 11),
                         "hard": ("o/soft/labelled-*", 1.0, 5.0, 7), "distilled": ("o/soft/labelled-*", 0.3, 5.0, 7)}
    assert list(runs(cfg)) == ["distilled_unlabeled", "hard", "distilled"]  # the longest starts first
    # The full preset: the temperatures chosen on the validation split, the longer run for 3x the images.
    full = runs(demo_config.FULL)
    assert (full["distilled"][2], full["distilled_unlabeled"][2]) == (6.0, 4.0)
    assert (full["hard"][3], full["distilled"][3], full["distilled_unlabeled"][3]) == (2000, 2000, 3500)
