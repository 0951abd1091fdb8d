"""Real runs of the extraction job: real sources, the built-in teacher, bad inputs, gs:// and the CLI.

- the built-in MobileNetV2 over scikit-image's bundled photos: every stored top-1 equals the teacher
  called directly on the same view (decode, crop_view, teacher);
- a folder mixing good and bad files: records written + dead letters = inputs read, one reason each;
  a 1x1 and a 12000x9000 image are written without the decoder's full-size buffer;
- tfds mock_data for imagenet2012 and open_images_v4; a gs:// round trip on the GCS emulator;
- the command line with two DirectRunner worker processes (multi_processing) and a .keras teacher.
"""

import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from extract_fixtures import INPUT_SIZE, NUM_CLASSES, encode, expected_logits, load_fake_teacher, photo, tiny_keras_teacher
from PIL import Image

from distillery import cpus, images, records, views
from pipelines import extract_shard, extraction

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Photos that are files inside the scikit-image wheel (others download on first use: not used).
SKIMAGE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png", "horse.png",
                  "camera.png", "hubble_deep_field.jpg")


def _run(config, source=None, loader=load_fake_teacher):
    return extraction.run(config, test_pipeline=BeamTestPipeline(runner=FnApiRunner()), source=source,
                          teacher_loader=loader, save_main_session=False)


def _read_outputs(config):
    written = {record.image_id: record for record in records.read_records(config.output + "-*")}
    with open(config.dead_letter, encoding="utf-8") as file:
        dead = [json.loads(line) for line in file if line.strip()]
    return written, dead


def top1(record, view):
    """The stored best class of a view (with full logits, class_ids are in index order, not sorted)."""
    return int(record.class_ids[view, int(np.argmax(record.logits[view]))])


def _config(tmp_path, source, **overrides):
    settings = dict(source=source, teachers=("fake",), output=str(tmp_path / "out" / "soft"),
                    dead_letter=str(tmp_path / "out" / "dead.jsonl"), batch_size=8)
    settings.update(overrides)
    return extraction.ExtractConfig(**settings)


def test_builtin_teacher_top1_equals_a_direct_call_on_the_same_view(tmp_path):
    import skimage

    from distillery import teachers

    data_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in SKIMAGE_PHOTOS:
        shutil.copy(os.path.join(data_dir, name), photos / name)
    spec = "builtin:mobilenet_v2_imagenet"
    config = extraction.ExtractConfig(source=f"glob:{photos}/*", teachers=(spec,), output=str(tmp_path / "soft"),
                                      dead_letter=str(tmp_path / "dead.jsonl"), views=2, top_k=5, seed=3,
                                      batch_size=4)
    result = extraction.run(config, test_pipeline=BeamTestPipeline(runner=FnApiRunner()), save_main_session=False)
    written, dead = _read_outputs(config)
    assert dead == [] and len(written) == len(SKIMAGE_PHOTOS) == result.counters["written"]
    teacher = teachers.load_teacher(spec)
    min_side = extract_shard.decode_min_side(224, config.views, config.min_scale)
    agreements = 0
    for record in written.values():
        assert record.teachers == [spec] and record.label == -1 and record.num_classes == 1000
        with open(record.image_path, "rb") as file:
            image = images.decode_rgb(file.read(), min_side=min_side)
        crops, flips = views.sample_views(record.image_id, config.seed, config.views, *image.shape[:2])
        np.testing.assert_allclose(record.crops, crops, atol=1e-6)
        np.testing.assert_array_equal(record.flips, flips)
        for view in range(config.views):
            pixels = views.crop_view(tf.constant(image), crops[view], flips[view], 224)[None]
            direct = teacher(pixels).numpy()[0]
            assert top1(record, view) == int(np.argmax(direct))
            np.testing.assert_allclose(record.logits[view], direct[record.class_ids[view]], atol=2e-3)
            agreements += 1
    assert agreements == 2 * len(SKIMAGE_PHOTOS)
    cat = [record for record in written.values() if record.image_id.startswith("chelsea")][0]
    assert all(281 <= cat.class_ids[view, 0] <= 285 for view in range(2))  # ImageNet cat classes


