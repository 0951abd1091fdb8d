"""Tests of the extraction job on a tiny fake teacher (tests/extract_fixtures.py): records read back and
checked against the teacher called directly on the same views."""

import dataclasses
import glob
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from extract_fixtures import (
    LOADS,
    NUM_CLASSES,
    RAISE,
    FakeTeacher,
    ListSource,
    encode,
    expected_logits,
    good_items,
    load_fake_teacher,
    photo,
)

from distillery import images, records
from pipelines import extract_shard, extraction, shard_output, teacher_inference


def config_for(tmp_path, **overrides):
    settings = dict(source="list:test", teachers=("fake",), output=str(tmp_path / "out" / "soft"),
                    dead_letter=str(tmp_path / "out" / "dead.jsonl"), batch_size=8, log_every=5)
    settings.update(overrides)
    return extraction.ExtractConfig(**settings)


def run_job(tmp_path, items, loader=load_fake_teacher, per_shard=3, **overrides):
    config = config_for(tmp_path, **overrides)
    result = extraction.run(config, test_pipeline=BeamTestPipeline(runner=FnApiRunner()),
                            source=ListSource(items, per_shard),
                            teacher_loader=loader, save_main_session=False)
    written = {record.image_id: record for record in records.read_records(extraction.summary_path(config.output))}
    with open(config.dead_letter, encoding="utf-8") as file:
        dead = [json.loads(line) for line in file if line.strip()]
    return result, written, dead


def test_records_hold_the_teachers_logits_of_each_view(tmp_path, caplog):
    caplog.set_level("INFO")
    # The job logs through absl, whose logger an earlier in-process absl app in this worker may have set
    # to WARNING (its --verbosity default): set it too, or the progress lines never reach caplog.
    caplog.set_level("INFO", logger="absl")
    items = good_items(7)
    LOADS.clear()
    result, written, dead = run_job(tmp_path, items, views=3, top_k=4, seed=5, per_shard=2)
    assert len(LOADS) == 1  # one load in this process: by the launcher, reused by every bundle (Shared)
    assert dead == [] and sorted(written) == [item[0] for item in items]
    config = config_for(tmp_path, views=3, top_k=4, seed=5)
    correct = 0
    for image_id, encoded, label, origin in items:
        record = written[image_id]
        crops, flips, logits = expected_logits(encoded, image_id, config)
        correct += int(np.sum(np.argmax(logits, axis=1) == label))
        assert record.label == label and record.image_path == origin and record.teachers == ["fake"]
        assert record.num_views == 3 and record.top_k == 4 and record.num_classes == NUM_CLASSES
        np.testing.assert_allclose(record.crops, crops, atol=1e-6)
        np.testing.assert_array_equal(record.flips, flips)
        expected_ids = np.argsort(-logits, axis=1, kind="stable")[:, :4]
        np.testing.assert_array_equal(record.class_ids, expected_ids)
        np.testing.assert_allclose(record.logits, np.take_along_axis(logits, expected_ids, 1), rtol=1e-5, atol=1e-5)
        lse = np.log(np.exp(logits.astype(np.float64)).sum(axis=1))
        np.testing.assert_allclose(record.logsumexp, lse, rtol=1e-5)
    counters = result.counters
    assert counters["read"] == 7 and counters["written"] == 7 and counters["dead_letters"] == 0
    # 21 views of 4 units (2 + 2 + 2 + 1 images), each unit's views in calls of its own: 6, 6, 6, 3 (padded to 8).
    assert counters["views"] == 21 and counters["batches"] == 4
    progress = [record.getMessage() for record in caplog.records if "images/s" in record.getMessage()]
    assert progress and progress[0].startswith("extract: 6 images, 18 views"), progress  # first >= --log_every=5
    with open(extraction.summary_path(config.output), encoding="utf-8") as file:
        summary = json.load(file)
    assert summary["counters"]["written"] == 7 and summary["balanced"] is True and summary["teachers"] == ["fake"]
    # The teacher's top-1 over the labelled views, counted against the teacher called directly.
    assert counters["labelled_views"] == 21 and counters["teacher_top1_correct"] == correct
    assert summary["teacher_top1"] == pytest.approx(correct / 21, abs=1e-6)


