"""Every job's final files are written atomically: a writer that fails half-way leaves the previous good
files and no temporary; an unwritable output folder is refused before the heavy work, naming the flag.

The jobs: distillery-train (student.keras, saved_model/, summary.json), distillery-quantize (.tflite),
distillery-benchmark (report.json, report.md, PNGs) and distillery-factorize (.keras and its report).

    .venv/bin/python -m pytest -q -p no:xdist tests/test_atomic_outputs.py
"""

import hashlib
import os

import keras
import pytest
import trainer_fixtures
from factorize_fixtures import tiny_model, write_tiny_records

from benchmark import accuracy, report
from benchmark import job as benchmark_job
from compress import factorize_job, quantize
from distillery import atomic_files, latency, op_profile
from trainer import loop
from trainer.train_config import TrainConfig


class HalfWay(OSError):
    """What a writer raises after writing part of its output (a full disk, a lost mount)."""


def _digests(folder):
    """{relative path: sha256} of every file under `folder`: the previous outputs, to compare after a failure."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return found


def _temporaries(folder):
    return [os.path.join(root, name) for root, folders, names in os.walk(folder) for name in folders + names
            if name.startswith(atomic_files.TEMPORARY_PREFIX)]


def _write_half_then_fail(path, content: bytes):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(content[: len(content) // 2])
    raise HalfWay(f"no space left on the device while writing {path}")


def _blocked(tmp_path):
    """A file where an output folder should be: no user, root included, can write under it."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    path = str(tmp_path_factory.mktemp("student") / "student.keras")
    model.save(path)
    return path


def test_quantize_keeps_the_last_tflite_when_the_write_fails(tiny_student, tmp_path, monkeypatch):
    output = tmp_path / "out" / "student_float32.tflite"
    quantize.quantize_file(tiny_student, str(output), "float32", log=lambda line: None)
    before = _digests(tmp_path / "out")

    class HalfFile:
        def __init__(self, path, mode):
            self.path = path

        def __enter__(self):
            return self

        def __exit__(self, *exception):
            return False

        def write(self, content):
            _write_half_then_fail(self.path, content)

    real_open = open
    monkeypatch.setattr(atomic_files, "open", lambda path, mode="r", **options: HalfFile(path, mode) if str(path).endswith(
        "student_float32.tflite") and "w" in mode else real_open(path, mode, **options), raising=False)
    with pytest.raises(HalfWay):
        quantize.quantize_file(tiny_student, str(output), "float32", log=lambda line: None)
    assert _digests(tmp_path / "out") == before and not _temporaries(tmp_path)


def test_quantize_refuses_an_unwritable_output_before_loading(tmp_path):
    blocker = _blocked(tmp_path)
    with pytest.raises(quantize.QuantizeError, match=f"--output={blocker}/m.tflite: cannot write to {blocker}: "
                                                     "it is a file, not a folder"):
        quantize.quantize_file(str(tmp_path / "no-such-model.keras"), str(blocker / "m.tflite"), "float32")


def _report_inputs():
    counts = accuracy.EvalCounts(images=10, labelled=10, top1_correct=7, top5_correct=9, teacher_agree=8,
                                 runtime_ms=20.0)
    stats = latency.LatencyStats.from_samples([1.0, 2.0, 3.0])
    profile = op_profile.OpProfile((op_profile.OpRow(0, "CONV_2D", (1, 8, 8, 4), "INT8", "conv1", 0.3, 1.0),),
                                   whole_model_ms=0.3, num_threads=1)
    return [report.model_entry("/m/a_int8.tflite", 1000, stats, 1, profile, counts)], {"/m/a_int8.tflite": profile}


def test_benchmark_report_keeps_the_last_report_when_a_plot_fails(tmp_path, monkeypatch):
    entries, profiles = _report_inputs()
    report_dir = tmp_path / "report"
    report.write_report(entries, str(report_dir), profiles)
    before = _digests(report_dir)
    assert set(before) == {"report.json", "report.md", "accuracy_vs_latency.png", "per_op_a_int8.png"}

    def failing_plot(profile, title, path, top=report.TOP_OPS_PLOTTED):
        _write_half_then_fail(path, b"\x89PNG\r\n\x1a\n" + bytes(100))

    monkeypatch.setattr(report, "plot_per_op", failing_plot)
    changed = [dict(entries[0], size_bytes=2000)]
    with pytest.raises(HalfWay):
        report.write_report(changed, str(report_dir), profiles)
    assert _digests(report_dir) == before and not _temporaries(tmp_path)


