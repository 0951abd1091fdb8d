"""Evaluation during training (`--eval_every=N`): a hook of trainer/driver.py, and the best student kept as best/.

`EvalHook` calls an evaluation (the task's `evaluate` under the training strategy: every replica
evaluates its share of the eval records, the counts are summed over replicas and workers) after every
N-th step and after the last step, logs it, writes `eval/top1` and `eval/top5` TensorBoard scalars at
that step (the trainer's writer is DIR/logs/eval), and when the top-1 beats the best so far calls
`on_best(step, result)`. The trainer's `on_best` is `BestExport.export`: DIR/best/ holds student.keras,
saved_model/ and best.json ({step, top1, top5, eval_images, eval}), written as one folder under a
temporary name and renamed into place. A resumed run starts from the best.json on disk when it was
measured on the same --eval records (another eval set starts the best over).

Every worker of a multi-worker run must run the hook at the same steps (the evaluation's counts are
all-reduced); only the chief exports.

    python -c "from trainer import eval_hook; help(eval_hook.EvalHook)"
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import keras
import tensorflow as tf
from absl import logging

from distillery import atomic_files
from trainer import driver, export

BEST_DIR = "best"
BEST_JSON = "best.json"


class EvalHook(driver.Hook):
    """Evaluates every `every` steps and after the last one; keeps the best top-1.

    Args:
      evaluate: () -> {'top1', 'top5', 'images'} of the model as it is now.
      every: steps between evaluations (> 0).
      writer: when given, eval/top1 and eval/top5 go to TensorBoard at the step evaluated.
      on_best: called with (step, result) when a top-1 beats `best_top1` (and then becomes it).
      best_top1: the best top-1 so far (a resumed run's), None when there is none.

    Attributes:
      results: {step: result} of this run's evaluations.
    """

    def __init__(self, evaluate: Callable[[], dict], every: int, writer: tf.summary.SummaryWriter | None = None,
                 on_best: Callable[[int, dict], None] | None = None, best_top1: float | None = None,
                 log: Callable[[str], None] = logging.info):
        if every < 1:
            raise ValueError(f"eval every must be positive, got {every}")
        self.evaluate, self.every, self.writer, self.on_best = evaluate, every, writer, on_best
        self.best_top1 = best_top1
        self.log = log
        self.results: dict[int, dict] = {}

    def after_step(self, state: driver.LoopState) -> None:
        if state.step % self.every == 0:
            self.run(state.step)

    def end(self, state: driver.LoopState) -> None:
        """The last step is evaluated too (the final evaluation), unless it just was."""
        if state.step > state.start_step and state.step not in self.results:
            self.run(state.step)

    def run(self, step: int) -> dict:
        result = self.evaluate()
        self.results[step] = result
        self.log(f"eval: step {step}  top-1 {_text(result['top1'])}  top-5 {_text(result['top5'])}  "
                 f"on {result['images']} images")
        if self.writer is not None:
            with self.writer.as_default(step=step):
                for name in ("top1", "top5"):
                    if result[name] is not None:
                        driver.write_scalar(f"eval/{name}", float(result[name]))
            self.writer.flush()
        top1 = result["top1"]
        if top1 is not None and (self.best_top1 is None or top1 > self.best_top1):
            self.best_top1 = float(top1)
            if self.on_best is not None:
                self.on_best(step, result)
        return result


class BestExport:
    """Writes DIR/best/ (student.keras, saved_model/, best.json) for a new best evaluation.

    Args:
      model_dir: the run's directory (best/ goes under it).
      eval_pattern: the records the top-1 was measured on (recorded in best.json).
      exportable: () -> the float32 student to save (trainer/export.py's `exportable_student`).
    """

    def __init__(self, model_dir: str, eval_pattern: str, exportable: Callable[[], keras.Model]):
        self.folder = os.path.join(model_dir, BEST_DIR)
        self.eval_pattern = eval_pattern
        self.exportable = exportable

    def previous_top1(self) -> float | None:
        """The top-1 of best/best.json when it was measured on the same eval records, else None."""
        best = read_best(os.path.dirname(self.folder))
        if best is None or best.get("eval") != self.eval_pattern:
            return None
        return best.get("top1")

    def export(self, step: int, result: dict) -> None:
        content = {"step": step, "top1": result["top1"], "top5": result["top5"], "eval_images": result["images"],
                   "eval": self.eval_pattern}
        with atomic_files.staged(self.folder) as folder:
            tf.io.gfile.makedirs(folder)
            export.write_student_files(self.exportable(), folder, BEST_JSON, content)
        logging.info("new best top-1 %s at step %d: wrote %s", result["top1"], step, self.folder)


def read_best(model_dir: str) -> dict | None:
    """DIR/best/best.json, or None."""
    path = os.path.join(model_dir, BEST_DIR, BEST_JSON)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def _text(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