def test_teacher_top1_counts_only_labelled_inputs(tmp_path):
    config = config_for(tmp_path, views=2)
    items = good_items(4)
    # Image 0 is labelled with its first view's teacher class (at least one hit), image 1 with a class no
    # view of it gets (a miss), images 2 and 3 are unlabeled.
    predicted = [np.argmax(expected_logits(encoded, image_id, config)[2], axis=1)
                 for image_id, encoded, _, _ in items[:2]]
    labels = [int(predicted[0][0]), min(set(range(NUM_CLASSES)) - set(predicted[1].tolist())), -1, -1]
    items = [(image_id, encoded, label, origin) for (image_id, encoded, _, origin), label in zip(items, labels)]
    result, written, _ = run_job(tmp_path, items, views=2)
    correct = int(np.sum(predicted[0] == labels[0]))
    assert 1 <= correct <= 2
    assert [written[item[0]].label for item in items] == labels
    assert result.counters["labelled_views"] == 4 and result.counters["teacher_top1_correct"] == correct
    assert result.summary["teacher_top1"] == pytest.approx(correct / 4, abs=1e-6)
    unlabeled = [(image_id, encoded, -1, origin) for image_id, encoded, _, origin in items]
    result, _, _ = run_job(tmp_path / "unlabeled", unlabeled, views=2)
    assert result.counters["labelled_views"] == 0 and "teacher_top1" not in result.summary


def test_centre_crop_full_logits_float16_and_stored_image(tmp_path):
    items = good_items(3)
    _, written, _ = run_job(tmp_path, items, views=1, top_k=0, logit_dtype="float16", store_image_max_side=40)
    config = config_for(tmp_path)
    for image_id, encoded, _, _ in items:
        record = written[image_id]
        crops, flips, logits = expected_logits(encoded, image_id, config)
        # 48x64 photos: a centred 42x42 square (87.5% of the shorter side).
        np.testing.assert_allclose(record.crops[0], [0.0625, 11 / 64, 0.9375, 53 / 64], atol=1e-4)
        assert not record.flips[0] and record.top_k == NUM_CLASSES and record.logit_dtype == "float16"
        np.testing.assert_allclose(record.logits, logits.astype(np.float16).astype(np.float32), rtol=1e-3)
        stored = images.decode_rgb(record.encoded_image)
        assert max(stored.shape[:2]) == 40 and stored.shape[:2] == (30, 40)


def test_views_are_deterministic_across_reruns_and_depend_on_the_seed(tmp_path):
    items = good_items(5)
    _, first, _ = run_job(tmp_path / "a", items, views=4, seed=1)
    _, rerun, _ = run_job(tmp_path / "r", items, views=4, seed=1)  # the same work units: byte-identical
    # Another order and other shards: other batches. Every view's logits come from a call of the same fixed
    # shape, yet a matrix multiply may round a row by its position in the batch (on an AMD EPYC with AVX2,
    # 9.5e-7 here; on an Intel Xeon with AVX-512, 0): the same records up to the last bit of a logit.
    _, again, _ = run_job(tmp_path / "b", list(reversed(items)), views=4, seed=1, per_shard=2)
    config = config_for(tmp_path, views=4, seed=2)
    for image_id, encoded, _, _ in items:
        assert records.encode(first[image_id]) == records.encode(rerun[image_id])
        moved = dataclasses.replace(again[image_id], logits=first[image_id].logits,
                                    logsumexp=first[image_id].logsumexp)
        assert records.encode(first[image_id]) == records.encode(moved)  # ids, views, classes, images: equal
        for field in ("logits", "logsumexp"):
            np.testing.assert_allclose(getattr(again[image_id], field), getattr(first[image_id], field),
                                       rtol=1e-5, atol=1e-6)
        other_crops, _, _ = expected_logits(encoded, image_id, config)  # what seed 2 would store
        assert not np.allclose(first[image_id].crops, other_crops)
    flips = np.concatenate([record.flips for record in first.values()])
    assert 0 < flips.sum() < len(flips)  # both flipped and unflipped views occur


