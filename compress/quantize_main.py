"""`distillery-quantize`: a student (.keras or SavedModel) to a .tflite model with batch 1.

Modes: float32, float16 (weights in float16), dynamic (int8 weights, float activations) and int8
(full integer, uint8 or int8 input/output, calibrated on views of soft-label records). The library
is `compress.quantize`; this is only its command line.

    distillery-quantize --model=runs/demo/student/student.keras --output=/tmp/student_int8.tflite \
        --mode=int8 --calibration='runs/demo/soft_labels/train-*' --calibration_steps=100
    python -m compress.quantize_main --model=student.keras --output=student_fp16.tflite --mode=float16
"""

from __future__ import annotations

import sys

from absl import app, flags

from compress import quantize

_MODEL = flags.DEFINE_string("model", None, "Student: a .keras file or a SavedModel directory.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the .tflite model.")
_MODE = flags.DEFINE_enum("mode", "int8", quantize.MODES, "Conversion: float32, float16, dynamic or int8.")
_CALIBRATION = flags.DEFINE_string(
    "calibration", None, "int8 only: glob of soft-label records whose view-0 images calibrate the activations.")
_CALIBRATION_STEPS = flags.DEFINE_integer("calibration_steps", 100, "int8 only: how many calibration images.")
_IO_TYPE = flags.DEFINE_enum("io_type", "uint8", quantize.IO_TYPES, "int8 only: dtype of the model's input/output.")

flags.mark_flags_as_required(["model", "output"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        quantize.quantize_file(_MODEL.value, _OUTPUT.value, _MODE.value, _CALIBRATION.value,
                               _CALIBRATION_STEPS.value, _IO_TYPE.value)
    except quantize.QuantizeError as error:
        print(f"distillery-quantize: error: {error}", file=sys.stderr)
        sys.exit(2)


def run_main() -> None:
    app.run(main)


if __name__ == "__main__":
    run_main()
