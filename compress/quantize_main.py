"""`distillery-quantize`: a student (.keras or SavedModel) to a .tflite model with batch 1.

Modes: float32, float16 (weights in float16), dynamic (int8 weights, float activations) and int8
(full integer, uint8 or int8 input/output, calibrated on views of soft-label records). The library
is `compress.quantize` (settings: `compress.quantize_job.QuantizeConfig`); this is only its command line.

    distillery-quantize --model=runs/demo/student/student.keras --output=/tmp/student_int8.tflite \
        --mode=int8 --calibration='runs/demo/soft_labels/train-*' --calibration_steps=100
    python -m compress.quantize_main --model=student.keras --output=student_fp16.tflite --mode=float16
"""

from __future__ import annotations

import sys

from absl import app

from compress import quantize, quantize_job
from distillery import cli

cli.define_flags(quantize_job.QuantizeConfig)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        quantize_job.run(cli.from_flags(quantize_job.QuantizeConfig))
    except quantize.QuantizeError as error:
        print(f"distillery-quantize: error: {error}", file=sys.stderr)
        sys.exit(2)


def run_main() -> None:
    cli.run(main)


if __name__ == "__main__":
    run_main()