def load_teacher_failing_on_white():
    return WhiteFailingTeacher()


class WhiteFailingTeacher(FakeTeacher):
    """NaN logits for an all-white view (a teacher failure on one image of a batch)."""

    def predict(self, batch, batch_size=32):
        logits = super().predict(batch)
        logits[np.asarray(batch).min(axis=(1, 2, 3)) >= 254.5] = np.nan
        return logits


def test_every_input_is_one_record_or_one_dead_letter(tmp_path):
    items = good_items(4)
    white = ("white", encode(np.full((40, 40, 3), 255, np.uint8)), 1, "/data/white.png")
    duplicate = ("img001", encode(photo(99)), 5, "/other/img001.png")  # same id, later origin: dropped
    failed_copy = ("img002", b"", 2, "/other/img002.png")  # same id, later origin: never read, a duplicate
    missing = ("img404", None, 0, "/data/img404.png")
    bad_only = ("junk", b"not an image", 0, "/data/junk.jpg")
    all_items = items + [duplicate, failed_copy, missing, bad_only, white]
    result, written, dead = run_job(tmp_path, all_items, loader=load_teacher_failing_on_white)
    assert sorted(written) == ["img000", "img001", "img002", "img003"]
    assert written["img001"].image_path == "/data/img001.png"  # the smallest origin of the id's copies
    by_source = {letter["source"]: letter for letter in dead}
    assert set(by_source) == {"/other/img001.png", "/other/img002.png", "/data/img404.png", "/data/junk.jpg",
                              "/data/white.png"}
    assert by_source["/data/white.png"]["stage"] == "teacher" and "non-finite" in by_source["/data/white.png"]["reason"]
    assert by_source["/other/img001.png"]["stage"] == "duplicate"
    assert "the copy written (or dead-lettered) is /data/img001.png" in by_source["/other/img001.png"]["reason"]
    assert by_source["/other/img002.png"]["stage"] == "duplicate"  # dropped before it is read or decoded
    assert by_source["/data/img404.png"]["stage"] == "read" and by_source["/data/junk.jpg"]["stage"] == "decode"
    assert by_source["/data/junk.jpg"]["image_id"] == "junk"
    counters = result.counters
    assert len(written) + len(dead) == len(all_items) == counters["read"]
    assert (counters["written"], counters["dead_letters"], counters["duplicates"]) == (4, 5, 2)
    assert (counters["read_failed"], counters["decode_failed"], counters["teacher_failed"]) == (1, 1, 1)


def test_the_copy_kept_is_chosen_by_origin_before_decoding_even_when_it_fails(tmp_path):
    # Deduplication runs on (id, origin) keys before any image is decoded: the smallest origin is the
    # copy extracted; when it turns out undecodable, the id is a dead letter and no other copy replaces it.
    twins = [("twin", b"", 0, "/a/twin.png"), ("twin", encode(photo(7)), 0, "/b/twin.png")]
    result, written, dead = run_job(tmp_path, good_items(1) + twins)
    assert sorted(written) == ["img000"]
    assert {(letter["source"], letter["stage"]) for letter in dead} == {("/a/twin.png", "decode"),
                                                                        ("/b/twin.png", "duplicate")}
    assert result.counters["read"] == 3 and result.summary["balanced"]


def test_a_shard_that_fails_part_way_dead_letters_each_unread_input(tmp_path):
    items = good_items(6)
    items[4] = ("img004", RAISE, 4, "/data/img004.png")  # second shard: img003 read, then the reader fails
    result, written, dead = run_job(tmp_path, items, per_shard=3)
    assert sorted(written) == ["img000", "img001", "img002", "img003"]
    assert sorted(letter["image_id"] for letter in dead) == ["img004", "img005"]
    assert all(letter["stage"] == "read" and "shard failed after 1 input(s): OSError: storage went away"
               in letter["reason"] for letter in dead)
    assert len(written) + len(dead) == len(items) == result.counters["read"]


