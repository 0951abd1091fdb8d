"""tf.distribute: MirroredStrategy over two logical CPU devices, MultiWorkerMirroredStrategy over two processes.

Each run happens in its own process (tests/trainer_subprocess_main.py): the CPU can only be split into
logical devices before TensorFlow initializes, and each worker of a cluster is a process.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import trainer_fixtures as fixtures
from top1_check import independent_top1

HELPER = os.path.join(os.path.dirname(__file__), "trainer_subprocess_main.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
    env.update(extra)
    return env


def _config(record_glob, model_dir, **overrides):
    config = dict(train_pattern=record_glob, model_dir=model_dir, student="small_cnn", width=0.25, image_size=32,
                  batch_size=8, steps=6, learning_rate=0.1, checkpoint_every=0, log_every=3, temperature=2.0,
                  shuffle_buffer=16)
    config.update(overrides)
    return config


def _weights(path):
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


@pytest.fixture(scope="module")
def record_glob(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    return fixtures.write_tiny_records(directory, fixtures.tiny_teacher_model(), num_files=2, per_file=8,
                                       num_views=2, top_k=3, unlabeled_every=5)


@pytest.fixture(scope="module")
def uneven_eval_glob(tmp_path_factory):
    """3 files of 5 records: two input pipelines shard them by file, 10 records to one and 5 to the other."""
    directory = str(tmp_path_factory.mktemp("eval"))
    return fixtures.write_tiny_records(directory, fixtures.tiny_teacher_model(), num_files=3, per_file=5,
                                       num_views=1, prefix="eval", first_index=300, unlabeled_every=4)


def _eval_scalars(log_dir):
    import tensorflow as tf

    scalars = {}
    for name in sorted(os.listdir(log_dir)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, name)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return scalars


@pytest.mark.slow
def test_two_mirrored_replicas_reach_the_weights_of_one_replica(record_glob, uneven_eval_glob, tmp_path):
    config = _config(record_glob, str(tmp_path / "run"), eval_pattern=uneven_eval_glob, eval_every=3, eval_batch_size=4)
    request = {"mode": "mirrored", "config": config, "weights_out": str(tmp_path / "weights.npz"),
               "initial_out": str(tmp_path / "initial.npz")}
    # TF_DETERMINISTIC_OPS: the training input's interleave then reads in a fixed order (deterministic=False
    # otherwise), so that both runs see the same stream.
    result = subprocess.run([sys.executable, HELPER, json.dumps(request)], env=_env(TF_DETERMINISTIC_OPS="1"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    weights = _weights(request["weights_out"])
    one, two = weights[: len(weights) // 2], weights[len(weights) // 2:]
    for first, second in zip(one, two):
        np.testing.assert_allclose(first, second, rtol=1e-4, atol=1e-5)
    summaries = [json.load(open(tmp_path / f"run-{name}" / "summary.json")) for name in ("one", "two")]
    assert [s["replicas"] for s in summaries] == [1, 2]
    assert summaries[0]["steps"] == summaries[1]["steps"] == 6
    # Both runs started from the same initialization (same seed), and training moved every weight from it.
    initial = _weights(request["initial_out"])
    first_start, second_start = initial[: len(initial) // 2], initial[len(initial) // 2:]
    for first, second in zip(first_start, second_start):
        np.testing.assert_array_equal(first, second)
    assert len(first_start) == len(one)
    for start, trained in zip(first_start, one):
        assert np.abs(trained - start).max() > 1e-6
    # Evaluation during training on both replicas counts what one replica counts, at the same steps.
    assert summaries[0]["eval_images"] == summaries[1]["eval_images"] == 11  # 15 records, 4 unlabelled
    assert summaries[0]["top1"] == summaries[1]["top1"]
    scalars = [_eval_scalars(tmp_path / f"run-{name}" / "logs" / "eval") for name in ("one", "two")]
    assert [step for step, _ in scalars[0]["eval/top1"]] == [3, 6]
    assert scalars[0]["eval/top1"] == scalars[1]["eval/top1"] and scalars[0]["eval/top5"] == scalars[1]["eval/top5"]


@pytest.mark.slow
def test_synchronized_batch_norm_over_two_replicas_gives_the_statistics_of_one_device_on_the_global_batch(
        record_glob, tmp_path):
    """mobilenet_v2 (a batch norm after every convolution, no dropout), one step at a global batch of 8:
    with --sync_batch_norm two replicas of 4 images move the moving means and variances, and every weight,
    as one device does on all 8; without it each replica normalizes by its own 4 images and they do not."""
    import keras

    config = _config(record_glob, str(tmp_path / "run"), student="mobilenet_v2", steps=1, sync_batch_norm=True)
    request = {"mode": "mirrored", "config": config, "weights_out": str(tmp_path / "weights.npz"),
               "initial_out": str(tmp_path / "initial.npz")}
    unsynchronized_request = {"mode": "mirrored", "two_only": True, "weights_out": str(tmp_path / "plain.npz"),
                              "config": dict(config, sync_batch_norm=False, model_dir=str(tmp_path / "plain"))}
    for each in (request, unsynchronized_request):  # a process each (trainer_subprocess_main.py says why)
        result = subprocess.run([sys.executable, HELPER, json.dumps(each)], env=_env(TF_DETERMINISTIC_OPS="1"),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]
    weights, initial = _weights(request["weights_out"]), _weights(request["initial_out"])
    one, two = weights[: len(weights) // 2], weights[len(weights) // 2:]
    start = initial[: len(one)]  # both runs start from the same seed's weights (checked by the test above)
    unsynchronized = _weights(unsynchronized_request["weights_out"])
    names = [variable.path for variable in keras.saving.load_model(str(tmp_path / "run-one" / "student.keras")).weights]
    assert len(names) == len(one) == len(two) == len(unsynchronized) == len(start)
    statistics = [index for index, name in enumerate(names) if "moving_variance" in name]
    assert len(statistics) == 52  # MobileNetV2's batch norms

    def close(index, other):
        """Moved like the one-device run (the all-reduced sums round differently)."""
        return fixtures.moved_alike(start[index], one[index], other[index])

    for index in statistics:  # the variances moved from their initial 1 ...
        assert np.abs(one[index] - 1.0).max() > 1e-4, names[index]
    mismatched = [names[index] for index in range(len(one)) if not close(index, two)]
    assert mismatched == []  # ... and every array moved as on one device
    differs = [names[index] for index in statistics if not close(index, unsynchronized)]
    assert len(differs) > len(statistics) // 2, differs  # per-replica statistics are not the global batch's


@pytest.mark.slow
def test_two_worker_processes_finish_with_identical_weights(record_glob, uneven_eval_glob, tmp_path):
    ports = fixtures.free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    model_dir = str(tmp_path / "run")
    processes = []
    for index in range(2):
        request = {"mode": "multi_worker", "config": _config(record_glob, model_dir, checkpoint_every=3,
                                                              eval_pattern=uneven_eval_glob, eval_every=3,
                                                              eval_batch_size=4),
                   "weights_out": str(tmp_path / f"weights-{index}.npz")}
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen([sys.executable, HELPER, json.dumps(request)], env=_env(TF_CONFIG=tf_config),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=300)[0])
        finally:
            process.kill()
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]
    chief, worker = _weights(tmp_path / "weights-0.npz"), _weights(tmp_path / "weights-1.npz")
    for first, second in zip(chief, worker):
        np.testing.assert_array_equal(first, second)
    # The chief wrote the outputs and checkpoints; the worker's temporary directory is gone.
    summary = json.load(open(os.path.join(model_dir, "summary.json")))
    assert summary["replicas"] == 2 and summary["steps"] == 6 and summary["strategy"] == "MultiWorkerMirroredStrategy"
    # Each worker evaluated its shard (10 records on one, 5 on the other) and the counts were summed.
    assert summary["eval_images"] == 11  # 15 records, 4 of them unlabelled (every 4th index)
    top1, labelled = independent_top1(os.path.join(model_dir, "student.keras"), uneven_eval_glob)
    assert summary["top1"] == pytest.approx(top1) and labelled == 11
    assert [step for step, _ in _eval_scalars(os.path.join(model_dir, "logs", "eval"))["eval/top1"]] == [3, 6]
    best = json.load(open(os.path.join(model_dir, "best", "best.json")))
    assert best["step"] in (3, 6) and best["eval_images"] == 11
    assert os.path.exists(os.path.join(model_dir, "student.keras"))
    assert sorted(name for name in os.listdir(os.path.join(model_dir, "checkpoints")) if name.endswith(".index")) == [
        "ckpt-3.index", "ckpt-6.index"]
    import keras  # the saved student holds the trained weights

    saved = keras.saving.load_model(os.path.join(model_dir, "student.keras"))
    for first, second in zip(saved.get_weights(), chief):
        np.testing.assert_array_equal(first, second)


def _start_workers(record_glob, model_dir, tmp_path, ports, sleep, tag):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        request = {"mode": "multi_worker", "sleep": sleep,
                   "config": _config(record_glob, model_dir, steps=24, checkpoint_every=0, log_every=4),
                   "weights_out": str(tmp_path / f"{tag}-{index}.npz")}
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen([sys.executable, HELPER, json.dumps(request)], env=_env(TF_CONFIG=tf_config),
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return processes


def _finish(processes, timeout=300):
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=timeout)[0])
        finally:
            process.kill()
    return outputs


@pytest.mark.slow
def test_preempted_worker_makes_both_save_at_the_same_step_and_the_rerun_resumes(record_glob, tmp_path):
    """SIGTERM to one worker (what a pod eviction sends): all workers checkpoint at one step, exit 42, resume."""
    import tensorflow as tf

    model_dir = str(tmp_path / "run")
    processes = _start_workers(record_glob, model_dir, tmp_path, fixtures.free_ports(2), 0.2, "first")
    log_seen = os.path.join(model_dir, "logs", "train")
    deadline = time.time() + 240
    while time.time() < deadline and not (os.path.isdir(log_seen) and os.listdir(log_seen)):
        time.sleep(0.2)
    time.sleep(1.0)  # a few steps in
    processes[1].send_signal(signal.SIGTERM)
    outputs = _finish(processes)
    assert [p.returncode for p in processes] == [42, 42], outputs[1][-3000:]
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert latest, outputs[0][-3000:]
    preempted_at = int(latest.rsplit("-", 1)[1])
    assert 0 < preempted_at < 24 and not os.path.exists(os.path.join(model_dir, "summary.json"))

    processes = _start_workers(record_glob, model_dir, tmp_path, fixtures.free_ports(2), 0.0, "second")
    outputs = _finish(processes)
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:]
    summary = json.load(open(os.path.join(model_dir, "summary.json")))
    assert summary["resumed_from_step"] == preempted_at and summary["steps"] == 24
    assert summary["optimizer_iterations"] == 24
    for first, second in zip(_weights(tmp_path / "second-0.npz"), _weights(tmp_path / "second-1.npz")):
        np.testing.assert_array_equal(first, second)