def _bad_corpus(directory):
    """A folder source (one class folder) mixing good, odd-but-valid and undecodable files."""
    folder = directory / "things"
    folder.mkdir(parents=True)
    good = {
        "good_rgb.png": encode(photo(1)),
        "good.jpg": encode(photo(2), "JPEG"),
        "gray.png": encode(photo(3)[:, :, 0]),
        "cmyk.jpg": _cmyk_jpeg(photo(4)),
        "alpha.png": encode(np.dstack([photo(5), np.full(photo(5).shape[:2], 128, np.uint8)])),
        "sixteen_bit.png": _sixteen_bit_png(),
        "one_pixel.png": encode(np.array([[[10, 200, 30]]], np.uint8)),
    }
    bad = {
        "empty.jpg": b"",
        "truncated.jpg": encode(photo(6, 256, 256), "JPEG")[:300],
        "random.png": np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes(),
        "text.jpg": b"this is a text file, not a JPEG\n",
        "image.heic": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
    }
    for name, data in {**good, **bad}.items():
        (folder / name).write_bytes(data)
    # 12000x9000: written by another process, so this one's peak memory shows only the job's own use.
    subprocess.run([sys.executable, "-c", "import sys; from PIL import Image; "
                    "Image.new('RGB', (12000, 9000), (200, 120, 40)).save(sys.argv[1], quality=60)",
                    str(folder / "huge.jpg")], check=True)
    return set(good) | {"huge.jpg"}, set(bad)


def _cmyk_jpeg(rgb):
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, "JPEG")
    return buffer.getvalue()


def _sixteen_bit_png():
    buffer = io.BytesIO()
    Image.fromarray((np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21), "I;16").save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_inputs_become_dead_letters_and_nothing_is_lost(tmp_path):
    good, bad = _bad_corpus(tmp_path / "corpus")
    config = _config(tmp_path, f"folder:{tmp_path / 'corpus'}", views=2)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = _run(config)
    peak_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    written, dead = _read_outputs(config)
    # The invariant, three ways: files on disk, counters, and the summary.
    assert len(written) + len(dead) == len(good) + len(bad) == result.counters["read"]
    assert result.counters["written"] == len(good) and result.counters["dead_letters"] == len(bad)
    assert result.summary["balanced"] is True
    assert {record.image_id.split("/")[-1] for record in written.values()} == good
    reasons = {letter["image_id"].split("/")[-1]: letter for letter in dead}
    assert set(reasons) == bad
    assert all(letter["stage"] == "decode" and letter["source"].endswith(name) for name, letter in reasons.items())
    assert reasons["empty.jpg"]["reason"] == "empty file"
    assert "unknown format" in reasons["text.jpg"]["reason"] and "unknown format" in reasons["image.heic"]["reason"]
    assert "unknown format" in reasons["random.png"]["reason"]
    assert "truncated" in reasons["truncated.jpg"]["reason"] or "cannot decode" in reasons["truncated.jpg"]["reason"]
    # Odd but valid images were converted and viewed like any other: their logits are the teacher's.
    for record in written.values():
        with open(record.image_path, "rb") as file:
            _, _, logits = expected_logits(file.read(), record.image_id, config)
        top = np.take_along_axis(logits, record.class_ids, axis=1)
        np.testing.assert_allclose(record.logits, top, rtol=1e-4, atol=1e-4)
    # A full-size decode of the 12000x9000 JPEG alone would take 324 MB; draft decoding keeps it far below.
    assert peak_growth < 200 * 2**20, f"peak RSS grew by {peak_growth / 2**20:.0f} MiB"


