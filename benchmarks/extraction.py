"""Benchmark of the extraction job: its two teacher runtimes, a plain loop, the forward pass alone, memory.

All on the same JPEGs and the same teacher (the built-in MobileNetV2 at 224x224, centre crop, batch 32):

  (a) the Beam job (pipelines/extraction.py, in-process FnApiRunner, records of top-10 float32 logits
      and dead letters) with --teacher_runtime=tf;
  (b) the same job with --teacher_runtime=litert (the teacher converted to a float32 .tflite, XNNPACK),
      in one process whose XNNPACK uses every core, and (b') in one worker process per core
      (--direct_num_workers=CPUs --direct_running_mode=multi_processing) with one XNNPACK thread each,
      the layout --teacher_threads=0 gives one process per core (Dataflow's);
  (c) a plain loop: tf.data (read, decode_jpeg, centre crop, antialiased resize, batch, prefetch,
      parallel map) feeding `model.predict` of the same Keras model; it writes nothing;
  (d) the LiteRT forward pass alone on the job's own views (decoded and cropped as the job does them,
      untimed), in the job's fixed batches; the same child times each other stage of the job's thread
      (read, decode, crop, record encoding, writing) per image, to say where the rest of the time goes;
  (e) the peak RSS of the job storing images (--store_image_max_side=320, runtime auto) at 200 and
      2,000 images: memory must not grow with the number of images.

Each configuration runs in its own child process, so its peak RSS (ru_maxrss is a lifetime peak) is its
own. Throughput runs in interleaved rounds (a, b, c, d at N/2 and N images, --repeats times) and the
medians are printed, with the ratios of each round's pair; the load average is printed with every run
(the machine is shared). Images/s of a job are the summary's images_per_second_working: from the first
worker's teacher being ready (loaded and, for litert, converted) to the last work unit's commit, tracing
included (the whole job's wall time is kept in the JSON); the predict call for the plain loop. The goals are printed
with the measurements and whether they were met.

    python -m benchmarks.extraction                   # 1000 and 2000 images, 3 rounds (25-30 minutes on 2 cores)
    python -m benchmarks.extraction --quick           # 32 and 64 images, one round: a smoke run
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from absl import app, flags

from distillery.cpus import available_cpus

_IMAGES = flags.DEFINE_integer("images", 2000, "Images of the larger throughput input; the smaller has half as many.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved rounds of the throughput runs (medians are printed).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: 32 and 64 images, one round, memory at 16 and 64.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", os.path.join(tempfile.gettempdir(), "distillery-bench-images"),
                                 "Where the generated JPEGs are cached.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per teacher call, for all.")
_JSON_OUTPUT = flags.DEFINE_string("json_output", "", "Also write every child's result and the goals here.")
_CHILD = flags.DEFINE_enum("child", None, ["beam", "plain", "forward"], "Internal: run one configuration, print JSON.")
_COUNT = flags.DEFINE_integer("count", None, "Internal: images the child reads.")
_RUNTIME = flags.DEFINE_enum("runtime", "auto", ["auto", "tf", "litert"], "Internal: the beam child's runtime.")
_STORE_IMAGE_MAX_SIDE = flags.DEFINE_integer("store_image_max_side", 0, "Internal: the beam child's setting.")
_PROCESSES = flags.DEFINE_integer("processes", 1, "Internal: the beam child's worker processes (multi_processing "
                                  "when > 1).")

TEACHER = "builtin:mobilenet_v2_imagenet"
IMAGE_SIZE = 224
MEMORY_COUNTS = (200, 2000)
MEMORY_STORE_SIDE = 320
# The goals of docs/decisions/013 and of the extraction's memory design (docs/results.md#extraction).
GOAL_LITERT_OVER_TF = 1.8
GOAL_JOB_OVER_FORWARD = 0.8
GOAL_MEMORY_GROWTH = 0.10
# The forward child also times TensorFlow's forward pass on the first views (it is slow: not all of them).
TF_FORWARD_IMAGES = 256
# Inputs per work unit of every job: 8-16 units at 1,000-2,000 images, so that two worker processes
# share them evenly (hash buckets vary in size); 256 (the default) would give 4-8.
EXAMPLES_PER_SHARD = 125


def make_images(directory: str, count: int, seed: int = 0) -> list[str]:
    """`count` JPEGs (random crops/flips of the bundled photos, 300-500 px sides), made once and cached."""
    from distillery import sample_photos as photos  # pylint: disable=import-outside-toplevel

    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, f"img_{index:06d}.jpg") for index in range(count)]
    if all(os.path.exists(path) for path in paths):
        return paths
    for path, encoded in zip(paths, photos.jittered_jpegs(count, seed)):
        with open(path + ".tmp", "wb") as handle:
            handle.write(encoded)
        os.replace(path + ".tmp", path)
    return paths


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def image_paths(directory: str, count: int) -> list[str]:
    """The first `count` images in name order: the ones the job's --max_examples keeps (smallest ids)."""
    return sorted(os.path.join(directory, name) for name in os.listdir(directory) if name.endswith(".jpg"))[:count]


