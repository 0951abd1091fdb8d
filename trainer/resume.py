"""Resuming a run only when it is the same run: `--model_dir/run_config.json` says what its checkpoints are.

The chief writes the run's settings at start (atomically, distillery/atomic_files.py). A rerun with the
same --model_dir that would resume from a checkpoint first compares the settings that decide what the
weights mean, and refuses, listing each difference as old vs new, unless `--overwrite` (which removes
the run's checkpoints and outputs, `OUTPUT_NAMES`, and starts over).

Fixed (`FIXED`, and the data and classes the records give): --student, --width, --image_size, the
classes, --teacher (offline or online, and which teacher), --alpha, --temperature, --optimizer (its
slots are in the checkpoint), the recipe settings that change what the weights are (--weight_decay,
--label_smoothing, --ema_decay, --mixed_precision) and the training data: --train, the files it matches,
their record spec, and each file's contents as its size and the sha256 of its first record (so a file
rewritten in place by another extraction, another teacher or seed, is seen; a change after the first
record that keeps the size is not). May change (`MAY_CHANGE`): --steps (train longer; the cosine decay is then spread
over the new --steps), --batch_size, --learning_rate and --warmup_steps, the log, checkpoint and eval
intervals, --eval and its batch size, --seed and --shuffle_buffer (the resumed stream is reseeded anyway),
--max_checkpoints, the strategy and its replicas, --jit_compile and --sync_batch_norm (how a step is
computed, not what the weights are); the changes are logged. A setting in neither list counts as fixed.

    python -c "from trainer import resume; print(resume.FIXED, resume.MAY_CHANGE)"
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf
from absl import logging

from distillery import atomic_files, cli, records
from trainer import checkpointing, record_files
from trainer.train_config import TrainConfig

RUN_CONFIG = "run_config.json"
FORMAT = 1
FIXED = ("train_pattern", "student", "width", "image_size", "teacher", "alpha", "temperature", "optimizer",
         "weight_decay", "label_smoothing", "ema_decay", "mixed_precision")
MAY_CHANGE = ("model_dir", "overwrite", "steps", "batch_size", "learning_rate", "warmup_steps", "checkpoint_every",
              "log_every",
              "max_checkpoints", "eval_pattern", "eval_batch_size", "eval_every", "seed", "shuffle_buffer",
              "num_classes", "trust_saved_model", "max_bad_fraction", "jit_compile", "sync_batch_norm")
# What --overwrite removes: every file and folder a run writes into its model_dir.
OUTPUT_NAMES = ("checkpoints", "logs", "best", "saved_model", "student.keras", "summary.json", RUN_CONFIG)
SHOWN_FILES = 3


class ResumeRefusedError(ValueError):
    """A rerun whose settings differ from the checkpointed run's; the message lists them, old vs new."""


def run_settings(config: TrainConfig, survey: records.Survey, train_files: list[str]) -> dict:
    """What run_config.json holds: the flags, the classes, the record spec, the training files and what
    they hold (size in bytes and first record's sha256, from `survey` of `train_files`)."""
    files = [path if atomic_files.is_remote(path) else os.path.abspath(path) for path in train_files]
    contents = [{"bytes": size, "first_record_sha256": first}
                for size, first in zip(record_files.file_sizes(train_files), survey.first_records, strict=True)]
    settings = {"format": FORMAT, "config": dataclasses.asdict(config), "classes": survey.spec.num_classes,
                "record_spec": dataclasses.asdict(survey.spec), "train_files": files, "train_file_contents": contents}
    return json.loads(json.dumps(settings))  # tuples as lists, as they come back from the file


def read(model_dir: str) -> dict | None:
    path = os.path.join(model_dir, RUN_CONFIG)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def write(model_dir: str, settings: dict) -> None:
    with atomic_files.staged_file(os.path.join(model_dir, RUN_CONFIG)) as handle:
        handle.write(json.dumps(settings, indent=2) + "\n")


def has_checkpoint(model_dir: str) -> bool:
    return bool(tf.train.latest_checkpoint(os.path.join(model_dir, checkpointing.CHECKPOINT_SUBDIR)))