def test_benchmark_refuses_an_unwritable_report_dir_before_reading_the_models(tmp_path):
    blocker = _blocked(tmp_path)
    config = benchmark_job.BenchmarkConfig(report_dir=str(blocker / "report"))
    with pytest.raises(atomic_files.OutputFolderError, match=f"--report_dir={blocker}/report: .*Not a directory"):
        benchmark_job.run(config, [str(tmp_path / "no-such-model.tflite")])


def test_factorize_keeps_the_last_model_and_report_when_the_save_fails(tmp_path, monkeypatch):
    output = str(tmp_path / "out" / "factorized.keras")
    os.makedirs(os.path.dirname(output))
    factorize_job.save_outputs(tiny_model(), output, {"model": "first"})
    before = _digests(tmp_path / "out")
    assert set(before) == {"factorized.keras", "factorized.keras.report.json"}

    def failing_save(model, path, *args, **kwargs):
        _write_half_then_fail(str(path), b"PK\x03\x04" + bytes(1000))

    monkeypatch.setattr(keras.Model, "save", failing_save)
    with pytest.raises(HalfWay):
        factorize_job.save_outputs(tiny_model(seed=2), output, {"model": "second"})
    assert _digests(tmp_path / "out") == before and not _temporaries(tmp_path)


def test_factorize_refuses_an_unwritable_output_before_any_work(tmp_path):
    model_path = str(tmp_path / "student.keras")
    tiny_model().save(model_path)
    blocker = _blocked(tmp_path)
    config = factorize_job.JobConfig(model_path, write_tiny_records(tmp_path), str(blocker / "f.keras"), rank_ratio=0.5)
    with pytest.raises(factorize_job.JobError, match=f"--output={blocker}/f.keras: cannot write to {blocker}"):
        factorize_job.run(config, log=lambda line: None)


@pytest.fixture(scope="module")
def train_glob(tmp_path_factory):
    return trainer_fixtures.write_tiny_records(str(tmp_path_factory.mktemp("records")),
                                               trainer_fixtures.tiny_teacher_model(), num_files=1, per_file=8)


def _train_config(train_glob, model_dir, **overrides):
    values = dict(train_pattern=train_glob, model_dir=str(model_dir), student="small_cnn", width=0.25, image_size=32,
                  batch_size=4, steps=2, learning_rate=0.1, checkpoint_every=0, log_every=2, shuffle_buffer=8)
    return TrainConfig(**dict(values, **overrides))


def test_trainer_keeps_the_last_outputs_when_the_export_fails(train_glob, tmp_path, monkeypatch):
    model_dir = tmp_path / "run"
    loop.train(_train_config(train_glob, model_dir))
    outputs = ("student.keras", "saved_model", "summary.json")
    before = {name: _digests(model_dir / name) if (model_dir / name).is_dir() else
              (model_dir / name).read_bytes() for name in outputs}

    def failing_export(model, filepath, *args, **kwargs):
        _write_half_then_fail(os.path.join(filepath, "saved_model.pb"), bytes(1000))

    monkeypatch.setattr(keras.Model, "export", failing_export)
    with pytest.raises(HalfWay):
        loop.train(_train_config(train_glob, model_dir, steps=4))  # trains on, then the export fails
    after = {name: _digests(model_dir / name) if (model_dir / name).is_dir() else
             (model_dir / name).read_bytes() for name in outputs}
    assert after == before and not _temporaries(model_dir)
    assert sorted(int(name[len("ckpt-"):-len(".index")]) for name in os.listdir(model_dir / "checkpoints")
                  if name.endswith(".index")) == [2, 4]  # step 4 was checkpointed: a rerun only exports


def test_trainer_refuses_an_unwritable_model_dir_before_training(train_glob, tmp_path):
    blocker = _blocked(tmp_path)
    with pytest.raises(loop.TrainInputError, match=f"--model_dir={blocker}/run: cannot write to {blocker}/run: "
                                                   "Not a directory"):
        loop.train(_train_config(train_glob, blocker / "run"))
