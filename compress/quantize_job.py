"""The `distillery-quantize` job's settings: each field is one of its flags (distillery/cli.py).

    python -c "from compress import quantize_job; help(quantize_job.QuantizeConfig)"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from compress import quantize
from distillery import saved_model_check
from distillery.cli import option


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """One conversion of a student to a batch-1 .tflite model."""

    model: str = option(help="Student: a .keras file or a SavedModel directory.")
    output: str = option(help="Where to write the .tflite model.")
    mode: str = option("int8", choices=quantize.MODES, help="Conversion: float32, float16, dynamic or int8.")
    calibration: str | None = option(None, help="int8 only: glob of soft-label records whose view-0 images "
                                                "calibrate the activations.")
    calibration_steps: int = option(100, lower_bound=1, help="int8 only: how many calibration images.")
    io_type: str = option("uint8", choices=quantize.IO_TYPES, help="int8 only: dtype of the model's input/output.")
    trust_saved_model: bool = option(False, help=saved_model_check.TRUST_HELP)


def run(config: QuantizeConfig, log: Callable[[str], None] = print) -> int:
    """Converts and writes `config.output`; returns its size in bytes (QuantizeError names what is wrong)."""
    return quantize.quantize_file(config.model, config.output, config.mode, config.calibration,
                                  config.calibration_steps, config.io_type, log=log,
                                  trust_saved_model=config.trust_saved_model)