def load_fake_ensemble():
    from distillery import teachers

    return teachers.ensemble([FakeTeacher("a", offset=0.0), FakeTeacher("b", offset=3.0)])


def test_ensemble_names_and_mean_logits(tmp_path):
    items = good_items(2)
    _, written, _ = run_job(tmp_path, items, loader=load_fake_ensemble, top_k=0)
    config = config_for(tmp_path)
    for image_id, encoded, _, _ in items:
        _, _, logits = expected_logits(encoded, image_id, config)
        assert written[image_id].teachers == ["a", "b"]
        np.testing.assert_allclose(written[image_id].logits, logits + 1.5, rtol=1e-5, atol=1e-5)


def test_bad_flags_fail_early_naming_the_flag(tmp_path):
    for overrides, flag in [({"views": 0}, "--views"), ({"top_k": -1}, "--top_k"), ({"min_scale": 0.0}, "--min_scale"),
                            ({"logit_dtype": "int8"}, "--logit_dtype"), ({"teachers": ()}, "--teacher")]:
        with pytest.raises(ValueError, match=flag):
            extraction.run(config_for(tmp_path, **overrides), source=ListSource([]), teacher_loader=load_fake_teacher)


def test_decode_min_side_never_upsamples_a_view():
    assert extract_shard.decode_min_side(224, 1, 0.08) == 256  # "resize 256, crop 224"
    side = extract_shard.decode_min_side(224, 4, 0.08)
    assert side * np.sqrt(0.08 * 0.75) >= 224 > (side - 1) * np.sqrt(0.08 * 0.75)


def test_chosen_copies_keep_the_smallest_origin_of_an_id_listed_twice():
    keys = [("a", "/z/a"), ("a", "/y/a"), ("a", "/x/a"), ("b", "/b1"), ("c", "/c"), ("c", "/c")]
    with BeamTestPipeline(runner=FnApiRunner()) as pipeline:
        chosen = pipeline | beam.Create(keys) | beam.GroupByKey() | beam.FlatMap(extract_shard.chosen_copies)
        # b is listed once; c twice from the same origin, which is one input listed twice, not a duplicate.
        assert_that(chosen, equal_to([("a", "/x/a")]))


class _CountingTeacher:
    """Logits = the view's mean pixel, plus how many views its call held (so a wrong split shows)."""

    def __init__(self):
        self.calls = []

    def predict(self, batch, batch_size=32):
        self.calls.append(len(batch))
        return np.stack([batch.mean(axis=(1, 2, 3)), np.full(len(batch), len(batch))], axis=1)


def _viewed(image_id, values):
    pixels = np.stack([np.full((2, 2, 3), value, np.float32) for value in values])
    return teacher_inference.ViewedImage(image_id=image_id, label=-1, origin=image_id, crops=np.zeros((len(values), 4)),
                                     flips=np.zeros(len(values), bool), pixels=pixels)


class _TeacherThatBreaks(FakeTeacher):
    """The fake teacher, whose third call raises (one call per work unit in the test below)."""

    calls = 0

    def predict(self, batch, batch_size=32):
        type(self).calls += 1
        if type(self).calls == 3:
            raise RuntimeError("the teacher broke on its third call")
        return super().predict(batch, batch_size)


def _load_teacher_that_breaks():
    return _TeacherThatBreaks()


