"""distillery/atomic_files.py: outputs appear whole or not at all, locally and through tf.io.gfile.

    .venv/bin/python -m pytest -q -p no:xdist tests/test_atomic_files.py
"""

import os

import pytest

from distillery import atomic_files


class HalfWay(RuntimeError):
    """What the test writers raise after writing part of their output."""


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


def test_a_staged_file_replaces_the_old_one_and_a_failure_leaves_it(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("old, good")
    with atomic_files.staged(str(path)) as temporary:
        assert os.path.dirname(temporary) == str(tmp_path) and temporary.endswith("model.keras")
        assert os.path.basename(temporary).startswith(atomic_files.TEMPORARY_PREFIX)
        assert path.read_text() == "old, good"  # the old one stays while the new one is written
        with open(temporary, "w") as handle:
            handle.write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["model.keras"]
    with pytest.raises(HalfWay):
        with atomic_files.staged_file(str(path)) as handle:
            handle.write("half of a new")
            raise HalfWay()
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["model.keras"]


def test_a_staged_folder_replaces_the_whole_old_folder(tmp_path):
    folder = tmp_path / "saved_model"
    (folder / "variables").mkdir(parents=True)
    (folder / "variables" / "old.index").write_text("old")
    (folder / "saved_model.pb").write_text("old")
    with pytest.raises(HalfWay):
        with atomic_files.staged(str(folder)) as temporary:
            os.makedirs(os.path.join(temporary, "variables"))
            open(os.path.join(temporary, "saved_model.pb"), "w").write("half")
            raise HalfWay()
    assert _listing(folder) == ["saved_model.pb", "variables/old.index"] and os.listdir(tmp_path) == ["saved_model"]
    with atomic_files.staged(str(folder)) as temporary:
        os.makedirs(os.path.join(temporary, "variables"))
        open(os.path.join(temporary, "variables", "new.index"), "w").write("new")
        open(os.path.join(temporary, "saved_model.pb"), "w").write("new")
    assert _listing(folder) == ["saved_model.pb", "variables/new.index"]  # nothing of the old folder is left
    assert (folder / "saved_model.pb").read_text() == "new" and os.listdir(tmp_path) == ["saved_model"]


def test_nested_stages_appear_together_and_all_go_on_failure(tmp_path):
    with pytest.raises(HalfWay):
        with atomic_files.staged_file(str(tmp_path / "summary.json")) as summary, \
                atomic_files.staged(str(tmp_path / "student.keras")) as model:
            open(model, "w").write("model")
            summary.write("{")
            raise HalfWay()
    assert os.listdir(tmp_path) == []
    with atomic_files.staged_file(str(tmp_path / "summary.json")) as summary, \
            atomic_files.staged(str(tmp_path / "student.keras")) as model:
        open(model, "w").write("model")
        summary.write("{}")
        assert os.listdir(tmp_path) and not (tmp_path / "summary.json").exists()
    assert sorted(os.listdir(tmp_path)) == ["student.keras", "summary.json"]


def test_a_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_files.staged(str(tmp_path / "out.tflite")):
            pass
    assert os.listdir(tmp_path) == []


def test_remote_files_and_folders_go_through_gfile():
    """TF's ram:// file system stands in for gs:// (docs/decisions/005-gcs-and-its-emulator.md)."""
    import tensorflow as tf

    root = "ram://atomic_files_test"
    with atomic_files.staged_file(f"{root}/report.json") as handle:
        handle.write("good")
    with pytest.raises(HalfWay):
        with atomic_files.staged_file(f"{root}/report.json") as handle:
            handle.write("half")
            raise HalfWay()
    with tf.io.gfile.GFile(f"{root}/report.json") as handle:
        assert handle.read() == "good"
    assert tf.io.gfile.listdir(root) == ["report.json"]
    # A folder written by a local-only writer: copied there, then moved into place file by file.
    for content in ("old", "new"):
        with atomic_files.staged(f"{root}/saved_model", local_writer=True) as temporary:
            assert not atomic_files.is_remote(temporary)
            os.makedirs(os.path.join(temporary, "variables"))
            open(os.path.join(temporary, "variables", f"{content}.index"), "w").write(content)
    files = [os.path.join(folder, name)[len(root) + 1:] for folder, _, names in tf.io.gfile.walk(root) for name in names]
    assert sorted(files) == ["report.json", "saved_model/variables/new.index"]


def test_check_writable_makes_the_folder_and_names_the_flag(tmp_path):
    atomic_files.check_writable(str(tmp_path / "a" / "b"), "--report_dir")
    assert os.path.isdir(tmp_path / "a" / "b") and os.listdir(tmp_path / "a" / "b") == []
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(atomic_files.OutputFolderError,
                       match=f"--output={blocker}/m.tflite: cannot write to {blocker}: it is a file, not a folder"):
        atomic_files.check_writable(str(blocker), "--output", str(blocker / "m.tflite"))
    with pytest.raises(atomic_files.OutputFolderError, match=f"--model_dir={blocker}/run: .*Not a directory"):
        atomic_files.check_writable(str(blocker / "run"), "--model_dir")
