"""What must hold at ImageNet / Open Images scale, measured at two sizes here.

- The submitted pipeline does not grow with the listing: a synthetic ImageNet-shaped folder of 1,000
  synset folders x 200 empty files builds a pipeline of the same size as 1,000 x 2, under 1 MB, and the
  launcher never lists the files (they are matched on the workers).
- `--max_examples=N` takes the same N inputs on every run: the N smallest image ids.
- A run killed with SIGKILL (local multi-process runner) and rerun with `--resume` finishes only the
  missing work units: the records are the same, byte for byte per image id, as an uninterrupted run.
"""

import dataclasses
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from extract_fixtures import encode, load_fake_teacher, photo, tiny_keras_teacher

from distillery import imagenet, records
from pipelines import extraction, source_files, sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _synset_folder(root, classes: int, per_class: int) -> str:
    synsets = sorted(imagenet.synset_to_index())[:classes]
    for synset in synsets:
        directory = os.path.join(root, synset)
        os.makedirs(directory)
        for index in range(per_class):
            open(os.path.join(directory, f"{synset}_{index:05d}.JPEG"), "wb").close()
    return str(root)


def _dry_run(tmp_path, folder):
    config = extraction.ExtractConfig(source=f"folder:{folder}", teachers=("fake",),
                                      output=str(tmp_path / "out" / folder.rsplit("/", 1)[-1]),
                                      dead_letter=str(tmp_path / "out" / "dead.jsonl"))
    return extraction.dry_run(config, teacher_loader=load_fake_teacher)


@pytest.mark.slow
def test_pipeline_size_does_not_grow_with_the_listing_and_the_launcher_lists_nothing(tmp_path, monkeypatch):
    small = _synset_folder(tmp_path / "small", 1000, 2)
    large = _synset_folder(tmp_path / "large", 1000, 200)

    def no_listing(self):
        raise AssertionError(f"the launcher listed {self.spec}")

    monkeypatch.setattr(source_files.FolderSource, "_list_entries", no_listing)
    small_bytes = _dry_run(tmp_path, small)["pipeline_bytes"]
    large_report = _dry_run(tmp_path, large)
    assert large_report["source"] == f"folder:{large}"
    assert large_report["pipeline_bytes"] < 1_000_000
    assert abs(large_report["pipeline_bytes"] - small_bytes) <= 0.1 * small_bytes, (large_report, small_bytes)


def _photo_folder(root, count: int) -> dict[str, bytes]:
    files = {}
    for index in range(count):
        image_id = f"{'ab'[index % 2]}/img{index:04d}.png"
        os.makedirs(os.path.join(root, os.path.dirname(image_id)), exist_ok=True)
        files[image_id] = encode(photo(index))
        with open(os.path.join(root, image_id), "wb") as file:
            file.write(files[image_id])
    return files


def test_max_examples_takes_the_smallest_image_ids_on_every_run(tmp_path):
    files = _photo_folder(tmp_path / "photos", 12)
    for run in ("first", "second"):
        config = extraction.ExtractConfig(source=f"folder:{tmp_path / 'photos'}", teachers=("fake",),
                                          output=str(tmp_path / run / "soft"), dead_letter=str(tmp_path / run / "d"),
                                          max_examples=5, examples_per_shard=2, batch_size=8)
        result = extraction.run(config, teacher_loader=load_fake_teacher)
        written = sorted(record.image_id for record in records.read_records(config.output + "-*"))
        assert written == sorted(files)[:5] and result.counters["read"] == 5
    # The same N as the launcher-side listing gives (sources.iterate_source), which tests and tools use.
    source = sources.open_source(f"folder:{tmp_path / 'photos'}", max_examples=5)
    assert [item.image_id for item in sources.iterate_source(source)] == sorted(files)[:5]