def test_a_failed_bundle_leaves_only_whole_committed_units_and_no_temporary_files(tmp_path):
    _TeacherThatBreaks.calls = 0
    with pytest.raises(Exception, match="the teacher broke on its third call"):
        run_job(tmp_path, good_items(8), loader=_load_teacher_that_breaks, views=3, per_shard=2)
    prefix = str(tmp_path / "out" / "soft")
    leftovers = [name for name in os.listdir(shard_output.manifests_dir(prefix)) if ".tmp-" in name]
    assert leftovers == []  # the open units' temporary record files were dropped
    manifests = [name for name in os.listdir(shard_output.manifests_dir(prefix))
                 if name.endswith(".json") and not name.startswith("_")]  # not the run's _settings.json
    # One call per unit: units 1 and 2 committed when their calls came back (at the next unit's end); the
    # third call failed, so units 3 and 4 were aborted.
    assert sorted(manifests) == ["000000.json", "000001.json"]
    for name in manifests:
        with open(os.path.join(shard_output.manifests_dir(prefix), name), encoding="utf-8") as file:
            manifest = json.load(file)
        assert len(list(records.read_records(manifest["file"]))) == manifest["records"] == 2
    assert len(glob.glob(prefix + "-*")) == len(manifests)  # a record file only where a manifest commits it
    assert not os.path.exists(extraction.summary_path(prefix))


def test_view_batcher_calls_the_teacher_on_exactly_batch_size_views_and_splits_them_back():
    teacher = _CountingTeacher()
    batcher = extract_shard.ViewBatcher(teacher, batch_size=4)
    finished = batcher.add(_viewed("a", [1, 2, 3]))          # 3 views: no call yet
    assert finished == [] and teacher.calls == []
    finished = batcher.add(_viewed("b", [4, 5, 6]))          # 6 views: one call of 4; a is complete
    assert [image.image_id for image, _ in finished] == ["a"] and teacher.calls == [4]
    np.testing.assert_array_equal(finished[0][1], [[1, 4], [2, 4], [3, 4]])
    assert finished[0][0].pixels is None                     # the pixels are dropped once the logits exist
    finished = batcher.flush()                               # 2 views left: one padded call of 4
    assert [image.image_id for image, _ in finished] == ["b"] and teacher.calls == [4, 4]
    np.testing.assert_array_equal(finished[0][1][:, 0], [4, 5, 6])
    assert (batcher.calls, batcher.views) == (2, 6)