def test_tfds_mock_data_imagenet2012_and_open_images_v4(tmp_path):
    import tensorflow_datasets as tfds

    from pipelines import sources

    for name, split in (("imagenet2012", "validation"), ("open_images_v4", "train")):
        spec = f"tfds:{name}:{split}"
        config = _config(tmp_path / name, spec, max_examples=4, store_image_max_side=64)
        with tfds.testing.mock_data(num_examples=6):
            _run(config)
            # What the job should have read (tests/test_sources_tfds.py checks these against tfds itself).
            reference = list(sources.iterate_source(sources.open_source(spec, max_examples=4)))
        written, dead = _read_outputs(config)
        assert dead == [] and sorted(written) == sorted(example.image_id for example in reference)
        for example in reference:
            record = written[example.image_id]
            assert record.label == example.label and (example.label >= 0) == (name == "imagenet2012")
            assert record.image_path == example.origin and record.image_path.startswith(f"{spec}[")
            assert max(images.decode_rgb(record.encoded_image).shape[:2]) <= 64  # stored: tfds has no files
            _, _, logits = expected_logits(example.encoded, example.image_id, config)
            assert record.top_k == NUM_CLASSES and top1(record, 0) == int(np.argmax(logits[0]))  # full logits
            np.testing.assert_allclose(record.logits[0], logits[0], rtol=1e-4, atol=1e-4)


def test_sources_without_image_files_must_store_images(tmp_path):
    for spec in ("tfds:imagenet2012:validation", "tfrecord:/data/x-*", "idx:/usr/share/datasets/fashion-mnist"):
        with pytest.raises(ValueError, match=r"--store_image_max_side must be > 0 .* --source=" + re.escape(spec)):
            _config(tmp_path, spec).validate()
    _config(tmp_path, "folder:/data/photos").validate()  # files: the path is enough


def test_gcs_round_trip_on_the_emulator(tmp_path, gcs_emulator):
    bucket = gcs_emulator.create_bucket()
    items = {f"gs://{bucket}/in/cats/cat{index}.png": encode(photo(10 + index)) for index in range(3)}
    items[f"gs://{bucket}/in/cats/broken.jpg"] = b"\xff\xd8\xff\xe0 broken"
    for url, data in items.items():
        gcs_emulator.upload(url, data)
    config = extraction.ExtractConfig(source=f"folder:gs://{bucket}/in", teachers=("fake",),
                                      output=f"gs://{bucket}/out/soft", dead_letter=f"gs://{bucket}/out/dead.jsonl",
                                      batch_size=4, examples_per_shard=2)
    result = _run(config)
    outputs = gcs_emulator.list(f"gs://{bucket}/out/")
    shards = [url for url in outputs if "/out/soft-" in url]
    # 4 inputs listed on the workers into ceil(4 / 2) = 2 hash buckets: one record file per non-empty one.
    assert 1 <= len(shards) <= 2 and f"gs://{bucket}/out/soft.summary.json" in outputs
    assert not [url for url in outputs if ".tmp-" in url]  # every temporary file was renamed into place
    local = tmp_path / "staged"
    local.mkdir()
    for url in shards:  # tf.io.gfile cannot reach the emulator: stage through Beam FileSystems
        with FileSystems.open(url) as source, open(local / url.rsplit("/", 1)[1], "wb") as target:
            target.write(source.read())
    written = {record.image_id: record for record in records.read_records(str(local / "soft-*"))}
    assert sorted(written) == ["cats/cat0.png", "cats/cat1.png", "cats/cat2.png"]
    for image_id, record in written.items():
        assert record.image_path == f"gs://{bucket}/in/{image_id}"
        _, _, logits = expected_logits(items[record.image_path], image_id, config)
        assert top1(record, 0) == int(np.argmax(logits[0]))
    dead = [json.loads(line) for line in gcs_emulator.download(f"gs://{bucket}/out/dead.jsonl").decode().splitlines()]
    assert [letter["image_id"] for letter in dead] == ["cats/broken.jpg"]
    summary = json.loads(gcs_emulator.download(f"gs://{bucket}/out/soft.summary.json"))
    assert summary["counters"]["written"] == 3 and summary["counters"]["dead_letters"] == 1
    assert sorted(shard["file"] for shard in summary["shards"]) == sorted(shards)
    assert sum(shard["records"] for shard in summary["shards"]) == 3
    assert result.counters["read"] == 4