def _extract_command(tmp_path, teacher, output, *extra):
    return [sys.executable, "-m", "pipelines.extract", f"--source=folder:{tmp_path / 'photos'}",
            f"--teacher={teacher}", f"--output={output}", f"--dead_letter={output}.dead.jsonl", "--views=2",
            "--top_k=3", "--examples_per_shard=3", "--batch_size=4", "--log_every=0", *extra,
            "--", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _committed(output) -> list[str]:
    return [path for path in glob.glob(f"{output}.shards/*.json") if not os.path.basename(path).startswith("_")]


@pytest.mark.slow
def test_a_run_killed_half_way_resumes_to_the_records_of_an_uninterrupted_run(tmp_path):
    files = _photo_folder(tmp_path / "photos", 600)
    teacher = str(tmp_path / "tiny.keras")
    tiny_keras_teacher(teacher)
    reference, killed = tmp_path / "reference" / "soft", tmp_path / "killed" / "soft"
    completed = subprocess.run(_extract_command(tmp_path, teacher, reference), cwd=REPO, capture_output=True,
                               text=True, timeout=400)
    assert completed.returncode == 0, completed.stderr[-3000:]
    # Kill the whole process group (launcher and its worker processes) once a work unit is committed.
    log = open(tmp_path / "killed.log", "wb")
    process = subprocess.Popen(_extract_command(tmp_path, teacher, killed), cwd=REPO, start_new_session=True,
                               stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    while not _committed(killed) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]  # still running: kill it now
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    done_before = len(_committed(killed))
    total_units = len(json.load(open(f"{reference}.summary.json"))["shards"])
    assert 1 <= done_before < total_units and not os.path.exists(f"{killed}.summary.json"), (done_before, total_units)
    refused = subprocess.run(_extract_command(tmp_path, teacher, killed), cwd=REPO, capture_output=True, text=True,
                             timeout=400)
    assert refused.returncode == 2 and "pass --overwrite to replace it or --resume" in refused.stderr
    resumed = subprocess.run(_extract_command(tmp_path, teacher, killed, "--resume"), cwd=REPO, capture_output=True,
                             text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.load(open(f"{killed}.summary.json"))
    assert summary["resumed_shards"] >= done_before and summary["counters"]["read"] == len(files)
    assert summary["counters"]["written"] == len(files) and summary["balanced"]
    expected = {record.image_id: records.encode(record) for record in records.read_records(f"{reference}.summary.json")}
    got = {record.image_id: records.encode(record) for record in records.read_records(f"{killed}.summary.json")}
    assert got.keys() == expected.keys() == set(files)
    # The records name their image path, the same file for both runs: byte-identical per image id.
    assert got == expected
    assert not glob.glob(f"{killed}.shards/*.tmp-*")  # the killed attempts' temporary files were cleared


def test_tfrecord_files_are_matched_in_the_job_and_an_id_in_two_files_is_written_once(tmp_path):
    import tensorflow as tf

    def example(image_id: str, seed: int) -> bytes:
        feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode(photo(seed))])),
                   "image/source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()])),
                   "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[seed % 3]))}
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    for name, ids in (("part-a", ["x", "y"]), ("part-b", ["y", "z"])):
        with tf.io.TFRecordWriter(str(tmp_path / f"{name}.tfrecord")) as writer:
            for seed, image_id in enumerate(ids):
                writer.write(example(image_id, seed))
    config = extraction.ExtractConfig(source=f"tfrecord:{tmp_path}/part-*.tfrecord", teachers=("fake",),
                                      output=str(tmp_path / "out" / "soft"), dead_letter=str(tmp_path / "out" / "d"),
                                      store_image_max_side=32, batch_size=8)
    result = extraction.run(config, teacher_loader=load_fake_teacher)
    written = {record.image_id: record for record in records.read_records(f"{config.output}.summary.json")}
    assert sorted(written) == ["x", "y", "z"] and written["y"].image_path == f"{tmp_path}/part-a.tfrecord[1]"
    with open(config.dead_letter) as file:
        dead = [json.loads(line) for line in file]
    assert [(letter["image_id"], letter["stage"], letter["source"]) for letter in dead] == [
        ("y", "duplicate", f"{tmp_path}/part-b.tfrecord[0]")]
    # One work unit per file, keyed by its path; 4 inputs = 3 records + 1 dead letter.
    assert len(result.summary["shards"]) == 2 and result.counters["read"] == 4 and result.summary["balanced"]


def test_tfrecord_files_whose_long_paths_differ_only_at_the_end_get_their_own_work_units(tmp_path):
    import tensorflow as tf

    folder = tmp_path / ("long_folder_name_" * 9)  # the two paths share their first ~170 characters
    folder.mkdir()
    for name, ids in (("part-a", ["a0", "a1"]), ("part-b", ["b0"])):
        with tf.io.TFRecordWriter(str(folder / f"{name}.tfrecord")) as writer:
            for seed, image_id in enumerate(ids):
                feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode(photo(seed))])),
                           "image/source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id.encode()]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    config = extraction.ExtractConfig(source=f"tfrecord:{folder}/part-*.tfrecord", teachers=("fake",),
                                      output=str(tmp_path / "out" / "soft"), dead_letter=str(tmp_path / "out" / "d"),
                                      store_image_max_side=32, batch_size=8)
    result = extraction.run(config, teacher_loader=load_fake_teacher)
    assert sorted(record.image_id for record in records.read_records(f"{config.output}.summary.json")) == [
        "a0", "a1", "b0"]
    shards = result.summary["shards"]
    assert len(shards) == 2 and len({shard["file"] for shard in shards}) == 2
    assert sorted(shard["records"] for shard in shards) == [1, 2]


