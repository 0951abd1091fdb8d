"""Benchmark: the trainer's input pipeline and training loop, offline (records) against online (teacher in the step).

Goals: the input pipeline (`trainer.data.make_dataset`) reads >= 0.9x the images/s of a bare tf.data
read + decode + crop loop over the same records; the whole offline training loop runs >= 0.85x the steps/s of
its train step alone on a cached batch; offline distillation runs >= 3x the steps/s of online distillation
(builtin:mobilenet_v2_imagenet inside every step) for a MobileNet V1 0.25/128 student, on this machine.

What it measures, in one process and on the same records (the steps of the timed loops go through the
trainer's one loop, `trainer.driver.run_steps`, which leaves the first step, tracing or warm-up, out):

1. Records: --images photos stored as 320x320 JPEGs (random crops of the photos that ship in the installed
   wheels), V = --views views each (distillery.views.sample_views), the built-in teacher's top-k logits
   on the 224x224 views, written with distillery.records (no Beam).
2. The input pipeline alone at 128 and 224 px student size: images/s, the cores it kept busy (process CPU
   time over wall time) and images/s per busy core, for `make_dataset` (offline targets at T = 2) and for a
   bare loop written here (parallel interleave of the files, parse the image and view 0, decode the JPEG,
   `distillery.views.crop_view`, batch: no shuffle, no bad-record accounting, no teacher targets, the
   whole JPEG decoded where make_dataset decodes only the view's window); both on every core (make_dataset
   with threads=0; training on a CPU gives it a private pool, data.input_threads). The ratio is reported
   by wall time and per busy core.
3. The peak memory of the teacher distribution of a batch of 256 full-logit examples (C = 1000): the
   [N, k, C] one-hot formula the trainer used before (kept here as the reference) against the scatter of
   `distillery.records.teacher_distribution`, each in a fresh process (peak RSS growth, /proc/self/status).
4. The offline and online training loops (`trainer.loop.train`) and their train steps alone on one cached
   batch (`trainer.task.DistillationTask.build_train_step`).

Every measurement is repeated --repeats times, interleaved (bare, ours, ours, bare, ...) and the medians are
reported; the machine is shared, so the load average is printed with them.

    python -m benchmarks.training --work_dir=/tmp/training_bench   # ~20 min on 2 busy cores
    python -m benchmarks.training --work_dir=/tmp/training_quick --quick  # smoke run
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from distillery import images, numpy_views, records, views
from trainer import data, driver, loop, task
from trainer.train_config import TrainConfig

TEACHER_SPEC = "builtin:mobilenet_v2_imagenet"
PHOTO_SIDE = 320
MEMORY_BATCH, MEMORY_CLASSES = 256, 1000
WARMUP_BATCHES = 5
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORK_DIR = flags.DEFINE_string("work_dir", None, "Where records and runs go (default: a temporary directory).")
_IMAGES = flags.DEFINE_integer("images", 256, "Images in the benchmark records.")
_VIEWS = flags.DEFINE_integer("views", 4, "Stored views per image.")
_TOP_K = flags.DEFINE_integer("top_k", 10, "Stored teacher classes per view.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 40, "Training steps per run (the first is not timed).")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 120, "Batches per input-pipeline timing.")
_PIPELINE_SIZES = flags.DEFINE_list("pipeline_sizes", ["128", "224"], "Student sizes of the input-pipeline timings.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repeats of every measurement (medians are reported).")
_STUDENT = flags.DEFINE_string("student", "mobilenet_v1", "Student architecture.")
_WIDTH = flags.DEFINE_float("width", 0.25, "Student width multiplier.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Student input side of the training runs.")
_QUICK = flags.DEFINE_boolean("quick", False, "Smoke run: 24 images, 4 steps, one repeat.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Also write the numbers here.")


def log(line: str) -> None:
    print(line, flush=True)


def load_average() -> float:
    return os.getloadavg()[0]


def write_benchmark_records(directory: str, teacher, count: int, num_views: int, top_k: int,
                            num_files: int = 4) -> str:
    """Soft-label records of `count` 320x320 JPEG photos labelled by `teacher` (called directly); their glob."""
    from distillery import sample_photos  # pylint: disable=import-outside-toplevel

    os.makedirs(directory, exist_ok=True)
    photos = sample_photos.jittered_jpegs(count, 0, min_side=PHOTO_SIDE, max_side=PHOTO_SIDE)
    start = time.perf_counter()
    per_file = [[] for _ in range(num_files)]
    for index, encoded in enumerate(photos):
        image = images.decode_rgb(encoded)  # extraction's decoder: the pixels the teacher sees
        image_id = f"photo{index:05d}"
        crops, flips = views.sample_views(image_id, 0, num_views, int(image.shape[0]), int(image.shape[1]))
        logits = teacher.predict(numpy_views.crop_views(image, crops, flips, teacher.input_size), batch_size=num_views)
        per_file[index % num_files].append(records.make_record(
            image_id, -1, teacher.names, crops, flips, logits, top_k, encoded_image=encoded, logit_dtype="float16"))
        if (index + 1) % 64 == 0:
            log(f"  records: {index + 1}/{count} images, "
                f"{(index + 1) * num_views / (time.perf_counter() - start):.1f} teacher views/s")
    for file_index, batch in enumerate(per_file):
        records.write_records(os.path.join(directory, f"bench-{file_index:05d}-of-{num_files:05d}"), batch)
    return os.path.join(directory, "bench-*")


# ------------------------------------------------------------------------------------ input pipelines

def bare_dataset(pattern: str, image_size: int, batch_size: int) -> tf.data.Dataset:
    """The reference: read + decode + crop and nothing else (the trainer's decoder and crop, view 0)."""
    paths = records.expand_paths(pattern)
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string), "view/crop": tf.io.FixedLenFeature([], tf.string),
                "view/flip": tf.io.FixedLenFeature([], tf.string)}

    def load(serialized):
        parsed = tf.io.parse_single_example(serialized, features)
        crop = tf.cast(tf.io.decode_raw(parsed["view/crop"], tf.uint16)[:4], tf.float32) / records.CROP_SCALE
        flip = tf.io.decode_raw(parsed["view/flip"], tf.uint8)[0] > 0
        image = tf.io.decode_jpeg(parsed["image/encoded"], channels=3, dct_method="INTEGER_ACCURATE")
        return views.crop_view(image, crop, flip, (image_size, image_size))

    return (tf.data.Dataset.from_tensor_slices(paths).repeat()
            .interleave(tf.data.TFRecordDataset, cycle_length=len(paths), num_parallel_calls=tf.data.AUTOTUNE,
                        deterministic=False)
            .map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _next_batch(iterator) -> dict:
    """A "step" that only draws a batch: run_steps over it times the input pipeline alone."""
    next(iterator)
    return {}


def pipeline_rate(dataset: tf.data.Dataset, batch_size: int, batches: int) -> dict:
    """Images/s of a dataset alone (after warm-up batches: the shuffle buffer filled, autotuning settled),
    the cores it kept busy (process CPU time / wall time) and images/s per busy core."""
    iterator = iter(dataset)
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    cpu, wall = time.process_time(), time.perf_counter()
    totals = driver.run_steps(_next_batch, iterator, 0, batches + 1, batch_size=batch_size, log_every=batches + 1)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    cores = cpu / wall
    return {"images_per_second": totals.images_per_second, "cores": cores,
            "images_per_core_second": totals.images_per_second / cores}


def compare_pipelines(pattern: str, sizes: list[int], batch_size: int, batches: int, repeats: int) -> dict:
    """For each student size: medians of `pipeline_rate` for the bare loop and make_dataset, and their ratio."""
    results = {}
    for size in sizes:
        datasets = {"bare": lambda size=size: bare_dataset(pattern, size, batch_size),
                    "make_dataset": lambda size=size: data.make_dataset(pattern, size, batch_size, training=True,
                                                                        seed=0, temperature=2.0, threads=0)}
        runs = {name: [] for name in datasets}
        for repeat in range(repeats):  # alternating which goes first, so that a drifting machine favours neither
            for name in (list(datasets) if repeat % 2 == 0 else list(datasets)[::-1]):
                runs[name].append(pipeline_rate(datasets[name](), batch_size, batches))
        medians = {name: {key: statistics.median(run[key] for run in values) for key in values[0]}
                   for name, values in runs.items()}
        ratios, per_core = ([ours[key] / bare[key] for ours, bare in zip(runs["make_dataset"], runs["bare"])]
                            for key in ("images_per_second", "images_per_core_second"))
        results[size] = dict(medians, ratio=statistics.median(ratios), ratios=ratios,
                             per_core_ratio=statistics.median(per_core), per_core_ratios=per_core,
                             load_average=load_average())
        log(f"  input pipeline at {size} px: bare {medians['bare']['images_per_second']:.0f} images/s "
            f"({medians['bare']['cores']:.2f} cores), make_dataset {medians['make_dataset']['images_per_second']:.0f} "
            f"images/s ({medians['make_dataset']['cores']:.2f} cores), ratio {results[size]['ratio']:.2f}, "
            f"per core {results[size]['per_core_ratio']:.2f}")
    return results


# ------------------------------------------------------------------------------ teacher distribution memory

def one_hot_teacher_distribution(class_ids, logits, logsumexp, num_classes: int, temperature: float) -> tf.Tensor:
    """The trainer's formula before the scatter (the "before" of the memory measurement): an [N, k, C] one-hot."""
    log_p = tf.cast(logits, tf.float32) - tf.cast(logsumexp, tf.float32)[:, None]
    others = num_classes - log_p.shape[-1]
    if others:
        log_other = tf.math.log(tf.clip_by_value(1.0 - tf.reduce_sum(tf.exp(log_p), axis=1), 0.0, 1.0) / others)
    else:
        log_other = tf.fill(tf.shape(log_p)[:1], -np.inf)
    base = tf.tile((log_other / temperature)[:, None], [1, num_classes])
    one_hot = tf.one_hot(tf.cast(class_ids, tf.int32), num_classes, dtype=tf.float32)
    stored = tf.reduce_sum(one_hot * (log_p / temperature)[:, :, None], axis=1)
    return tf.nn.softmax(tf.where(tf.reduce_sum(one_hot, axis=1) > 0, stored, base), axis=-1)


def _status_kilobytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def distribution_peak_bytes(formula: str) -> int:
    """In this process: how far the resident memory peaks above its level while one batch of MEMORY_BATCH
    full-logit views becomes teacher distributions with `formula` ("one_hot" or "scatter")."""
    rng = np.random.default_rng(0)
    class_ids, logits, logsumexp = records.top_k_of_logits(rng.normal(size=(MEMORY_BATCH, MEMORY_CLASSES)), MEMORY_CLASSES)
    function = one_hot_teacher_distribution if formula == "one_hot" else records.teacher_distribution
    function(class_ids[:2], logits[:2], logsumexp[:2], MEMORY_CLASSES, 2.0).numpy()  # kernels loaded
    inputs = [tf.constant(class_ids), tf.constant(logits), tf.constant(logsumexp)]
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")  # resets the peak (VmHWM) to the current resident size
    before = _status_kilobytes("VmRSS")
    function(*inputs, MEMORY_CLASSES, 2.0).numpy()
    return (_status_kilobytes("VmHWM") - before) * 1024


def distribution_memory(formula: str) -> int:
    """`distribution_peak_bytes` in a fresh Python process (so that one formula's allocations do not hide the
    other's)."""
    code = f"from benchmarks import training; print(training.distribution_peak_bytes({formula!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return int(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- training loops

def train_step_rate(pattern: str, config: TrainConfig, teacher, steps: int) -> float:
    """Steps/s of the train step alone, on one cached batch (after one warm-up, tracing, step)."""
    import keras  # pylint: disable=import-outside-toplevel

    distillation = task.DistillationTask(pattern, config.image_size, config.batch_size, config.alpha,
                                         config.temperature, student=config.student, width=config.width,
                                         num_classes=1000, teacher=teacher)
    one_batch = next(distillation.build_inputs())
    cached = iter(tf.data.Dataset.from_tensors(one_batch).repeat())
    student = distillation.build_model()
    optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    totals = driver.run_steps(distillation.build_train_step(student, optimizer), cached, 0, steps + 1,
                              batch_size=config.batch_size, log_every=steps + 1)
    return totals.steps_per_second


def training_loop_rate(config: TrainConfig, teacher=None) -> float:
    """Steps/s of one `trainer.loop.train` run from a fresh model_dir (the summary's, without the first step)."""
    if tf.io.gfile.exists(config.model_dir):
        tf.io.gfile.rmtree(config.model_dir)
    return loop.train(config, teacher=teacher)["steps_per_second"]


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    quick = _QUICK.value
    count, steps, repeats = (24, 4, 1) if quick else (_IMAGES.value, _STEPS.value, _REPEATS.value)
    batch_size = 8 if quick else _BATCH_SIZE.value
    pipeline_batches = 4 if quick else _PIPELINE_BATCHES.value
    sizes = [int(size) for size in _PIPELINE_SIZES.value]
    work_dir = _WORK_DIR.value or tempfile.mkdtemp(prefix="distillery_training_bench_")
    from distillery import teachers  # pylint: disable=import-outside-toplevel

    teacher = teachers.load_teacher(TEACHER_SPEC)
    log(f"work dir {work_dir}; {os.cpu_count()} CPUs, load average {load_average():.1f}; "
        f"devices: {[d.name for d in tf.config.list_logical_devices()]}")
    pattern = os.path.join(work_dir, "records", "bench-*")
    if not tf.io.gfile.glob(pattern):
        log(f"writing records: {count} photos at {PHOTO_SIDE}x{PHOTO_SIDE} x {_VIEWS.value} views, "
            f"top-{_TOP_K.value}, teacher {TEACHER_SPEC}")
        pattern = write_benchmark_records(os.path.join(work_dir, "records"), teacher, count, _VIEWS.value, _TOP_K.value)
    results = {"load_average_start": load_average()}

    log("input pipeline alone ...")
    results["input_pipeline"] = compare_pipelines(pattern, sizes, batch_size, pipeline_batches, repeats)
    log("teacher distribution memory ...")
    results["distribution_peak_bytes"] = {formula: distribution_memory(formula) for formula in ("one_hot", "scatter")}

    def config(mode: str, **overrides) -> TrainConfig:
        return TrainConfig(train_pattern=pattern, model_dir=os.path.join(work_dir, f"run-{mode}"),
                           student=_STUDENT.value, width=_WIDTH.value, image_size=_IMAGE_SIZE.value,
                           batch_size=batch_size, steps=steps, checkpoint_every=0, log_every=max(1, steps // 4),
                           alpha=0.0, temperature=2.0, **overrides)

    runs = {name: [] for name in ("offline_loop", "offline_step", "online_loop", "online_step")}
    for repeat in range(repeats):
        log(f"training loops and steps alone, repeat {repeat + 1}/{repeats} (load average {load_average():.1f}) ...")
        runs["offline_loop"].append(training_loop_rate(config("offline")))
        runs["offline_step"].append(train_step_rate(pattern, config("offline"), None, steps))
        runs["online_loop"].append(training_loop_rate(config("online", teacher=TEACHER_SPEC), teacher))
        runs["online_step"].append(train_step_rate(pattern, config("online"), teacher, steps))
    results["runs"] = runs
    results.update({name: statistics.median(values) for name, values in runs.items()})
    results["loop_over_step"] = statistics.median(loop_rate / step_rate for loop_rate, step_rate
                                                  in zip(runs["offline_loop"], runs["offline_step"]))
    results["offline_over_online"] = statistics.median(offline / online for offline, online
                                                       in zip(runs["offline_loop"], runs["online_loop"]))
    results.update(batch_size=batch_size, steps=steps, repeats=repeats, images=count, views=_VIEWS.value,
                   top_k=_TOP_K.value, student=f"{_STUDENT.value} {_WIDTH.value:g}/{_IMAGE_SIZE.value}",
                   teacher=TEACHER_SPEC, load_average_end=load_average())
    report(results, sizes)
    if _OUTPUT_JSON.value:
        with open(_OUTPUT_JSON.value, "w", encoding="utf-8") as file:
            json.dump(results, file, indent=2)


def report(results: dict, sizes: list[int]) -> None:
    log(f"\nload average {results['load_average_start']:.1f} at the start, {results['load_average_end']:.1f} at the end; "
        f"medians of {results['repeats']} repeats")
    log("| input pipeline alone, batch {b} | bare read + decode + crop | make_dataset | ratio (goal >= 0.9) "
        "| per core |".format(b=results["batch_size"]))
    log("| --- | --- | --- | --- | --- |")
    for size in sizes:
        row = results["input_pipeline"][size]
        cells = [f"{row[name]['images_per_second']:.0f} images/s on {row[name]['cores']:.2f} cores "
                 f"({row[name]['images_per_core_second']:.0f} per core)" for name in ("bare", "make_dataset")]
        log(f"| {size} px | {cells[0]} | {cells[1]} | {row['ratio']:.2f} | {row['per_core_ratio']:.2f} |")
    memory = results["distribution_peak_bytes"]
    log(f"teacher distribution of {MEMORY_BATCH} full-logit views ({MEMORY_CLASSES} classes), peak memory: one-hot "
        f"{memory['one_hot'] / 2**20:.1f} MiB, scatter {memory['scatter'] / 2**20:.1f} MiB")
    log(f"\nstudent {results['student']}, batch {results['batch_size']}, {results['steps']} steps, teacher {results['teacher']}")
    log("| steps per second | offline (records) | online (teacher in the step) |")
    log("| --- | --- | --- |")
    log(f"| training loop | {results['offline_loop']:.2f} | {results['online_loop']:.2f} |")
    log(f"| train step alone (cached batch) | {results['offline_step']:.2f} | {results['online_step']:.2f} |")
    log(f"offline loop / its step alone: {results['loop_over_step']:.2f} (goal >= 0.85); "
        f"offline / online: {results['offline_over_online']:.2f}x (goal >= 3x)")


def run_main() -> None:
    app.run(main)


if __name__ == "__main__":
    sys.exit(run_main())
