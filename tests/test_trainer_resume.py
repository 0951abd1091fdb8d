"""Resume is checked (trainer/resume.py): other settings are refused, old vs new; a rerun at or below the
finished step changes nothing; a longer one resumes; --overwrite starts over.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_trainer_resume.py
"""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
import trainer_fixtures as fixtures

from trainer import loop, resume
from trainer.train_config import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    fixtures.write_tiny_records(directory, fixtures.tiny_teacher_model(), num_files=2, per_file=6)
    return directory


def _config(record_dir, model_dir, **overrides):
    values = dict(train_pattern=os.path.join(record_dir, "train-*"), model_dir=str(model_dir), student="small_cnn",
                  width=0.25, image_size=32, batch_size=4, steps=4, learning_rate=0.1, checkpoint_every=0, log_every=2,
                  temperature=2.0, shuffle_buffer=8)
    return TrainConfig(**dict(values, **overrides))


@pytest.fixture(scope="module")
def finished_run(record_dir, tmp_path_factory):
    """A model_dir trained to step 4; each test works on a copy."""
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    loop.train(_config(record_dir, model_dir))
    return model_dir


@pytest.fixture
def model_dir(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)  # its run_config.json names the original --model_dir, which may change
    return copy


def _digests(folder):
    return {os.path.relpath(os.path.join(root, name), folder):
            hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest()
            for root, _, names in os.walk(folder) for name in names}


def test_every_setting_is_either_fixed_or_allowed_to_change():
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    assert not set(resume.FIXED) & set(resume.MAY_CHANGE)
    assert fields <= set(resume.FIXED) | set(resume.MAY_CHANGE), sorted(fields - set(resume.FIXED) - set(resume.MAY_CHANGE))


def test_run_config_holds_the_settings_the_data_and_the_classes(model_dir, record_dir):
    settings = resume.read(str(model_dir))
    assert settings["config"]["width"] == 0.25 and settings["config"]["steps"] == 4 and settings["classes"] == 5
    assert settings["train_files"] == [os.path.join(record_dir, f"train-0000{i}-of-00002") for i in (0, 1)]
    assert settings["record_spec"]["num_views"] == 2
    first_records = [hashlib.sha256(next(iter(tf.data.TFRecordDataset(path).as_numpy_iterator()))).hexdigest()[:16]
                     for path in settings["train_files"]]
    assert settings["train_file_contents"] == [{"bytes": os.path.getsize(path), "first_record_sha256": first}
                                               for path, first in zip(settings["train_files"], first_records)]


def test_other_settings_or_data_are_refused_listing_each_old_vs_new(model_dir, record_dir):
    before = _digests(model_dir)
    one_file = os.path.join(record_dir, "train-00000-of-00002")
    changed = _config(record_dir, model_dir, width=0.5, temperature=3.0, alpha=0.25, train_pattern=one_file, steps=8)
    with pytest.raises(loop.TrainInputError) as refused:
        loop.train(changed)
    message = str(refused.value)
    assert message.startswith(f"--model_dir={model_dir} holds a run with other settings")
    assert f"--train: '{record_dir}/train-*' (old) vs '{one_file}' (new)" in message
    assert "--width: 0.25 (old) vs 0.5 (new)" in message and "--temperature: 2.0 (old) vs 3.0 (new)" in message
    assert "--alpha: 0.5 (old) vs 0.25 (new)" in message
    assert f"files --train matches: 2 (old) vs 1 (new); only in the old run: {record_dir}/train-00001-of-00002" in message
    assert "--steps" not in message  # may change
    assert _digests(model_dir) == before


def test_record_files_rewritten_in_place_by_another_teacher_are_refused(tmp_path):
    """Same file names, same spec, other logits (a re-extraction with another teacher): the sizes may be
    equal, the first records are not."""
    records_dir = str(tmp_path / "records")
    fixtures.write_tiny_records(records_dir, fixtures.tiny_teacher_model(seed=7), num_files=2, per_file=6)
    config = _config(records_dir, tmp_path / "run", steps=2)
    loop.train(config)
    sizes = [os.path.getsize(os.path.join(records_dir, name)) for name in sorted(os.listdir(records_dir))]
    fixtures.write_tiny_records(records_dir, fixtures.tiny_teacher_model(seed=8), num_files=2, per_file=6)
    assert [os.path.getsize(os.path.join(records_dir, name)) for name in sorted(os.listdir(records_dir))] == sizes
    settings = resume.read(str(tmp_path / "run"))
    with pytest.raises(loop.TrainInputError) as refused:
        loop.train(dataclasses.replace(config, steps=4))
    message = str(refused.value)
    first = settings["train_file_contents"][0]
    assert (f"contents of the files --train matches: 2 of 2 changed: {records_dir}/train-00000-of-00002 "
            f"({first['bytes']} bytes, first record {first['first_record_sha256']} (old) vs {sizes[0]} bytes, "
            f"first record ") in message
    assert "--width" not in message and "--train:" not in message  # only the contents differ
    # A run_config.json of a trainer that did not record the contents resumes as before.
    del settings["train_file_contents"]
    resume.write(str(tmp_path / "run"), settings)
    assert loop.train(dataclasses.replace(config, steps=4))["resumed_from_step"] == 2


def test_a_rerun_at_or_below_the_finished_step_changes_nothing(model_dir, record_dir):
    before = _digests(model_dir)
    for steps in (4, 2):
        summary = loop.train(_config(record_dir, model_dir, steps=steps, log_every=1))
        assert summary["nothing_to_do"].startswith(f"--model_dir={model_dir} is already trained to step 4 "
                                                   f"(--steps={steps}): nothing to do")
        assert summary["steps"] == 4 and summary["loss"]["loss"] > 0  # the finished run's summary, not an empty loss
    assert _digests(model_dir) == before
    result = subprocess.run(
        [sys.executable, "-m", "trainer.train", f"--train={record_dir}/train-*", f"--model_dir={model_dir}",
         "--student=small_cnn", "--width=0.25", "--image_size=32", "--batch_size=4", "--steps=3", "--temperature=2",
         "--learning_rate=0.1", "--checkpoint_every=0", "--log_every=2", "--shuffle_buffer=8"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"distillery-train: --model_dir={model_dir} is already trained to step 4 (--steps=3): nothing to do" in \
        result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 4
    assert _digests(model_dir) == before


def test_a_longer_rerun_resumes_with_the_settings_that_may_change(model_dir, record_dir):
    summary = loop.train(_config(record_dir, model_dir, steps=6, log_every=1, learning_rate=0.05))
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 6 and summary["optimizer_iterations"] == 6
    assert summary["changed_on_resume"] == ["--steps: 4 -> 6", "--learning_rate: 0.1 -> 0.05", "--log_every: 2 -> 1"]
    assert resume.read(str(model_dir))["config"]["steps"] == 6


def test_overwrite_removes_the_run_and_starts_over(model_dir, record_dir):
    (model_dir / ".tmp-new-0badc0de-student.keras").write_text("left by a killed write")
    (model_dir / "notes.txt").write_text("not the run's")
    summary = loop.train(_config(record_dir, model_dir, width=0.5, steps=2, overwrite=True))
    assert summary["resumed_from_step"] == 0 and summary["steps"] == 2 and summary["width"] == 0.5
    assert sorted(name for name in os.listdir(model_dir / "checkpoints") if name.endswith(".index")) == ["ckpt-2.index"]
    assert resume.read(str(model_dir))["config"]["width"] == 0.5
    assert sorted(os.listdir(model_dir)) == ["checkpoints", "logs", "notes.txt", "run_config.json", "saved_model",
                                             "student.keras", "summary.json"]