def run_beam(directory: str, count: int, batch_size: int, runtime: str, store_image_max_side: int,
             processes: int = 1) -> dict:
    """The extraction job over the first `count` images of `directory` (in `processes` worker processes);
    images/s while working, over the whole job, and bytes per view."""
    from pipelines import extraction  # pylint: disable=import-outside-toplevel

    output_dir = tempfile.mkdtemp(prefix="distillery-bench-out-")
    config = extraction.ExtractConfig(source=f"glob:{directory}/*.jpg", teachers=(TEACHER,),
                                      output=os.path.join(output_dir, "soft"),
                                      dead_letter=os.path.join(output_dir, "dead.jsonl"), max_examples=count,
                                      batch_size=batch_size, log_every=500, teacher_runtime=runtime,
                                      store_image_max_side=store_image_max_side,
                                      examples_per_shard=EXAMPLES_PER_SHARD)
    beam_args = ([f"--direct_num_workers={processes}", "--direct_running_mode=multi_processing"]
                 if processes > 1 else [])
    start = time.monotonic()
    result = extraction.run(config, beam_args, save_main_session=False)
    wall = time.monotonic() - start
    counters, seconds = result.counters, result.summary["seconds"]
    record_bytes = sum(os.path.getsize(os.path.join(output_dir, name)) for name in os.listdir(output_dir)
                       if name.startswith("soft-"))
    working = result.summary.get("working_seconds") or seconds
    return {"images": counters["read"], "written": counters["written"], "seconds": seconds,
            "working_seconds": working, "images_per_second": counters["read"] / working,
            "wall_images_per_second": counters["read"] / seconds, "processes": processes,
            "teacher_runtime": result.summary["teacher_runtime"],
            "setup_seconds": wall - seconds, "bytes_per_view": record_bytes / max(1, counters["written"] * config.views)}