def differences(old: dict, new: dict) -> list[str]:
    """`--flag: old (old) vs new (new)` for every fixed setting that differs."""
    found = []
    old_config, new_config = _with_defaults(old.get("config", {})), new["config"]
    fixed = [name for name in new_config if name not in MAY_CHANGE]
    for name in fixed:
        if old_config.get(name) != new_config[name]:
            found.append(f"{_flag(name)}: {old_config.get(name)!r} (old) vs {new_config[name]!r} (new)")
    if old.get("classes") != new["classes"]:
        found.append(f"classes of the records: {old.get('classes')} (old) vs {new['classes']} (new)")
    if old.get("record_spec") != new["record_spec"]:
        found.append(f"record spec of --train: {old.get('record_spec')} (old) vs {new['record_spec']} (new)")
    old_files, new_files = old.get("train_files", []), new["train_files"]
    if old_files != new_files:
        gone = [path for path in old_files if path not in set(new_files)]
        added = [path for path in new_files if path not in set(old_files)]
        found.append(f"files --train matches: {len(old_files)} (old) vs {len(new_files)} (new)"
                     + (f"; only in the old run: {_some(gone)}" if gone else "")
                     + (f"; only in this one: {_some(added)}" if added else "")
                     + ("; the same files in another order" if not gone and not added else ""))
    elif "train_file_contents" in old and old["train_file_contents"] != new["train_file_contents"]:
        changed = [f"{path} ({_spell_contents(before)} (old) vs {_spell_contents(after)} (new))"
                   for path, before, after in zip(new_files, old["train_file_contents"], new["train_file_contents"])
                   if before != after]
        found.append(f"contents of the files --train matches: {len(changed)} of {len(new_files)} changed: "
                     f"{_some(changed)}")
    return found


def _spell_contents(contents: dict) -> str:
    return f"{contents['bytes']} bytes, first record {contents['first_record_sha256']}"


def allowed_changes(old: dict, new: dict) -> list[str]:
    """`--flag: old -> new` for every setting that may change and did (model_dir and overwrite left out)."""
    old_config, new_config = _with_defaults(old.get("config", {})), new["config"]
    return [f"{_flag(name)}: {old_config.get(name)!r} -> {new_config[name]!r}" for name in MAY_CHANGE
            if name in new_config and name not in ("model_dir", "overwrite") and old_config.get(name) != new_config[name]]


def check(model_dir: str, settings: dict) -> list[str]:
    """Whether a rerun may resume from `model_dir`'s checkpoints; returns the allowed changes (logged).

    Nothing to compare when there is no checkpoint (a fresh start) or no run_config.json (a run of an
    older trainer, resumed unchecked with a warning).

    Raises:
      ResumeRefusedError: a fixed setting differs; the message lists every difference.
    """
    if not has_checkpoint(model_dir):
        return []
    old = read(model_dir)
    if old is None:
        logging.warning("%s has checkpoints but no %s: resuming without checking the settings", model_dir, RUN_CONFIG)
        return []
    found = differences(old, settings)
    if found:
        raise ResumeRefusedError(
            f"--model_dir={model_dir} holds a run with other settings; resuming it would mix two runs "
            f"(pass --overwrite to start over there, or another --model_dir): " + "; ".join(found))
    changes = allowed_changes(old, settings)
    for change in changes:
        logging.info("resuming with a changed setting: %s", change)
    return changes


def clear(model_dir: str) -> list[str]:
    """--overwrite: removes the run's checkpoints and outputs (and leftover temporaries); returns what it removed."""
    removed = []
    if not tf.io.gfile.isdir(model_dir):
        return removed
    names = list(OUTPUT_NAMES) + [name.rstrip("/") for name in tf.io.gfile.listdir(model_dir)
                                  if name.startswith(atomic_files.TEMPORARY_PREFIX)]
    for name in names:
        path = os.path.join(model_dir, name)
        if not tf.io.gfile.exists(path):
            continue
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)
        removed.append(name)
    if removed:
        logging.info("--overwrite: removed %s from %s", ", ".join(removed), model_dir)
    return removed


def finished_summary(model_dir: str) -> dict | None:
    """The summary.json of a finished run in `model_dir` (None when its outputs were never written)."""
    path = os.path.join(model_dir, "summary.json")
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        return json.load(handle)


def _with_defaults(old_config: dict) -> dict:
    """An older run's settings with the defaults of the fields it predates (its run used those)."""
    defaults = {field.name: field.default for field in dataclasses.fields(TrainConfig)
                if field.default is not dataclasses.MISSING}
    return {**{name: value for name, value in defaults.items() if name not in old_config}, **old_config}


def _flag(name: str) -> str:
    try:
        return cli.flag_of(TrainConfig, name)
    except ValueError:  # a setting of an older run that is no longer a field
        return f"--{name}"


def _some(paths: list[str]) -> str:
    shown = ", ".join(paths[:SHOWN_FILES])
    return shown + (f" and {len(paths) - SHOWN_FILES} more" if len(paths) > SHOWN_FILES else "")