def test_a_cut_sends_the_queued_views_as_a_call_of_their_own_without_waiting_for_it():
    teacher = _CountingTeacher()
    batcher = extract_shard.ViewBatcher(teacher, batch_size=4, overlap=True)
    finished = batcher.add(_viewed("a", [1, 2, 3, 4, 5]), owner="unit-1")  # one call of a's first 4 views
    finished += batcher.cut()  # a's 5th view: a call of its own (padded), in flight while the caller goes on
    assert [image.image_id for image, _ in finished] == [] and batcher.calls == 1  # the cut did not wait
    finished += batcher.add(_viewed("b", [6, 7]), owner="unit-2")  # a new call starts with b's views
    finished += batcher.flush()
    assert teacher.calls == [4, 4, 4] and [image.image_id for image, _ in finished] == ["a", "b"]
    np.testing.assert_array_equal(finished[0][1][:, 0], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(finished[1][1][:, 0], [6, 7])  # not in a's padded call
    assert batcher.calls_by_owner == {"unit-1": 2, "unit-2": 1}


def test_an_overlapping_view_batcher_makes_the_same_calls_and_returns_images_one_call_later():
    sequential, overlapping = _CountingTeacher(), _CountingTeacher()
    plain, ahead = extract_shard.ViewBatcher(sequential, 4), extract_shard.ViewBatcher(overlapping, 4, overlap=True)
    images = [_viewed(name, [index, index + 10, index + 20]) for index, name in enumerate("abcde")]
    finished = {"plain": [], "ahead": []}
    for image in images:
        finished["plain"] += plain.add(image)
        finished["ahead"] += ahead.add(image)
        assert len(finished["ahead"]) <= len(finished["plain"])  # its images come back later, never earlier
    finished["plain"] += plain.flush()
    finished["ahead"] += ahead.flush()
    assert overlapping.calls == sequential.calls == [4, 4, 4, 4]  # the same calls (the last padded), in order
    assert [image.image_id for image, _ in finished["ahead"]] == list("abcde")
    for (image, logits), (same_image, same_logits) in zip(finished["plain"], finished["ahead"]):
        assert image.image_id == same_image.image_id
        np.testing.assert_array_equal(logits, same_logits)
    assert (ahead.calls, ahead.views) == (plain.calls, plain.views) == (4, 15)


def test_progress_lines_every_n_images_with_the_rate_from_a_fake_clock():
    from pipelines import teacher_inference

    times = iter([100.0, 102.0, 104.0, 106.0])
    progress = teacher_inference.Progress()
    progress.start(clock=lambda: next(times))  # the first batch starts at t=100
    assert progress.add(3, 6, every=5, clock=lambda: next(times)) is None  # 3 images at t=102: below 5
    line = progress.add(3, 6, every=5, clock=lambda: next(times))  # 6 images at t=104: 1.5 images/s
    assert line.startswith("extract: 6 images, 12 views, 2 batches in worker process ") and line.endswith(
        "; 1.5 images/s")
    assert progress.add(3, 6, every=5, clock=lambda: next(times)) is None  # 9 images: next line at 10


def test_a_second_job_in_the_same_process_logs_its_own_progress(tmp_path, caplog):
    # The in-process runner's workers share the launcher's progress counter; a job run before with
    # another --log_every used to leave its count and threshold behind (no line for the next job).
    caplog.set_level("INFO")
    caplog.set_level("INFO", logger="absl")
    run_job(tmp_path / "first", good_items(3), views=1, log_every=100)
    caplog.clear()
    run_job(tmp_path / "second", good_items(7), views=3, seed=5, per_shard=2)
    progress = [record.getMessage() for record in caplog.records if "images/s" in record.getMessage()]
    assert progress and progress[0].startswith("extract: 6 images, 18 views"), progress


def test_an_earlier_output_is_refused_unless_overwrite_or_resume(tmp_path):
    items = good_items(4)
    run_job(tmp_path, items, per_shard=2)
    with pytest.raises(ValueError, match=r"--output=.*soft: an earlier run's output is there .*--overwrite.*--resume"):
        run_job(tmp_path, items, per_shard=2)
    # A stale file of another run under the prefix: --overwrite removes it, and everything else, first.
    stale = tmp_path / "out" / "soft-stale.tfrecord"
    stale.write_bytes(b"")
    result, written, dead = run_job(tmp_path, items, per_shard=4, overwrite=True)
    assert not stale.exists() and sorted(written) == [item[0] for item in items] and dead == []
    assert [shard["records"] for shard in result.summary["shards"]] == [4]  # one work unit of 4 now
    with pytest.raises(ValueError, match="--overwrite and --resume exclude each other"):
        run_job(tmp_path, items, overwrite=True, resume=True)
    with pytest.raises(ValueError, match=r"settings differ .*--seed: 0, 3"):
        run_job(tmp_path, items, per_shard=4, resume=True, seed=3)


def test_a_run_under_a_longer_prefix_is_neither_refused_nor_removed(tmp_path):
    """PREFIX-* also matches soft-small-*: another run's files, which --overwrite of soft must not touch."""
    items = good_items(4)
    out = tmp_path / "out"
    sibling, _, _ = run_job(tmp_path, items, per_shard=2, output=str(out / "soft-small"),
                            dead_letter=str(out / "soft-small.dead.jsonl"))
    folder = out / "soft-notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    kept = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert sorted(str(path.relative_to(out)) for path in kept) == [
        "soft-notes/keep.txt", "soft-small-000000.tfrecord", "soft-small-000001.tfrecord", "soft-small.dead.jsonl",
        "soft-small.shards/000000.json", "soft-small.shards/000001.json", "soft-small.shards/_run.json",
        "soft-small.shards/_settings.json", "soft-small.summary.json"]
    first, _, _ = run_job(tmp_path, items, per_shard=2)  # soft: not refused for soft-small's files
    again, _, _ = run_job(tmp_path, items, per_shard=4, overwrite=True)
    assert [shard["records"] for shard in again.summary["shards"]] == [4]
    replaced = {shard["file"] for shard in first.summary["shards"]} - {shard["file"] for shard in again.summary["shards"]}
    assert len(replaced) == 1 and not any(os.path.exists(path) for path in replaced)  # soft's own unit went
    assert {path: path.read_bytes() for path in kept} == kept
    listed = sorted(str(path) for path in out.glob("soft-*.tfrecord"))
    assert listed == sorted([shard["file"] for shard in sibling.summary["shards"] + again.summary["shards"]])


