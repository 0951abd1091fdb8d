"""distillery-factorize: SVD-factorize a student's 1x1 convolutions, distill-fine-tune, report.

The library is compress/factorize_job.py (over compress/factorize.py, rank_selection.py, finetune.py);
this is its thin absl entry point.

    distillery-factorize --model=runs/demo/student/student.keras --train='runs/demo/records/train-*' \
        --eval='runs/demo/records/eval-*' --output=runs/demo/factorized.keras --energy=0.9 --mode=layerwise

Rank selection (one of): --energy=F (fraction of squared singular values kept per layer, default 0.9),
--rank_ratio=F (rank = F * min(Cin, Cout)), --target_latency_ms=MS (greedy global budget from the
per-op profile of the int8 student) or --latency_reduction=F (the same, budget (1 - F) x its latency).
Outputs: OUTPUT (.keras) and OUTPUT.report.json.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from compress import factorize, factorize_job, finetune, rank_selection
from distillery import records

_MODEL = flags.DEFINE_string("model", None, "The student: a .keras file or a SavedModel directory.")
_TRAIN = flags.DEFINE_string("train", None, "Glob(s) of soft-label records for the distillation fine-tuning.")
_OUTPUT = flags.DEFINE_string("output", None, "The factorized model (.keras); the report goes to OUTPUT.report.json.")
_EVAL = flags.DEFINE_string("eval", None, "Glob(s) of labelled records for top-1 before/after (optional).")
_ENERGY = flags.DEFINE_float("energy", None, "Keep this fraction of each layer's squared singular values.")
_RANK_RATIO = flags.DEFINE_float("rank_ratio", None, "Rank = this fraction of min(Cin, Cout).")
_TARGET_LATENCY_MS = flags.DEFINE_float("target_latency_ms", None,
                                        "Global budget: single-thread int8 latency to reach (greedy, per-op profile).")
_LATENCY_REDUCTION = flags.DEFINE_float(
    "latency_reduction", None, "Relative budget: make the int8 student this fraction faster, e.g. 0.2 "
    "(= --target_latency_ms of 0.8 x its measured latency).")
_RANKS = flags.DEFINE_string("ranks", None, "Explicit ranks, LAYER:RANK,LAYER:RANK (instead of a selection).")
_MODE = flags.DEFINE_enum("mode", "layerwise", finetune.MODES,
                          "layerwise: one layer at a time, others frozen (the seed procedure); oneshot: all, joint.")
_INCLUDE_DENSE = flags.DEFINE_boolean("include_dense", True, "Also factorize dense layers (the classifier).")
_STEPS = flags.DEFINE_integer("steps", 600, "Total fine-tuning steps (layerwise: split over the layers).")
_FINAL_STEPS = flags.DEFINE_integer(
    "final_steps", 0, "Layerwise: steps of a last phase in which every weight trains jointly (after the per-layer phases).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Fine-tuning batch size.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate of each phase (cosine decay).")
_OPTIMIZER = flags.DEFINE_enum("optimizer", "adam", finetune.OPTIMIZERS, "adam or sgd (Nesterov momentum 0.9).")
_ALPHA = flags.DEFINE_float("alpha", 0.5, "Weight of the hard-label cross-entropy term.")
_TEMPERATURE = flags.DEFINE_float("temperature", 4.0, "Distillation temperature T.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data order and view choices.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 100, "Steps between progress lines.")
_CALIBRATION_STEPS = flags.DEFINE_integer("calibration_steps", 64, "int8 calibration images (latency budget).")
_PROFILE_RUNS = flags.DEFINE_integer("profile_runs", 30, "Timed runs per op in the latency profile.")
_SELECTION_ROUNDS = flags.DEFINE_integer(
    "selection_rounds", 3, "With a latency budget: selections built and timed before fine-tuning, each reselecting "
    "with the per-op overhead the last one's miss implies (0 = trust the MAC-based estimate).", lower_bound=0)

flags.mark_flags_as_required(["model", "train", "output"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    tuning = finetune.FinetuneConfig(
        train_pattern=_TRAIN.value, mode=_MODE.value, steps=_STEPS.value, final_steps=_FINAL_STEPS.value,
        batch_size=_BATCH_SIZE.value,
        learning_rate=_LEARNING_RATE.value, optimizer=_OPTIMIZER.value, alpha=_ALPHA.value,
        temperature=_TEMPERATURE.value, seed=_SEED.value, log_every=_LOG_EVERY.value)
    try:
        ranks = factorize_job.parse_ranks(_RANKS.value) if _RANKS.value is not None else None
    except factorize_job.JobError as error:
        sys.exit(f"distillery-factorize: error: {error}")
    config = factorize_job.JobConfig(
        model_path=_MODEL.value, train_pattern=_TRAIN.value, output_path=_OUTPUT.value, eval_pattern=_EVAL.value,
        energy=_ENERGY.value, rank_ratio=_RANK_RATIO.value, target_latency_ms=_TARGET_LATENCY_MS.value,
        latency_reduction=_LATENCY_REDUCTION.value, ranks=ranks,
        include_dense=_INCLUDE_DENSE.value, tuning=tuning, calibration_steps=_CALIBRATION_STEPS.value,
        profile_runs=_PROFILE_RUNS.value, selection_rounds=_SELECTION_ROUNDS.value)
    try:
        report = factorize_job.run(config, log=lambda line: print(line, flush=True))
    except (factorize_job.JobError, factorize.FactorizationError, rank_selection.BudgetError,
            records.RecordError) as error:
        sys.exit(f"distillery-factorize: error: {error}")
    print(factorize_job.format_report(report))


def run_main() -> None:
    app.run(main)


if __name__ == "__main__":
    run_main()