@pytest.mark.slow
def test_command_line_with_two_worker_processes(tmp_path):
    from distillery import teachers

    good, bad = _bad_corpus(tmp_path / "corpus")
    teacher_path = str(tmp_path / "tiny.keras")
    tiny_keras_teacher(teacher_path)
    output, dead_letter = tmp_path / "out" / "soft", tmp_path / "out" / "dead.jsonl"
    command = [sys.executable, "-m", "pipelines.extract", f"--source=folder:{tmp_path / 'corpus'}",
               f"--teacher={teacher_path}", f"--teacher={teacher_path}", f"--output={output}",
               f"--dead_letter={dead_letter}", "--views=2", "--top_k=3", "--log_every=2", "--examples_per_shard=2",
               "--batch_size=4",
               # Beam options both ways: the one-string flag and everything after `--`.
               "--beam_pipeline_options=--direct_num_workers=2", "--", "--direct_running_mode=multi_processing"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert completed.returncode == 0, completed.stderr[-3000:]
    config = _config(tmp_path, "", output=str(output), dead_letter=str(dead_letter), views=2)
    written, dead = _read_outputs(config)
    assert len(written) == len(good) and len(dead) == len(bad)
    assert f"written {len(good)}" in completed.stdout and f"dead_letters {len(bad)}" in completed.stdout
    # Progress lines come from both worker processes (each names its pid and its images/s).
    workers = set(re.findall(r"batches in worker process (\d+); [0-9.]+ images/s", completed.stderr))
    assert len(workers) == 2, completed.stderr[-3000:]
    # Each worker's LiteRT teacher takes its share of the CPUs (two processes share them), not all of them.
    threads = set(re.findall(r"LiteRT runs it on (\d+) thread", completed.stderr))
    assert threads == {str(max(1, cpus.available_cpus() // 2))}, completed.stderr[-3000:]
    # The working time runs from the first worker's teacher being ready to the last unit's commit: inside
    # the job's wall time, which also holds the workers' start and their teachers' load and conversion.
    summary = json.loads((tmp_path / "out" / "soft.summary.json").read_text())
    assert 0 < summary["working_seconds"] < summary["seconds"]
    assert summary["images_per_second_working"] == pytest.approx(summary["counters"]["read"]
                                                                 / summary["working_seconds"], rel=0.01)
    teacher = teachers.load_teacher(teacher_path)
    for record in written.values():
        assert record.teachers == ["tiny.keras", "tiny.keras"] and record.top_k == 3
        with open(record.image_path, "rb") as file:
            image = images.decode_rgb(file.read(), min_side=extract_shard.decode_min_side(INPUT_SIZE, 2, 0.08))
        pixels = np.stack([views.crop_view(tf.constant(image), crop, flip, INPUT_SIZE).numpy()
                           for crop, flip in zip(record.crops, record.flips)])
        direct = teacher.predict(pixels)  # the ensemble of one model twice: the mean is the model
        np.testing.assert_allclose(record.logits, np.take_along_axis(direct, record.class_ids, 1), atol=1e-4)


def test_bad_source_and_teacher_specs_fail_before_the_pipeline(tmp_path):
    missing_folder, missing_teacher = str(tmp_path / "missing"), str(tmp_path / "missing.keras")
    with pytest.raises(FileNotFoundError, match=missing_folder):
        extraction.run(_config(tmp_path, f"folder:{missing_folder}", teachers=("builtin:mobilenet_v2_imagenet",)))
    (tmp_path / "photos" / "a").mkdir(parents=True)
    (tmp_path / "photos" / "a" / "x.png").write_bytes(encode(photo(0)))
    with pytest.raises(FileNotFoundError, match=missing_teacher):
        extraction.run(_config(tmp_path, f"folder:{tmp_path / 'photos'}", teachers=(missing_teacher,)))
    assert not (tmp_path / "out").exists()  # nothing started