def test_readers_given_the_summary_read_exactly_the_files_it_lists(tmp_path):
    items = good_items(5)
    result, written, _ = run_job(tmp_path, items, per_shard=2)
    summary = extraction.summary_path(config_for(tmp_path).output)
    assert len(result.summary["shards"]) == 3 and result.summary["records"] == 5
    # A file that matches PREFIX-* but is not this run's: the glob reads it, the summary does not.
    stray = str(tmp_path / "out" / "soft-zzz.tfrecord")
    records.write_records(stray, [records.decode(records.encode(written["img000"]))])
    assert len(list(records.read_records(config_for(tmp_path).output + "-*"))) == 6
    assert sorted(record.image_id for record in records.read_records(summary)) == sorted(written)
    assert records.expand_paths(summary) == [shard["file"] for shard in result.summary["shards"]]
    with pytest.raises(records.RecordError, match="not an extraction summary"):
        bogus = tmp_path / "bogus.summary.json"
        bogus.write_text("{}")
        records.expand_paths(str(bogus))


def test_resume_skips_committed_work_units_and_counts_all_of_them(tmp_path):
    items = good_items(6)
    result, first, _ = run_job(tmp_path / "a", items, per_shard=2)
    # Drop one work unit's commit, as a run killed before that shard finished would leave it.
    manifest = tmp_path / "a" / "out" / "soft.shards" / "000001.json"
    manifest.unlink()
    committed = {shard["file"]: open(shard["file"], "rb").read() for shard in result.summary["shards"]}
    # A unit this source does not yield (an older version's name for it): its manifest and records go.
    stale_records = tmp_path / "a" / "out" / "soft-data_img000.png-0123456789abcdef.tfrecord"
    stale_records.write_bytes(committed[result.summary["shards"][0]["file"]])
    stale_manifest = tmp_path / "a" / "out" / "soft.shards" / "data_img000.png-0123456789abcdef.json"
    stale_manifest.write_text(json.dumps({"key": "data_img000.png-0123456789abcdef", "file": "/etc/hostname"}))
    assert result.summary["stale_files_removed"] == []
    resumed, again, _ = run_job(tmp_path / "a", items, per_shard=2, resume=True)
    assert resumed.summary["resumed_shards"] == 2 and resumed.counters["read"] == 6 and resumed.summary["balanced"]
    assert resumed.summary["stale_files_removed"] == [str(stale_records)]
    assert not stale_records.exists() and not stale_manifest.exists() and os.path.exists("/etc/hostname")
    assert sorted(path.name for path in (tmp_path / "a" / "out" / "soft.shards").iterdir()) == [
        "000000.json", "000001.json", "000002.json", "_run.json", "_settings.json"]
    assert {shard["file"]: open(shard["file"], "rb").read() for shard in resumed.summary["shards"]} == committed
    assert sorted(again) == sorted(first)


def test_dry_run_builds_the_pipeline_and_reports_its_size_without_running(tmp_path):
    config = config_for(tmp_path)
    report = extraction.dry_run(config, source=ListSource(good_items(3), 2), teacher_loader=load_fake_teacher)
    assert report["pipeline_bytes"] > 1000 and report["source"] == "list:test" and report["teachers"] == ["fake"]
    assert report["existing_outputs"] == 0 and not (tmp_path / "out").exists()  # nothing written