def test_shard_keys_are_safe_distinct_and_stable():
    from pipelines import shard_output

    assert shard_output.shard_key("000001") == "000001"  # a safe short key is itself
    long_a = "/data/" + "x" * 150 + "/train-00000-of-01024.tfrecord"
    long_b = long_a.replace("00000-of", "00001-of")
    keys = [shard_output.shard_key(text) for text in (long_a, long_b, "a/b", "a_b", "a b", "", "..", "../../etc")]
    assert len(set(keys)) == len(keys)  # before, the two long paths (cut at 120) and a/b, a_b, a b collided
    assert all(0 < len(key) <= 120 and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", key) for key in keys)
    assert keys[0].startswith("x") and "train-00000-of-01024.tfrecord-" in keys[0]  # the file name stays readable
    assert keys == [shard_output.shard_key(text) for text in (long_a, long_b, "a/b", "a_b", "a b", "", "..",
                                                               "../../etc")]


def test_an_open_images_csv_is_read_in_the_job_and_a_repeated_image_id_is_written_once(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(4):
        (images / f"id{index}.png").write_bytes(encode(photo(index)))
    rows = ["ImageID,path", *(f"id{index},images/id{index}.png" for index in range(4)), "id1,images/id2.png", ""]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    config = extraction.ExtractConfig(source=f"openimages_csv:{csv_path}", teachers=("fake",),
                                      output=str(tmp_path / "out" / "soft"), dead_letter=str(tmp_path / "out" / "d"),
                                      batch_size=8)
    result = extraction.run(config, teacher_loader=load_fake_teacher)
    written = {record.image_id: record.image_path for record in records.read_records(f"{config.output}.summary.json")}
    assert written == {f"id{index}": f"{tmp_path}/images/id{index}.png" for index in range(4)}
    with open(config.dead_letter) as file:
        (dead,) = [json.loads(line) for line in file]
    assert (dead["image_id"], dead["stage"], dead["source"]) == ("id1", "duplicate", f"{tmp_path}/images/id2.png")
    assert result.counters["read"] == 5 and result.summary["balanced"]
    # The rows are read on the workers: the pipeline is as large for 2,000 rows as for 5.
    big = tmp_path / "big.csv"
    big.write_text("\n".join(["ImageID,path", *(f"x{index},images/id0.png" for index in range(2000))]) + "\n")
    sizes = [extraction.dry_run(dataclasses.replace(config, source=f"openimages_csv:{path}"),
                                teacher_loader=load_fake_teacher)["pipeline_bytes"] for path in (csv_path, big)]
    assert abs(sizes[0] - sizes[1]) <= 0.01 * sizes[0], sizes


def _step_names(config) -> set[str]:
    """The top-level steps of the pipeline `config` builds (built, not run)."""
    source, loader, handle, _holder, teacher = extraction.open_inputs(config, None, load_fake_teacher, ())
    pipeline = extraction.make_pipeline(())
    extraction.build(pipeline, config, source, loader, handle, tuple(teacher.names), tuple(teacher.input_size))
    return {transform.unique_name.split("/")[0] for transform in pipeline.to_runner_api().components.transforms.values()}


def test_the_key_pass_runs_only_for_sources_whose_ids_can_repeat(tmp_path):
    """folder: and glob: ids are paths, unique by construction: no GroupByKey at all. tfrecord: and
    openimages_csv: ids come from the data and can repeat: one GroupByKey, over (id, origin) keys."""
    _photo_folder(tmp_path / "photos", 3)
    (tmp_path / "list.csv").write_text("ImageID,path\nid0,photos/a/img0000.png\n")
    with open(tmp_path / "part.tfrecord", "wb"):
        pass
    base = extraction.ExtractConfig(source="", teachers=("fake",), output=str(tmp_path / "out" / "soft"),
                                    dead_letter=str(tmp_path / "out" / "d"), store_image_max_side=32)
    for spec, deduplicated in ((f"folder:{tmp_path / 'photos'}", False), (f"glob:{tmp_path}/photos/*/*.png", False),
                               (f"tfrecord:{tmp_path}/part.tfrecord", True), (f"openimages_csv:{tmp_path}/list.csv", True)):
        steps = _step_names(dataclasses.replace(base, source=spec))
        assert "ExtractShards" in steps, spec
        assert ({"ReadKeys", "GroupKeys", "ChooseCopies"} <= steps) == deduplicated, (spec, sorted(steps))
        assert ("GroupKeys" in steps) == deduplicated, spec


@pytest.mark.slow
def test_dry_run_on_the_command_line_prints_one_json_line_and_writes_nothing(tmp_path):
    _photo_folder(tmp_path / "photos", 3)
    teacher = str(tmp_path / "tiny.keras")
    tiny_keras_teacher(teacher)
    output = tmp_path / "out" / "soft"
    completed = subprocess.run(_extract_command(tmp_path, teacher, output, "--dry_run"), cwd=REPO, capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (line,) = completed.stdout.strip().splitlines()
    report = json.loads(line)
    assert report["source"] == f"folder:{tmp_path / 'photos'}" and report["teachers"] == ["tiny.keras"]
    assert 0 < report["pipeline_bytes"] < 1_000_000 and report["existing_outputs"] == 0
    assert not (tmp_path / "out").exists()
