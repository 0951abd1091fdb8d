"""Benchmark of the extraction job against a plain tf.data + model.predict loop (not a timed test).

Both run on the same JPEGs and the same teacher (the built-in MobileNetV2 at 224x224, centre crop):

  (a) the Beam job (pipelines/extraction.py) on the in-process FnApiRunner, writing records
      (top-10 float32 logits, one view) and dead letters;
  (b) the baseline: tf.data (read, decode_jpeg, centre crop 87.5%, antialiased resize, batch 32, prefetch,
      parallel map) feeding `model.predict` of the same Keras model; it writes nothing.

Each configuration runs in its own child process so that its peak RSS (ru_maxrss is a lifetime peak)
is its own; two input sizes (N/2 and N images) show whether memory grows with the number of images.
Images/s count the whole run after the model is loaded (pipeline start to finish; predict call to
return), graph tracing included for both. The images are made once from the photos that ship in the
scikit-image wheel (random crops, flips and sizes around ImageNet's average) and cached.

    python -m benchmarks.extraction                   # 1000 and 2000 images (20 minutes on 2 cores)
    python -m benchmarks.extraction --quick           # 32 and 64 images: a smoke run
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from absl import app, flags

_IMAGES = flags.DEFINE_integer("images", 2000, "Images of the larger input; the smaller has half as many.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke run: 32 and 64 images.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", os.path.join(tempfile.gettempdir(), "distillery-bench-images"),
                                 "Where the generated JPEGs are cached.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per teacher call, for both.")
_CHILD = flags.DEFINE_enum("child", None, ["beam", "plain"], "Internal: run one configuration and print JSON.")
_COUNT = flags.DEFINE_integer("count", None, "Internal: images the child reads.")

TEACHER = "builtin:mobilenet_v2_imagenet"
IMAGE_SIZE = 224


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


def run_beam(directory: str, count: int, batch_size: int) -> dict:
    """The extraction job over the first `count` images of `directory`; images/s and bytes per view."""
    from pipelines import extraction  # pylint: disable=import-outside-toplevel

    output_dir = tempfile.mkdtemp(prefix="distillery-bench-out-")
    config = extraction.ExtractConfig(source=f"glob:{directory}/*.jpg", teachers=(TEACHER,),
                                      output=os.path.join(output_dir, "soft"),
                                      dead_letter=os.path.join(output_dir, "dead.jsonl"), max_examples=count,
                                      batch_size=batch_size, log_every=500)
    result = extraction.run(config, save_main_session=False)
    counters = result.counters
    record_bytes = sum(os.path.getsize(os.path.join(output_dir, name)) for name in os.listdir(output_dir)
                       if name.startswith("soft-"))
    return {"images": counters["read"], "written": counters["written"], "seconds": result.summary["seconds"],
            "images_per_second": counters["read"] / result.summary["seconds"],
            "bytes_per_view": record_bytes / max(1, counters["written"] * config.views)}


def run_plain(directory: str, count: int, batch_size: int) -> dict:
    """tf.data + model.predict over the same images: the baseline."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from distillery import mobilenet_v2_torchvision, views  # pylint: disable=import-outside-toplevel

    model = mobilenet_v2_torchvision.mobilenet_v2_imagenet()
    paths = sorted(tf.io.gfile.glob(f"{directory}/*.jpg"))[:count]

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return views.crop_view(image, tf.constant([0.0625, 0.0625, 0.9375, 0.9375]), False, IMAGE_SIZE)

    dataset = (tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    start = time.monotonic()
    logits = model.predict(dataset, verbose=0)
    seconds = time.monotonic() - start
    return {"images": int(logits.shape[0]), "seconds": seconds, "images_per_second": logits.shape[0] / seconds}


def run_child(kind: str, directory: str, count: int, batch_size: int) -> dict:
    """One configuration (in its own process); adds the peak RSS."""
    result = run_beam(directory, count, batch_size) if kind == "beam" else run_plain(directory, count, batch_size)
    result.update(kind=kind, peak_rss_mib=peak_rss_bytes() / 2**20)
    return result


def benchmark(counts: Sequence[int], cache_dir: str, batch_size: int) -> list[dict]:
    """Runs (plain, beam) at each count in child processes; returns their JSON results."""
    directory = os.path.join(cache_dir, "jpeg")
    make_images(directory, max(counts))
    results = []
    for count in counts:
        for kind in ("plain", "beam"):
            command = [sys.executable, "-m", "benchmarks.extraction", f"--child={kind}", f"--count={count}",
                       f"--cache_dir={cache_dir}", f"--batch_size={batch_size}"]
            completed = subprocess.run(command, capture_output=True, text=True, check=False,
                                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
            lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
            if completed.returncode != 0 or not lines:
                raise RuntimeError(f"{kind} at {count} images failed:\n{completed.stderr[-3000:]}")
            results.append(json.loads(lines[-1][len("RESULT "):]))
            print(f"  {kind:5s} {count:5d} images: {results[-1]['images_per_second']:.1f} images/s, "
                  f"peak RSS {results[-1]['peak_rss_mib']:.0f} MiB", flush=True)
    return results


def table(results: Sequence[dict]) -> str:
    """The Markdown table the benchmark prints."""
    lines = ["| images | plain tf.data + predict (images/s) | Beam job (images/s) | Beam / plain | "
             "bytes per view | peak RSS plain (MiB) | peak RSS Beam (MiB) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    by_count: dict[int, dict[str, dict]] = {}
    for result in results:
        by_count.setdefault(result["images"], {})[result["kind"]] = result
    for count, pair in sorted(by_count.items()):
        plain, beam = pair["plain"], pair["beam"]
        lines.append(f"| {count} | {plain['images_per_second']:.1f} | {beam['images_per_second']:.1f} | "
                     f"{beam['images_per_second'] / plain['images_per_second']:.2f}x | {beam['bytes_per_view']:.1f} | "
                     f"{plain['peak_rss_mib']:.0f} | {beam['peak_rss_mib']:.0f} |")
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
    print(f"extraction benchmark: {TEACHER} at {IMAGE_SIZE}x{IMAGE_SIZE}, 1 view, top-10 float32, batch "
          f"{_BATCH_SIZE.value}, {os.cpu_count()} CPUs; images cached in {cache_dir}", flush=True)
    results = benchmark(counts, cache_dir, _BATCH_SIZE.value)
    print(table(results))


def run_main() -> None:
    app.run(main)


if __name__ == "__main__":
    run_main()