def run_plain(directory: str, count: int, batch_size: int) -> dict:
    """tf.data + model.predict over the same images: the baseline."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from distillery import mobilenet_v2_torchvision, views  # pylint: disable=import-outside-toplevel

    model = mobilenet_v2_torchvision.mobilenet_v2_imagenet()
    paths = image_paths(directory, count)

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return views.crop_view(image, tf.constant([0.0625, 0.0625, 0.9375, 0.9375]), False, IMAGE_SIZE)

    dataset = (tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    start = time.monotonic()
    logits = model.predict(dataset, verbose=0)
    seconds = time.monotonic() - start
    return {"images": int(logits.shape[0]), "seconds": seconds, "images_per_second": logits.shape[0] / seconds}


def run_forward(directory: str, count: int, batch_size: int, repeats: int = 3) -> dict:
    """The LiteRT forward pass alone on the job's views, and the job thread's other stages, per image.

    Each image is read, decoded and cropped exactly as the job does it (pipelines/extract_shard.py), its
    record encoded and written to a record file; every fixed batch of views is run `repeats` times and its
    median counts. Nothing overlaps: each stage is timed on its own. The first TF_FORWARD_IMAGES views also
    go once through the TensorFlow teacher, for the two runtimes' forward passes on the same views.
    """
    import numpy as np  # pylint: disable=import-outside-toplevel

    from distillery import images, litert_teacher, teachers, views  # pylint: disable=import-outside-toplevel
    from pipelines import extract_shard, shard_output, sources  # pylint: disable=import-outside-toplevel
    from pipelines.teacher_inference import run_fixed_batches  # pylint: disable=import-outside-toplevel

    tf_teacher = teachers.load_teachers([TEACHER])
    teacher = litert_teacher.LiteRTTeacher.from_teacher(tf_teacher, batch_size)
    one_thread = litert_teacher.LiteRTTeacher(teacher.names, teacher.input_size, teacher.num_classes,
                                              litert_teacher.convert_teacher(tf_teacher, batch_size)[0], batch_size, 1)
    paired = {"tf": 0.0, "litert": 0.0, "litert_one_thread": 0.0, "images": 0}
    min_side = extract_shard.decode_min_side(IMAGE_SIZE, 1, views.DEFAULT_MIN_SCALE)
    writer = shard_output.ShardWriter(os.path.join(tempfile.mkdtemp(prefix="distillery-bench-forward-"), "soft"), "x")
    paths = image_paths(directory, count)
    seconds = dict.fromkeys(("read", "decode", "crop", "forward", "record", "write"), 0.0)

    def timed(stage, function, *args):
        start = time.perf_counter()
        value = function(*args)
        seconds[stage] += time.perf_counter() - start
        return value

    def read(path):
        with open(path, "rb") as handle:
            return handle.read()

    def view(path, encoded):
        image = timed("decode", images.decode_rgb, encoded, min_side)
        example = sources.SourceExample(os.path.basename(path), encoded, -1, path)
        return timed("crop", extract_shard.make_views, example, image, teacher.input_size, 1, 0, views.DEFAULT_MIN_SCALE)

    def label(batch):
        pixels = np.concatenate([viewed.pixels for viewed in batch])
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            logits = run_fixed_batches(teacher, pixels, batch_size)
            runs.append(time.perf_counter() - start)
        seconds["forward"] += statistics.median(runs)
        if paired["images"] < TF_FORWARD_IMAGES:
            start = time.perf_counter()
            run_fixed_batches(tf_teacher, pixels, batch_size)
            paired["tf"] += time.perf_counter() - start
            start = time.perf_counter()
            run_fixed_batches(one_thread, pixels, batch_size)
            paired["litert_one_thread"] += time.perf_counter() - start
            paired["litert"] += statistics.median(runs)
            paired["images"] += len(batch)
        for viewed, row in zip(batch, logits):
            record = timed("record", extract_shard.to_record, viewed, row[None], teacher.names, 10, "float32")
            timed("write", writer.write, record)

    warm = view(paths[0], read(paths[0]))  # traces the crop graph and packs XNNPACK's weights, untimed
    run_fixed_batches(teacher, warm.pixels, batch_size)
    run_fixed_batches(tf_teacher, warm.pixels, batch_size)  # traces TensorFlow's predict graph, untimed
    run_fixed_batches(one_thread, warm.pixels, batch_size)
    for stage in seconds:
        seconds[stage] = 0.0
    batch = []
    for path in paths:
        batch.append(view(path, timed("read", read, path)))
        if len(batch) == batch_size:
            label(batch)
            batch = []
    if batch:
        label(batch)
    writer.abort()
    milliseconds = {stage: 1000 * value / len(paths) for stage, value in seconds.items()}
    return {"images": len(paths), "seconds": seconds["forward"], "images_per_second": len(paths) / seconds["forward"],
            "ms_per_image": milliseconds, "num_threads": teacher.num_threads, "paired_images": paired["images"],
            "tf_forward_ms": 1000 * paired["tf"] / paired["images"],
            "litert_one_thread_forward_ms": 1000 * paired["litert_one_thread"] / paired["images"],
            "litert_forward_ms_paired": 1000 * paired["litert"] / paired["images"]}


def run_child(kind: str, directory: str, count: int, batch_size: int) -> dict:
    """One configuration (in its own process); adds the peak RSS."""
    if kind == "beam":
        result = run_beam(directory, count, batch_size, _RUNTIME.value, _STORE_IMAGE_MAX_SIDE.value, _PROCESSES.value)
    elif kind == "forward":
        result = run_forward(directory, count, batch_size)
    else:
        result = run_plain(directory, count, batch_size)
    result.update(kind=kind, peak_rss_mib=peak_rss_bytes() / 2**20)
    return result


def spawn(kind: str, count: int, cache_dir: str, batch_size: int, runtime: str = "auto",
          store_image_max_side: int = 0, processes: int = 1) -> dict:
    """Runs one child process and returns its result, with the load average before it started."""
    command = [sys.executable, "-m", "benchmarks.extraction", f"--child={kind}", f"--count={count}",
               f"--cache_dir={cache_dir}", f"--batch_size={batch_size}", f"--runtime={runtime}",
               f"--store_image_max_side={store_image_max_side}", f"--processes={processes}"]
    load = os.getloadavg()[0]
    completed = subprocess.run(command, capture_output=True, text=True, check=False,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} ({runtime}) at {count} images failed:\n{completed.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result.update(runtime=runtime, store_image_max_side=store_image_max_side, load_average=load, count=count)
    return result


# (name, child, runtime, one worker process per core?)
CONFIGURATIONS = (("tf job", "beam", "tf", False), ("litert job", "beam", "litert", False),
                  ("litert job per core", "beam", "litert", True), ("plain loop", "plain", "auto", False),
                  ("litert forward", "forward", "auto", False))


def throughput(counts: Sequence[int], repeats: int, cache_dir: str, batch_size: int) -> list[dict]:
    """Interleaved rounds of every configuration at every count."""
    results = []
    for round_index in range(repeats):
        for count in counts:
            for name, kind, runtime, per_core in CONFIGURATIONS:
                processes = available_cpus() if per_core else 1
                result = spawn(kind, count, cache_dir, batch_size, runtime, processes=processes)
                result.update(name=name, round=round_index)
                results.append(result)
                extra = f", runs on {result['teacher_runtime']}" if "teacher_runtime" in result else ""
                print(f"  round {round_index + 1}/{repeats} {name:14s} {count:5d} images: "
                      f"{result['images_per_second']:6.1f} images/s, peak RSS {result['peak_rss_mib']:.0f} MiB, "
                      f"load {result['load_average']:.1f}{extra}", flush=True)
    return results


def memory(counts: Sequence[int], cache_dir: str, batch_size: int) -> list[dict]:
    """Peak RSS of the job storing images, at each count (runtime auto)."""
    results = []
    for count in counts:
        result = spawn("beam", count, cache_dir, batch_size, "auto", MEMORY_STORE_SIDE)
        results.append(result)
        print(f"  memory {count:5d} images, --store_image_max_side={MEMORY_STORE_SIDE}: peak RSS "
              f"{result['peak_rss_mib']:.0f} MiB, {result['images_per_second']:.1f} images/s on "
              f"{result['teacher_runtime']}, load {result['load_average']:.1f}", flush=True)
    return results


def _median(results: Sequence[dict], name: str, count: int, key: str = "images_per_second") -> float:
    return statistics.median(result[key] for result in results if result["name"] == name and result["count"] == count)


def _round_ratios(results: Sequence[dict], top: str, bottom: str, count: int) -> list[float]:
    """top / bottom images/s within each round (the pair ran minutes apart, under the same load)."""
    rounds = sorted({result["round"] for result in results})
    by = {(result["name"], result["round"]): result for result in results if result["count"] == count}
    return [by[(top, index)]["images_per_second"] / by[(bottom, index)]["images_per_second"] for index in rounds]


def throughput_table(results: Sequence[dict], counts: Sequence[int]) -> str:
    """Markdown: median images/s per configuration and count, and the round-paired ratios."""
    lines = ["| images | tf job | litert job | litert job per core | plain loop | litert forward alone | "
             "litert job / tf job | litert job / forward alone | litert job per core / forward alone | "
             "tf job / plain loop | peak RSS tf / litert job (MiB) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for count in counts:
        medians = {name: _median(results, name, count) for name, *_ in CONFIGURATIONS}
        ratios = [statistics.median(_round_ratios(results, top, bottom, count))
                  for top, bottom in (("litert job", "tf job"), ("litert job", "litert forward"),
                                      ("litert job per core", "litert forward"), ("tf job", "plain loop"))]
        lines.append(f"| {count} | {medians['tf job']:.1f} | {medians['litert job']:.1f} | "
                     f"{medians['litert job per core']:.1f} | {medians['plain loop']:.1f} | "
                     f"{medians['litert forward']:.1f} | {ratios[0]:.2f}x | {ratios[1]:.2f}x | {ratios[2]:.2f}x | "
                     f"{ratios[3]:.2f}x | {_median(results, 'tf job', count, 'peak_rss_mib'):.0f} / "
                     f"{_median(results, 'litert job', count, 'peak_rss_mib'):.0f} |")
    return "\n".join(lines)


def stage_table(results: Sequence[dict], count: int) -> tuple[str, dict[str, float]]:
    """Markdown: the job thread's stages per image (medians over rounds) at `count` images, and both
    runtimes' forward passes on the same first views."""
    forward_runs = [result for result in results if result["name"] == "litert forward" and result["count"] == count]
    stages = {stage: statistics.median(run["ms_per_image"][stage] for run in forward_runs)
              for stage in forward_runs[0]["ms_per_image"]}
    paired = {key: statistics.median(run[key] for run in forward_runs)
              for key in ("tf_forward_ms", "litert_forward_ms_paired", "litert_one_thread_forward_ms")}
    lines = ["| stage (one at a time) | ms per image |", "| --- | ---: |"]
    lines += [f"| {stage} | {value:.2f} |" for stage, value in stages.items()]
    lines.append(f"| sum (the litert job's work) | {sum(stages.values()):.2f} |")
    images = forward_runs[0]["paired_images"]
    lines.append(f"| forward on the first {images} views: tf / litert / litert on one thread | "
                 f"{paired['tf_forward_ms']:.2f} / {paired['litert_forward_ms_paired']:.2f} / "
                 f"{paired['litert_one_thread_forward_ms']:.2f} |")
    return "\n".join(lines), {**stages, **paired}


