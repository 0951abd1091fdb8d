"""Benchmark: offline distillation from records vs online distillation with the teacher in the loop.

The goal: offline distillation (teacher soft labels read from records) runs >= 3x the steps/s of
online distillation (builtin:mobilenet_v2_imagenet run inside every step) for a MobileNet V1 0.25/128
student, on this machine. Also measured: the input pipeline alone and the train step alone, to show
which one bounds each mode.

What it does, in one process and on the same data:

1. Records: --images photos at about 256 pixels (random crops of the scikit-image photos that ship in
   its wheel, JPEG), V = --views views each (distillery.views.sample_views), the built-in teacher called
   directly on the 224x224 views, top-k logits written with distillery.records (no Beam).
2. (a) offline: `trainer.loop.train` from those records; (b) online: the same with
   --teacher=builtin:mobilenet_v2_imagenet. Steps/s from each run's summary (the first, tracing, step
   excluded).
3. The input pipeline alone: batches/s of `trainer.data.make_dataset` (offline targets, and online
   targets with the teacher's 224x224 views), nothing else running.
4. The train step alone: the task's train step (`trainer.task.DistillationTask.build_train_step`) on one
   cached batch, offline and online.

All timings go through the trainer's one loop, `trainer.driver.run_steps`, which leaves the first step
(tracing, or the pipeline's warm-up) out of the rate.

The machine is shared with other jobs: numbers are noisy (see the load average printed with them).

    python -m benchmarks.training --work_dir=/tmp/training_bench --steps=30  # ~15 min on 2 cores
    python -m benchmarks.training --work_dir=/tmp/training_quick --quick  # smoke run
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import tensorflow as tf
from absl import app, flags, logging

from distillery import images, records, views
from trainer import data, driver, loop, task
from trainer.train_config import TrainConfig

TEACHER_SPEC = "builtin:mobilenet_v2_imagenet"

_WORK_DIR = flags.DEFINE_string("work_dir", None, "Where records and runs go (default: a temporary directory).")
_IMAGES = flags.DEFINE_integer("images", 256, "Images in the benchmark records.")
_VIEWS = flags.DEFINE_integer("views", 4, "Stored views per image.")
_TOP_K = flags.DEFINE_integer("top_k", 10, "Stored teacher classes per view.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 40, "Training steps per mode (the first is not timed).")
_STUDENT = flags.DEFINE_string("student", "mobilenet_v1", "Student architecture.")
_WIDTH = flags.DEFINE_float("width", 0.25, "Student width multiplier.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Student input side.")
_QUICK = flags.DEFINE_boolean("quick", False, "Smoke run: 24 images, 4 steps.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Also write the numbers here.")


def log(line: str) -> None:
    print(line, flush=True)


def source_photos(count: int, side: int = 256, seed: int = 0) -> list[bytes]:
    """JPEG bytes of `count` random crops of the bundled photos, sides between `side` and 1.25 x `side`."""
    from distillery import sample_photos as photos  # pylint: disable=import-outside-toplevel

    return photos.jittered_jpegs(count, seed, min_side=side, max_side=int(side * 1.25))


def write_benchmark_records(directory: str, teacher, count: int, num_views: int, top_k: int,
                            num_files: int = 4) -> str:
    """Soft-label records of `count` photos from `teacher` (called directly); returns their glob."""
    os.makedirs(directory, exist_ok=True)
    photos = source_photos(count)
    start = time.perf_counter()
    per_file = [[] for _ in range(num_files)]
    for index, encoded in enumerate(photos):
        image = images.decode_rgb(encoded)  # extraction's decoder: the pixels the trainer replays
        image_id = f"photo{index:05d}"
        crops, flips = views.sample_views(image_id, 0, num_views, int(image.shape[0]), int(image.shape[1]))
        logits = teacher.predict(views.crop_views(image, crops, flips, teacher.input_size), batch_size=num_views)
        per_file[index % num_files].append(records.make_record(
            image_id, -1, teacher.names, crops, flips, logits, top_k, encoded_image=encoded, logit_dtype="float16"))
        if (index + 1) % 64 == 0:
            log(f"  records: {index + 1}/{count} images, "
                f"{(index + 1) * num_views / (time.perf_counter() - start):.1f} teacher views/s")
    for file_index, batch in enumerate(per_file):
        records.write_records(os.path.join(directory, f"bench-{file_index:05d}-of-{num_files:05d}"), batch)
    return os.path.join(directory, "bench-*")


def _next_batch(iterator) -> dict:
    """A "step" that only draws a batch: run_steps over it times the input pipeline alone."""
    next(iterator)
    return {}


def input_pipeline_rate(pattern: str, image_size: int, batch_size: int, steps: int, temperature: float,
                        teacher_size: tuple[int, int] | None) -> float:
    """Batches/s of the input pipeline alone (after one warm-up batch)."""
    dataset = data.make_dataset(pattern, image_size, batch_size, training=True, seed=0,
                                temperature=None if teacher_size else temperature, teacher_image_size=teacher_size)
    totals = driver.run_steps(_next_batch, iter(dataset), 0, steps + 1, batch_size=batch_size, log_every=steps + 1)
    return totals.steps_per_second


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


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    quick = _QUICK.value
    count, steps = (24, 4) if quick else (_IMAGES.value, _STEPS.value)
    batch_size = 8 if quick else _BATCH_SIZE.value
    work_dir = _WORK_DIR.value or tempfile.mkdtemp(prefix="distillery_training_bench_")
    from distillery import teachers  # pylint: disable=import-outside-toplevel

    teacher = teachers.load_teacher(TEACHER_SPEC)
    log(f"work dir {work_dir}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
        f"devices: {[d.name for d in tf.config.list_logical_devices()]}")
    pattern = os.path.join(work_dir, "records", "bench-*")
    if not tf.io.gfile.glob(pattern):
        log(f"writing records: {count} photos x {_VIEWS.value} views, top-{_TOP_K.value}, teacher {TEACHER_SPEC}")
        pattern = write_benchmark_records(os.path.join(work_dir, "records"), teacher, count, _VIEWS.value, _TOP_K.value)

    def config(mode: str, **overrides) -> TrainConfig:
        return TrainConfig(train_pattern=pattern, model_dir=os.path.join(work_dir, f"run-{mode}"),
                                student=_STUDENT.value, width=_WIDTH.value, image_size=_IMAGE_SIZE.value,
                                batch_size=batch_size, steps=steps, checkpoint_every=0,
                                log_every=max(1, steps // 4), alpha=0.0, temperature=2.0, **overrides)

    results = {}
    for mode in ("offline", "online"):
        run_config = config(mode, teacher=TEACHER_SPEC if mode == "online" else None)
        if tf.io.gfile.exists(run_config.model_dir):
            tf.io.gfile.rmtree(run_config.model_dir)
        log(f"training ({mode}) {steps} steps ...")
        summary = loop.train(run_config, teacher=teacher if mode == "online" else None)
        results[f"{mode}_train_steps_per_second"] = summary["steps_per_second"]
    student_size = _IMAGE_SIZE.value
    results["offline_input_batches_per_second"] = input_pipeline_rate(
        pattern, student_size, batch_size, steps, 2.0, None)
    results["online_input_batches_per_second"] = input_pipeline_rate(
        pattern, student_size, batch_size, steps, 2.0, tuple(teacher.input_size))
    results["offline_step_alone_per_second"] = train_step_rate(pattern, config("offline"), None, steps)
    results["online_step_alone_per_second"] = train_step_rate(pattern, config("online"), teacher, steps)
    ratio = results["offline_train_steps_per_second"] / results["online_train_steps_per_second"]
    results.update(ratio=ratio, batch_size=batch_size, steps=steps, images=count, views=_VIEWS.value,
                   top_k=_TOP_K.value, student=f"{_STUDENT.value} {_WIDTH.value:g}/{student_size}",
                   teacher=TEACHER_SPEC, load_average=os.getloadavg()[0])

    log(f"\nstudent {results['student']}, batch {batch_size}, {steps} steps, teacher {TEACHER_SPEC}")
    log("| measured (steps or batches per second) | offline (records) | online (teacher in the step) |")
    log("| --- | --- | --- |")
    log(f"| training loop | {results['offline_train_steps_per_second']:.2f} | "
        f"{results['online_train_steps_per_second']:.2f} |")
    log(f"| input pipeline alone | {results['offline_input_batches_per_second']:.2f} | "
        f"{results['online_input_batches_per_second']:.2f} |")
    log(f"| train step alone (cached batch) | {results['offline_step_alone_per_second']:.2f} | "
        f"{results['online_step_alone_per_second']:.2f} |")
    for mode in ("offline", "online"):
        bound = ("input pipeline" if results[f"{mode}_input_batches_per_second"]
                 < results[f"{mode}_step_alone_per_second"] else "train step")
        log(f"{mode}: bounded by the {bound}")
    log(f"offline / online: {ratio:.2f}x (goal >= 3x); load average {results['load_average']:.1f}")
    if _OUTPUT_JSON.value:
        with open(_OUTPUT_JSON.value, "w", encoding="utf-8") as file:
            json.dump(results, file, indent=2)


def run_main() -> None:
    app.run(main)


if __name__ == "__main__":
    sys.exit(run_main())
