"""Checkpoints and preemption for the trainer's tf.distribute loop.

Fault tolerance is checkpoint-and-restart: every N steps the student, the optimizer (its slots and
iteration count) and the step counter are saved with `tf.train.CheckpointManager` under
`DIR/checkpoints/`; a rerun with the same `--model_dir` restores the latest checkpoint and continues to
the planned step count. A process killed with SIGKILL loses at most the steps since the last checkpoint.

Multi-worker runs (MultiWorkerMirroredStrategy) follow TensorFlow's saving convention: every worker
takes part in every save (variables may need collectives), the chief writes to `DIR/checkpoints/` and
the other workers to a private temporary directory that is deleted afterwards; all of them restore from
the chief's directory, which must therefore be on a shared file system (gs:// on a cluster).

Preemption (multi-worker only): `tf.distribute.experimental.PreemptionCheckpointHandler` watches for
the termination notice. On Google Cloud it polls the GCE metadata server for a maintenance or
preemption event; elsewhere (a Kubernetes pod being evicted, or this machine) it installs a SIGTERM
handler. When any worker is told to stop, the workers agree through the coordination service on the
next step, all of them save a checkpoint at that same step, and the process exits with code 42 (the
non-GCP default) so the cluster manager (a TFJob with `restartPolicy: ExitCode`) restarts it; the
restarted job resumes from that checkpoint.

    python -c "import trainer.checkpointing as c; help(c.CheckpointKeeper)"
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf
from absl import logging

from trainer import driver

CHECKPOINT_SUBDIR = "checkpoints"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (True for every single-worker strategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def worker_output_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this process writes: `model_dir` on the chief, a fresh temporary directory elsewhere."""
    if is_chief(strategy):
        tf.io.gfile.makedirs(model_dir)
        return model_dir
    resolver = strategy.cluster_resolver
    return tempfile.mkdtemp(prefix=f"distillery-{resolver.task_type}{resolver.task_id}-")


def remove_worker_dir(output_dir: str, model_dir: str) -> None:
    """Deletes a non-chief worker's temporary directory (never the chief's model_dir)."""
    if os.path.abspath(output_dir) != os.path.abspath(model_dir) and os.path.isdir(output_dir):
        shutil.rmtree(output_dir, ignore_errors=True)


class CheckpointKeeper(driver.Hook):
    """Saves every `every` steps, restores the latest, and handles preemption for multi-worker runs.

    A hook of `trainer.driver.run_steps`: it saves after the steps on the interval (or when a preemption
    notice came) and, at the end, the last step unless that step was just saved.

    Args:
      checkpoint: the `tf.train.Checkpoint` holding student, optimizer and the int64 `step` variable.
      step: that step variable (its value numbers the checkpoints).
      model_dir: the run's directory; checkpoints live under `model_dir/checkpoints`.
      output_dir: where this process writes (from `worker_output_dir`).
      strategy: the strategy the variables were created under.
      every: checkpoint interval in steps (0 = only at the end).
      max_to_keep: checkpoints kept.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, step: tf.Variable, model_dir: str, output_dir: str,
                 strategy: tf.distribute.Strategy, every: int, max_to_keep: int = 3):
        self.checkpoint = checkpoint
        self.step = step
        self.every = every
        self.read_dir = os.path.join(model_dir, CHECKPOINT_SUBDIR)
        self.write_manager = tf.train.CheckpointManager(
            checkpoint, os.path.join(output_dir, CHECKPOINT_SUBDIR), max_to_keep=max_to_keep, step_counter=step)
        self.preemption_handler = None
        self._strategy = strategy

    def restore(self, from_checkpoint: bool = True) -> int:
        """Restores the latest checkpoint of the chief's directory, if any; returns the restored step.

        `from_checkpoint` False (a run started over with --overwrite) restores nothing, so that no worker
        reads the checkpoints the chief is removing.
        """
        latest = tf.train.latest_checkpoint(self.read_dir) if from_checkpoint else None
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            logging.info("restored %s: resuming at step %d", latest, int(self.step.numpy()))
        if isinstance(self._strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Restores nothing new (our manager was restored above); installs the termination watcher.
            self.preemption_handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                self._strategy.cluster_resolver, self.write_manager)
        return int(self.step.numpy())

    def after_step(self, state: driver.LoopState) -> None:
        """Saves on the interval, or when a preemption notice came (then the process exits, code 42).

        The step is the loop's host count, so that no step waits for the device to report its counter.
        """
        if self.every and state.step % self.every == 0:
            self.save()
        if self.preemption_handler is not None:
            self.preemption_handler.save_checkpoint_if_preempted(checkpoint_number=state.step)

    def end(self, state: driver.LoopState) -> None:
        """Saves the last step if this run took any step and did not just save it."""
        if state.step > state.start_step and (not self.every or state.step % self.every):
            self.save()

    def save(self) -> str:
        path = self.write_manager.save(checkpoint_number=int(self.step.numpy()))
        logging.info("saved checkpoint %s", path)
        return path