def goals(results: Sequence[dict], memory_results: Sequence[dict], counts: Sequence[int], stages: dict[str, float],
          cpus: int) -> list[dict]:
    """Each goal with its measurement (median of the round ratios at the larger count), met or by how much not,
    and why not from the stage timings: with the forward pass overlapping everything else perfectly, the
    cores still do all the work, the forward pass on every core plus the rest on one, per image."""
    count = max(counts)
    litert_over_tf = statistics.median(_round_ratios(results, "litert job", "tf job", count))
    job_over_forward = statistics.median(_round_ratios(results, "litert job", "litert forward", count))
    per_core_over_forward = statistics.median(_round_ratios(results, "litert job per core", "litert forward", count))
    small, large = sorted(memory_results, key=lambda result: result["count"])
    growth = large["peak_rss_mib"] / small["peak_rss_mib"] - 1.0
    forward, tf_forward, paired_litert = stages["forward"], stages["tf_forward_ms"], stages["litert_forward_ms_paired"]
    rest = sum(stages[stage] for stage in ("read", "decode", "crop", "record", "write"))
    load = statistics.median(result["load_average"] for result in results)
    shared = (f"; measured at a load average of {load:.1f} on {cpus} CPUs, so other processes took part of them"
              if load > cpus else "")
    runtime_bound = (tf_forward + rest / cpus) / (paired_litert + rest / cpus)
    overlap_bound = forward / (forward + rest / cpus)
    # The one-thread forward was timed on the first views only: scaled to the stage's basis (all views).
    one_thread = stages["litert_one_thread_forward_ms"] * forward / paired_litert
    per_core_bound = cpus * forward / (one_thread + rest)
    return [
        {"goal": f"litert job >= {GOAL_LITERT_OVER_TF}x the tf job ({count} images)", "measured": litert_over_tf,
         "target": GOAL_LITERT_OVER_TF, "met": litert_over_tf >= GOAL_LITERT_OVER_TF,
         "why": f"the forward pass alone is {tf_forward / paired_litert:.2f}x faster on litert on the same views; "
                f"both jobs also spend {rest:.2f} ms per image of one core reading, decoding, cropping and writing, "
                f"so a perfect overlap in both would give {runtime_bound:.2f}x{shared}"},
        {"goal": f"litert job >= {GOAL_JOB_OVER_FORWARD}x the litert forward pass alone ({count} images)",
         "measured": job_over_forward, "target": GOAL_JOB_OVER_FORWARD, "met": job_over_forward >= GOAL_JOB_OVER_FORWARD,
         "why": f"the job's thread also reads, decodes, crops, encodes and writes each image, {rest:.2f} ms of one "
                f"core, against {forward:.2f} ms for the forward pass on {cpus} cores; the forward overlaps that work "
                f"but needs the same cores, so even a perfect overlap gives at most {overlap_bound:.2f}x "
                f"(forward / (forward + rest / {cpus})){shared}"},
        {"goal": f"litert job, one worker process per core, >= {GOAL_JOB_OVER_FORWARD}x the litert forward pass "
                 f"alone ({count} images)",
         "measured": per_core_over_forward, "target": GOAL_JOB_OVER_FORWARD,
         "met": per_core_over_forward >= GOAL_JOB_OVER_FORWARD,
         "why": f"each of {cpus} processes runs the forward pass on one thread ({one_thread:.2f} ms per image, "
                f"against {forward:.2f} on all {cpus} cores) and the rest ({rest:.2f} ms) on the same core, so "
                f"with the cores always busy it gives at most {per_core_bound:.2f}x "
                f"({cpus} x forward / (forward on one thread + rest)){shared}"},
        {"goal": f"peak RSS with stored images at {large['count']} within {GOAL_MEMORY_GROWTH:.0%} of {small['count']}",
         "measured": growth, "target": GOAL_MEMORY_GROWTH, "met": abs(growth) <= GOAL_MEMORY_GROWTH,
         "why": "memory grows with the number of images"},
    ]


