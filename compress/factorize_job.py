"""The `distillery-factorize` job: choose ranks, factorize the 1x1 convolutions, distill-fine-tune, report.

Steps, all checked inputs first (nothing heavy runs before the flags, the files and the budget are
known to be usable):

1. load the student (.keras or SavedModel) and find its 1x1 convolutions (and dense layers);
2. pick ranks: `--energy`, `--rank_ratio`, `--target_latency_ms` or `--latency_reduction` (the last two from
   the per-op profile of the int8 TFLite student, calibrated on the training records, then each selection
   built, converted and timed against the student, `--selection_rounds` times at most; see
   compress/rank_selection.py);
3. factorize and fine-tune, `--mode=layerwise` (the LPIRC 2018 seed procedure) or `oneshot`;
4. top-1 on `--eval` before, right after factorization, and after fine-tuning (Keras float32 model, centre
   crop: `trainer.task.evaluate`);
5. write `--output` (.keras; the input model is never overwritten: same path refused) and
   `OUTPUT.report.json`, each under a temporary name in the output folder, renamed into place together
   (distillery/atomic_files.py; an unwritable folder is refused with the flags); print the per-layer table.

    distillery-factorize --model=runs/demo/student/student.keras --train='runs/demo/records/train-*' \
        --eval='runs/demo/records/eval-*' --output=runs/demo/factorized.keras --energy=0.9 --mode=oneshot
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from compress import factorize, finetune, rank_selection
from distillery import atomic_files, records, saved_model_check
from distillery.cli import option

DEFAULT_ENERGY = 0.9


class JobError(ValueError):
    """Input the job refuses before any heavy work; the message names the flag or file."""


@dataclasses.dataclass
class JobConfig:
    """Everything one run needs; each field but `tuning` and `verify_latency` is a `distillery-factorize` flag.

    The rank selection is at most one of energy, rank_ratio, target_latency_ms, latency_reduction and
    ranks (default: energy 0.9). latency_reduction F is the budget (1 - F) x the measured int8 latency of
    the student (a relative --target_latency_ms); ranks is an explicit {layer name: rank}. `tuning` holds
    the fine-tuning settings (its train_pattern is set from train_pattern).
    """

    model_path: str = option(flag="model", help="The student: a .keras file or a SavedModel directory.")
    train_pattern: str = option(flag="train", help="Glob(s) of soft-label records for the distillation "
                                                   "fine-tuning (and the int8 calibration of the latency profile).")
    output_path: str = option(flag="output", help="The factorized model (.keras); the report goes to "
                                                  "OUTPUT.report.json.")
    eval_pattern: str | None = option(None, flag="eval", help="Glob(s) of labelled records for top-1 before/after.")
    energy: float | None = option(None, help="Keep this fraction of each layer's squared singular values.")
    rank_ratio: float | None = option(None, help="Rank = this fraction of min(Cin, Cout).")
    target_latency_ms: float | None = option(None, help="Global budget: single-thread int8 latency to reach "
                                                        "(greedy, per-op profile).")
    latency_reduction: float | None = option(None, help="Relative budget: make the int8 student this fraction "
                                                        "faster, e.g. 0.2 (= --target_latency_ms of 0.8 x its "
                                                        "measured latency).")
    ranks: dict[str, int] | None = option(None, parse=lambda text: parse_ranks(text), spell=lambda ranks: spell_ranks(ranks),
                                          help="Explicit ranks, LAYER:RANK,LAYER:RANK (instead of a selection).")
    include_dense: bool = option(True, help="Also factorize dense layers (the classifier).")
    tuning: finetune.FinetuneConfig | None = None
    calibration_steps: int = option(64, help="int8 calibration images (latency budget).")
    profile_runs: int = option(30, help="Timed runs per op (and for the whole model) in the latency profile.")
    verify_latency: bool = True  # with a latency budget, measure the factorized int8 model after fine-tuning
    selection_rounds: int = option(3, lower_bound=0, help="With a latency budget: selections built and timed "
                                   "before fine-tuning, each reselecting with the per-op overhead the last one's "
                                   "miss implies (0 = trust the MAC-based estimate).")
    trust_saved_model: bool = option(False, help=saved_model_check.TRUST_HELP)


def spell_ranks(ranks: dict[str, int]) -> str:
    """{"conv_pw_1": 8, "conv_pw_2": 16} -> "conv_pw_1:8,conv_pw_2:16" (the inverse of parse_ranks)."""
    return ",".join(f"{name}:{rank}" for name, rank in ranks.items())


def parse_ranks(text: str) -> dict[str, int]:
    """"conv_pw_1:8,conv_pw_2:16" -> {"conv_pw_1": 8, "conv_pw_2": 16}; JobError on a malformed entry."""
    ranks = {}
    for entry in filter(None, (item.strip() for item in text.split(","))):
        name, _, rank = entry.rpartition(":")
        if not name or not rank.isdigit():
            raise JobError(f"--ranks: expected LAYER:RANK entries separated by commas, got {entry!r}")
        ranks[name] = int(rank)
    return ranks


def _same_file(first: str, second: str) -> bool:
    if "://" in first or "://" in second:
        return first.rstrip("/") == second.rstrip("/")
    return os.path.realpath(first) == os.path.realpath(second)


def validate(config: JobConfig) -> None:
    """Refuses bad flags and missing inputs early.

    Raises:
      JobError: naming the flag or the file.
    """
    chosen = [name for name, value in (("--energy", config.energy), ("--rank_ratio", config.rank_ratio),
                                       ("--target_latency_ms", config.target_latency_ms),
                                       ("--latency_reduction", config.latency_reduction),
                                       ("--ranks", config.ranks)) if value is not None]
    if len(chosen) > 1:
        raise JobError(f"choose one rank selection, got {' and '.join(chosen)}")
    if config.energy is not None and not 0.0 < config.energy <= 1.0:
        raise JobError(f"--energy must be in (0, 1], got {config.energy}")
    if config.rank_ratio is not None and not 0.0 < config.rank_ratio <= 1.0:
        raise JobError(f"--rank_ratio must be in (0, 1], got {config.rank_ratio}")
    if config.target_latency_ms is not None and config.target_latency_ms <= 0:
        raise JobError(f"--target_latency_ms must be positive, got {config.target_latency_ms}")
    if config.latency_reduction is not None and not 0.0 < config.latency_reduction < 1.0:
        raise JobError(f"--latency_reduction must be in (0, 1), got {config.latency_reduction}")
    if not config.output_path.endswith(".keras"):
        raise JobError(f"--output must end in .keras, got {config.output_path}")
    if _same_file(config.model_path, config.output_path):
        raise JobError(f"--output={config.output_path} is the input model; refusing to overwrite it")
    if not tf.io.gfile.exists(config.model_path):
        raise JobError(f"--model: {config.model_path} does not exist")
    for flag, pattern in (("--train", config.train_pattern), ("--eval", config.eval_pattern)):
        if pattern is None:
            continue
        try:
            records.read_spec(pattern)
        except (FileNotFoundError, records.RecordError) as error:
            raise JobError(f"{flag}: {error}") from None
    try:
        (config.tuning or finetune.FinetuneConfig(config.train_pattern)).check()
    except ValueError as error:
        raise JobError(str(error)) from None
    try:
        atomic_files.check_writable(os.path.dirname(config.output_path), "--output", config.output_path)
    except atomic_files.OutputFolderError as error:
        raise JobError(str(error)) from None


def load_student(path: str, trust_saved_model: bool = False) -> keras.Model:
    """The student at `path` (a SavedModel's ops checked first unless `trust_saved_model`); JobError naming
    it when it does not load or is refused."""
    from compress import quantize  # pylint: disable=import-outside-toplevel

    try:
        return quantize.load_model(path, trust_saved_model)
    except quantize.QuantizeError as error:
        raise JobError(str(error)) from None


def calibration_inputs(model: keras.Model, train_pattern: str, calibration_steps: int) -> list[np.ndarray]:
    """int8 calibration inputs at the model's input size: views of the training records."""
    from compress import quantize  # pylint: disable=import-outside-toplevel

    height, width, channels = quantize.input_shape_of(model)
    return quantize.calibration_images(train_pattern, (height, width), calibration_steps, channels)


def int8_flatbuffer(model: keras.Model, calibration: list[np.ndarray]) -> bytes:
    """The model as full-integer int8 TFLite, calibrated on `calibration_inputs`."""
    from compress import quantize  # pylint: disable=import-outside-toplevel

    return quantize.convert(model, "int8", calibration)


def latency_ratio(candidate: bytes, reference: bytes, runs: int, rounds: int = 3) -> float:
    """Median latency of `candidate` over `reference` (single thread), timed in alternating rounds so
    that the load of a shared machine falls on both; the median of the per-round ratios."""
    from distillery import latency as latency_module  # pylint: disable=import-outside-toplevel

    medians = latency_module.interleaved_round_medians({"reference": reference, "candidate": candidate}, runs, rounds)
    return float(np.median([candidate_ms / reference_ms
                            for candidate_ms, reference_ms in zip(medians["candidate"], medians["reference"])]))


def calibrate_selection(select: Callable[[float], rank_selection.Selection],
                        measure_ms: Callable[[rank_selection.Selection], float], target_ms: float, rounds: int,
                        log: Callable[[str], None]) -> tuple[rank_selection.Selection, list[dict]]:
    """Selects ranks, builds and times each selection, and reselects with the calibrated per-op overhead.

    `select(op_overhead_ms)` is the greedy selection; `measure_ms(selection)` the measured latency of the
    factorized int8 model (the factors straight from the SVD: latency does not depend on the values).
    Stops at the first selection measured within `target_ms`, at an empty selection (nothing to time), or
    when a reselection repeats an earlier one; otherwise keeps the fastest measured one.

    Returns:
      (selection, one dict per round: overhead, ranks, estimated and measured ms).

    Raises:
      rank_selection.BudgetError: the first selection is impossible (later ones end the rounds instead).
    """
    overhead, attempts, best = 0.0, [], None
    for round_number in range(1, rounds + 1):
        try:
            selection = select(overhead)
        except rank_selection.BudgetError as error:
            if best is None:
                raise
            log(f"latency round {round_number}: per-op overhead {overhead:.4f} ms leaves no selection within "
                f"the budget ({error}); keeping round {best[1]}")
            break
        if not selection.ranks and best is None:
            return selection, attempts  # nothing to time (the caller refuses an empty selection)
        if not selection.ranks or any(attempt["ranks"] == selection.ranks for attempt in attempts):
            log(f"latency round {round_number}: per-op overhead {overhead:.4f} ms selects "
                f"{'nothing' if not selection.ranks else 'the ranks of an earlier round'}; keeping round {best[1]}")
            break
        measured = measure_ms(selection)
        attempts.append({"op_overhead_ms": overhead, "ranks": dict(selection.ranks),
                         "estimated_ms": selection.estimated_ms, "measured_ms": measured})
        log(f"latency round {round_number}: {len(selection.ranks)} layers, estimated {selection.estimated_ms:.4f} ms "
            f"with {overhead:.4f} ms per extra op, measured {measured:.4f} ms (budget {target_ms:.4f} ms)")
        if best is None or measured < best[0]:
            best = (measured, round_number, selection)
        if measured <= target_ms:
            return selection, attempts
        overhead = rank_selection.calibrated_overhead_ms(selection, measured)
    else:
        log(f"no round met the budget of {target_ms:.4f} ms; keeping round {best[1]} ({best[0]:.4f} ms, the fastest)")
    return best[2], attempts


@dataclasses.dataclass(frozen=True)
class StudentInt8:
    """The student's int8 flatbuffer a latency budget was measured on, and its calibration inputs: the
    reference the factorized model is timed against after fine-tuning, converted the same way."""

    content: bytes
    calibration: list[np.ndarray]


def select_ranks(model: keras.Model, layers: list[factorize.FactorizableLayer], config: JobConfig,
                 log: Callable[[str], None]) -> tuple[rank_selection.Selection, dict, StudentInt8 | None]:
    """The ranks per the config, a description of the method for the report, and (latency budgets
    only, else None) the student's int8 model the budget was measured on.

    Raises:
      rank_selection.BudgetError: a latency budget no allowed factorization meets.
    """
    if config.ranks is not None:
        factorize.check_ranks(model, config.ranks)
        return rank_selection.Selection(dict(config.ranks), {}), {"ranks": dict(config.ranks)}, None
    if config.rank_ratio is not None:
        return rank_selection.select_by_ratio(layers, config.rank_ratio), {"rank_ratio": config.rank_ratio}, None
    if config.target_latency_ms is None and config.latency_reduction is None:
        energy = config.energy if config.energy is not None else DEFAULT_ENERGY
        return rank_selection.select_by_energy(model, layers, energy), {"energy": energy}, None
    from distillery import op_profile  # pylint: disable=import-outside-toplevel

    start = time.perf_counter()
    calibration = calibration_inputs(model, config.train_pattern, config.calibration_steps)
    content = int8_flatbuffer(model, calibration)
    profile = op_profile.profile_ops(content, num_threads=1, runs=config.profile_runs, name=config.model_path)
    # Each single-op slice pays one interpreter call of overhead, so the ops sum to more than the whole
    # model; their times are scaled to add up to the whole model before they are compared with the budget.
    scale = profile.whole_model_ms / profile.sum_ms if profile.sum_ms > 0 else 1.0
    layer_ms = {name: ms * scale for name, ms in
                rank_selection.layer_milliseconds(content, [row.ms for row in profile.rows], layers).items()}
    log(f"per-op profile of the int8 student ({time.perf_counter() - start:.1f} s): whole model "
        f"{profile.whole_model_ms:.3f} ms, sum of ops {profile.sum_ms:.3f} ms, {len(layer_ms)} of {len(layers)} "
        f"factorizable layers mapped, {sum(layer_ms.values()):.3f} ms in them (scaled to the whole model)")
    target_ms = config.target_latency_ms
    if config.latency_reduction is not None:
        target_ms = (1.0 - config.latency_reduction) * profile.whole_model_ms
        log(f"--latency_reduction={config.latency_reduction:g}: budget {target_ms:.4f} ms "
            f"({profile.whole_model_ms:.4f} ms measured)")

    def select(op_overhead_ms: float) -> rank_selection.Selection:
        return rank_selection.select_for_latency(model, layers, layer_ms, profile.whole_model_ms, target_ms,
                                                 op_overhead_ms=op_overhead_ms)

    def measure_ms(selection: rank_selection.Selection) -> float:
        candidate = int8_flatbuffer(factorize.factorize_model(model, selection.ranks), calibration)
        return latency_ratio(candidate, content, runs=10 * config.profile_runs) * profile.whole_model_ms

    rounds: list[dict] = []
    try:
        if config.selection_rounds > 0:
            selection, rounds = calibrate_selection(select, measure_ms, target_ms, config.selection_rounds, log)
        else:
            selection = select(0.0)
    except rank_selection.BudgetError as error:
        if config.latency_reduction is None:
            raise
        raise rank_selection.BudgetError(
            f"--latency_reduction={config.latency_reduction:g} (budget {target_ms:.4f} ms): {error}") from None
    extra = {} if config.latency_reduction is None else {"latency_reduction": config.latency_reduction}
    return selection, {**extra, "target_latency_ms": target_ms, "model_ms": profile.whole_model_ms,
                       "per_op_sum_ms": profile.sum_ms, "layer_ms": layer_ms,
                       "op_overhead_ms": selection.op_overhead_ms, "estimated_ms": selection.estimated_ms,
                       "selection_rounds": rounds}, StudentInt8(content, calibration)


def save_outputs(model: keras.Model, path: str, report: dict) -> None:
    """Writes the .keras file and PATH.report.json, each under a temporary name in their folder, renamed into
    place once both are written (the report last), so a failure leaves the previous pair as it was.

    Keras writes the model locally; a gs:// one is then copied there (tf.io.gfile) and renamed.
    """
    with atomic_files.staged_file(path + ".report.json") as report_file, \
            atomic_files.staged(path, local_writer=True) as model_path:
        model.save(model_path)
        report_file.write(json.dumps(report, indent=2) + "\n")


def run(config: JobConfig, log: Callable[[str], None] = print) -> dict:
    """The whole job; returns the report (also written to OUTPUT.report.json).

    Raises:
      JobError, factorize.FactorizationError, rank_selection.BudgetError: before any fine-tuning.
    """
    validate(config)
    tuning = dataclasses.replace(config.tuning or finetune.FinetuneConfig(config.train_pattern),
                                 train_pattern=config.train_pattern)
    model = load_student(config.model_path, config.trust_saved_model)
    layers = factorize.require_factorizable(model, config.model_path)
    if not config.include_dense:
        layers = [layer for layer in layers if layer.kind != "dense"]
    selection, method, student_int8 = select_ranks(model, layers, config, log)
    if not selection.ranks:
        reasons = "; ".join(f"{name}: {why}" for name, why in selection.skipped.items())
        raise factorize.FactorizationError(f"no layer of {config.model_path} is worth factorizing with {method}: {reasons}")
    by_name = {layer.name: layer for layer in layers}
    layer_reports = [factorize.layer_report(model, by_name[name], rank, selection.estimated_ms_saved.get(name))
                     for name, rank in selection.ranks.items()]
    chosen_by = ", ".join(f"{key}={method[key]:g}" for key in ("energy", "rank_ratio", "latency_reduction", "target_latency_ms")
                          if key in method) or "explicit --ranks"
    log(f"factorizing {len(selection.ranks)} of {len(layers)} layers ({chosen_by}), mode {tuning.mode}: "
        + ", ".join(f"{name} r={rank}" for name, rank in selection.ranks.items()))
    top1 = {"evaluated_with": "Keras float32 model, centre crop (trainer.task.evaluate)"}
    if config.eval_pattern:
        top1["before"] = finetune.evaluate_top1(model, config.eval_pattern)
        top1["after_factorization"] = finetune.evaluate_top1(factorize.factorize_model(model, selection.ranks),
                                                             config.eval_pattern)
        log(f"top-1 before {top1['before']:.4f}, right after factorization {top1['after_factorization']:.4f}")
    start = time.perf_counter()
    tuned, phases = finetune.factorize_and_finetune(model, selection.ranks, tuning, log)
    finetune_seconds = time.perf_counter() - start
    if config.eval_pattern:
        top1["after_finetune"] = finetune.evaluate_top1(tuned, config.eval_pattern)
        log(f"top-1 after fine-tuning {top1['after_finetune']:.4f}")
    latency = dict(method) if "target_latency_ms" in method else None
    if latency is not None and config.verify_latency:
        content = int8_flatbuffer(tuned, student_int8.calibration)
        # Timed against the student, as in the selection rounds: a bare median moved by 45% between two
        # runs of the demo whose benchmark medians agreed, because other jobs shared the machine.
        latency["measured_factorized_ms"] = latency_ratio(
            content, student_int8.content, runs=10 * config.profile_runs) * latency["model_ms"]
        log(f"factorized int8 model: {latency['measured_factorized_ms']:.3f} ms measured "
            f"(estimate {selection.estimated_ms:.3f} ms, budget {latency['target_latency_ms']:g} ms)")
    report = {
        "model": config.model_path, "output": config.output_path, "mode": tuning.mode,
        "selection": {key: value for key, value in method.items() if key != "layer_ms"},
        "layers": [dataclasses.asdict(item) for item in layer_reports],
        "skipped": selection.skipped,
        "totals": {"params_before": int(model.count_params()), "params_after": int(tuned.count_params()),
                   "macs_before": factorize.model_macs(model), "macs_after": factorize.model_macs(tuned)},
        "top1": top1,
        "finetune": {"steps": tuning.steps, "final_steps": tuning.final_steps, "batch_size": tuning.batch_size,
                     "learning_rate": tuning.learning_rate, "optimizer": tuning.optimizer, "alpha": tuning.alpha,
                     "temperature": tuning.temperature,
                     "seconds": round(finetune_seconds, 1), "phases": phases},
        "latency": latency,
    }
    save_outputs(tuned, config.output_path, report)
    return report


def format_report(report: dict) -> str:
    """The stdout summary: the per-layer table, totals and the three top-1 figures."""
    layer_reports = [factorize.LayerReport(**item) for item in report["layers"]]
    totals = report["totals"]
    lines = [factorize.format_table(layer_reports), "",
             f"model: params {totals['params_before']:,} -> {totals['params_after']:,}, "
             f"MACs {totals['macs_before']:,} -> {totals['macs_after']:,} "
             f"({100 * (1 - totals['macs_after'] / max(totals['macs_before'], 1)):.1f}% fewer)"]
    top1 = report["top1"]
    if "before" in top1:
        lines.append(f"top-1 ({top1['evaluated_with']}): before {top1['before']:.4f}, right after factorization "
                     f"{top1['after_factorization']:.4f}, after {report['mode']} fine-tuning {top1['after_finetune']:.4f}")
    latency = report.get("latency")
    if latency:
        measured = latency.get("measured_factorized_ms")
        lines.append(f"int8 latency (1 thread): before {latency['model_ms']:.3f} ms, estimate {latency['estimated_ms']:.3f} ms"
                     + (f", measured {measured:.3f} ms" if measured is not None else "")
                     + f", budget {latency['target_latency_ms']:g} ms")
    lines.append(f"wrote {report['output']} and {report['output']}.report.json")
    return "\n".join(lines)