def goals_table(goal_rows: Sequence[dict]) -> str:
    lines = ["| goal | measured | target | met |", "| --- | ---: | ---: | --- |"]
    for row in goal_rows:
        percent = "RSS" in row["goal"]
        measured = f"{row['measured']:+.1%}" if percent else f"{row['measured']:.2f}x"
        target = f"±{row['target']:.0%}" if percent else f">= {row['target']:.1f}x"
        if row["met"]:
            verdict = "yes" if percent else f"yes ({row['why']})"
        elif percent:
            verdict = f"no, by {abs(row['measured']) - row['target']:.1%}: {row['why']}"
        else:
            verdict = (f"no, {row['measured'] / row['target']:.0%} of the target ({row['target'] - row['measured']:.2f}x "
                       f"short): {row['why']}")
        lines.append(f"| {row['goal']} | {measured} | {target} | {verdict} |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    del argv
    cache_dir = _CACHE_DIR.value
    if _CHILD.value:
        result = run_child(_CHILD.value, os.path.join(cache_dir, "jpeg"), _COUNT.value, _BATCH_SIZE.value)
        print("RESULT " + json.dumps(result), flush=True)
        return
    larger = 64 if _QUICK.value else _IMAGES.value
    counts = (larger // 2, larger)
    memory_counts = (16, 64) if _QUICK.value else MEMORY_COUNTS
    repeats = 1 if _QUICK.value else _REPEATS.value
    cpus = available_cpus()
    print(f"extraction benchmark: {TEACHER} at {IMAGE_SIZE}x{IMAGE_SIZE}, 1 view, top-10 float32, batch "
          f"{_BATCH_SIZE.value}, {cpus} CPUs for this process, {repeats} round(s); load average "
          f"{' '.join(f'{value:.1f}' for value in os.getloadavg())}; images cached in {cache_dir}", flush=True)
    make_images(os.path.join(cache_dir, "jpeg"), max(max(counts), max(memory_counts)))
    start = time.monotonic()
    results = throughput(counts, repeats, cache_dir, _BATCH_SIZE.value)
    memory_results = memory(memory_counts, cache_dir, _BATCH_SIZE.value)
    stages_markdown, stages = stage_table(results, max(counts))
    goal_rows = goals(results, memory_results, counts, stages, cpus)
    small, large = sorted(memory_results, key=lambda result: result["count"])
    print(f"\nimages/s, medians of {repeats} round(s); ratios are medians of each round's pair:\n")
    print(throughput_table(results, counts))
    print(f"\nthe job thread's stages at {max(counts)} images, each timed alone (the litert forward child):\n")
    print(stages_markdown)
    print(f"\npeak RSS of the job with --store_image_max_side={MEMORY_STORE_SIDE} (runtime "
          f"{large['teacher_runtime']}): {small['count']} images {small['peak_rss_mib']:.0f} MiB, "
          f"{large['count']} images {large['peak_rss_mib']:.0f} MiB, ratio "
          f"{large['peak_rss_mib'] / small['peak_rss_mib']:.3f}\n")
    print(goals_table(goal_rows))
    print(f"\n{time.monotonic() - start:.0f} s in all; load average now "
          f"{' '.join(f'{value:.1f}' for value in os.getloadavg())}")
    if _JSON_OUTPUT.value:
        with open(_JSON_OUTPUT.value, "w", encoding="utf-8") as handle:
            json.dump({"throughput": results, "memory": memory_results, "stages_ms": stages, "goals": goal_rows},
                      handle, indent=1)


def run_main() -> None:
    app.run(main)


if __name__ == "__main__":
    run_main()
