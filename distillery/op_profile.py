"""Per-op latency of a .tflite model without recompiling anything (docs/decisions/003-per-op-profile-by-slicing.md).

The model's flatbuffer is sliced into single-op models: each keeps one operator, its input tensors
(constant tensors keep their buffers, activations become the model's inputs) and its outputs. Each is
timed with the same latency code as the whole model (`distillery.latency`), on random inputs of the
right type and shape. The table gives op index, type (builtin op name), output shape, ms and share;
ops are grouped by layer through their output tensor names, which keep the Keras name scope through
conversion ("functional_1/conv_dw_3_1/depthwise" -> layer "conv_dw_3"). The sum of the ops is reported
next to the whole-model latency. Each single-op model pays the fixed cost of one interpreter call
(Python binding, delegate dispatch: ~1-3 us here), which the whole model pays once: that cost is
measured on a trivial one-op model and subtracted from every op, and added once to the sum. On small
students (0.05 ms, 30 ops) it would otherwise double the sum. On the models tested the sum lands within
+-15% of the whole model (slices also run without their neighbours' cache warmth).

    python -m distillery.op_profile /tmp/student_int8.tflite
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence

from distillery import latency, tflite_model

# Ops that call other subgraphs cannot stand alone in a one-subgraph model.
_SUBGRAPH_OPS = frozenset({"WHILE", "IF", "CALL_ONCE", "CALL", "STABLEHLO_COMPOSITE"})


@dataclasses.dataclass(frozen=True)
class OpRow:
    """One operator of the model.

    Attributes:
      index: position in subgraph 0's execution order.
      op_type: builtin op name (CONV_2D, DEPTHWISE_CONV_2D, ...).
      output_shape: shape of its first output.
      output_dtype: type of its first output (FLOAT32, INT8, ...).
      layer: the Keras layer scope of its output tensor's name, "" when no name survived.
      ms: median latency of the single-op model (0 for ops that are not timed, see `note`).
      share: ms / sum of all ops.
      note: why an op was not timed: "constant" (all its inputs are constants, e.g. the DEQUANTIZE of
        float16 weights: the runtime folds it once at load time), or the error of its slice.
    """

    index: int
    op_type: str
    output_shape: tuple[int, ...]
    output_dtype: str
    layer: str
    ms: float
    share: float
    note: str = ""


@dataclasses.dataclass(frozen=True)
class OpProfile:
    """Every op's row, their sum, and the whole model's median latency measured the same way."""

    rows: tuple[OpRow, ...]
    whole_model_ms: float
    num_threads: int
    call_overhead_ms: float = 0.0

    @property
    def sum_ms(self) -> float:
        """The per-op sum reported next to the whole model: the ops' own times plus one call overhead."""
        return float(sum(row.ms for row in self.rows)) + self.call_overhead_ms

    @property
    def sum_ratio(self) -> float:
        """sum of ops / whole model (1.0 = the slices add up exactly)."""
        return self.sum_ms / self.whole_model_ms if self.whole_model_ms > 0 else float("nan")

    def by_layer(self) -> list[tuple[str, float, float, list[str]]]:
        """[(layer, ms, share, op types)] in execution order of each layer's first op."""
        groups: OrderedDict[str, list[OpRow]] = OrderedDict()
        for row in self.rows:
            groups.setdefault(row.layer or f"(op {row.index} {row.op_type})", []).append(row)
        total = sum(row.ms for row in self.rows) or 1.0
        return [(layer, sum(row.ms for row in rows), sum(row.ms for row in rows) / total,
                 [row.op_type for row in rows]) for layer, rows in groups.items()]

    def as_dicts(self) -> list[dict]:
        return [{"index": row.index, "op_type": row.op_type, "output_shape": list(row.output_shape),
                 "layer": row.layer, "ms": round(row.ms, 5), "share": round(row.share, 5),
                 **({"note": row.note} if row.note else {})} for row in self.rows]


_COMPUTE_NAMES = ("convolution", "depthwise", "Conv2D", "MatMul", "BiasAdd")
_SCOPE_SUFFIX = re.compile(r"_\d+$")


def layer_of(tensor_name: str) -> str:
    """The Keras layer that produced a converted tensor, from its name; "" when none survived.

    A fused op's output name lists the fused TF ops separated by ';' ("m_1/conv1_relu_1/Relu6;
    m_1/conv1_1/convolution"): the layer is taken from the part naming the op's main computation
    (convolution, depthwise, MatMul, ...), else the first part; its scope is the path component
    before the op name. Keras' SavedModel export adds a "_N" suffix to every name scope
    ("conv1" -> "conv1_1"); one such suffix is removed.
    """
    parts = [part for part in tensor_name.split(";") if part.count("/") >= 2]
    if not parts:
        return ""
    chosen = next((part for compute in _COMPUTE_NAMES for part in parts
                   if part.rsplit("/", 1)[1].startswith(compute)), parts[0])
    scope = chosen.rsplit("/", 1)[0].split("/")[-1]
    return _SCOPE_SUFFIX.sub("", scope)


def _name(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def _has_data(buffer) -> bool:
    return buffer is not None and buffer.data is not None and len(buffer.data) > 0


def op_count(model_content: bytes) -> int:
    return len(tflite_model.parse_tflite(model_content).subgraphs[0].operators)


def slice_op(model, op_index: int) -> bytes:
    """A one-op .tflite model holding operator `op_index` of subgraph 0 of `model` (a schema ModelT).

    Constant inputs (tensors whose buffer holds data) keep their data; every other input becomes an
    input of the sliced model; the op's outputs are its outputs.

    Raises:
      ValueError: for ops that call other subgraphs (WHILE, IF, ...).
    """
    from tensorflow.lite.python import schema_py_generated as schema_fb
    from tensorflow.lite.tools import flatbuffer_utils

    subgraph = model.subgraphs[0]
    operator = subgraph.operators[op_index]
    op_type = flatbuffer_utils.opcode_to_name(model, operator.opcodeIndex)
    if op_type in _SUBGRAPH_OPS:
        raise ValueError(f"op {op_index} ({op_type}) calls other subgraphs and cannot be sliced")
    sliced = schema_fb.ModelT()
    sliced.version = model.version
    sliced.description = f"op {op_index} {op_type}".encode()
    sliced.operatorCodes = [copy.deepcopy(model.operatorCodes[operator.opcodeIndex])]
    sliced.buffers = [schema_fb.BufferT()]  # buffer 0 is the empty sentinel
    new_subgraph = schema_fb.SubGraphT()
    new_subgraph.tensors, new_subgraph.inputs, new_subgraph.outputs = [], [], []
    new_subgraph.name = subgraph.name
    mapping: dict[int, int] = {}
    outputs = [int(index) for index in operator.outputs if index >= 0]

    def add_tensor(index: int, is_input: bool) -> int:
        if index < 0:
            return -1
        if index in mapping:
            return mapping[index]
        tensor = copy.copy(subgraph.tensors[index])
        buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
        if is_input and _has_data(buffer) and index not in outputs:
            sliced.buffers.append(copy.copy(buffer))
            tensor.buffer = len(sliced.buffers) - 1
        else:
            tensor.buffer = 0
            if is_input and not tensor.isVariable:
                new_subgraph.inputs.append(len(new_subgraph.tensors))
        mapping[index] = len(new_subgraph.tensors)
        new_subgraph.tensors.append(tensor)
        return mapping[index]

    new_operator = copy.copy(operator)
    new_operator.opcodeIndex = 0
    new_operator.inputs = [add_tensor(int(index), True) for index in operator.inputs]
    new_operator.outputs = [add_tensor(int(index), False) for index in operator.outputs]
    if operator.intermediates is not None and len(operator.intermediates):
        new_operator.intermediates = [add_tensor(int(index), False) for index in operator.intermediates]
    new_subgraph.outputs = [mapping[index] for index in outputs]
    new_subgraph.operators = [new_operator]
    sliced.subgraphs = [new_subgraph]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(sliced))


def trivial_model() -> bytes:
    """A one-op model doing (almost) nothing: ADD of two [1] float32 tensors.

    Its latency is the fixed cost of one interpreter call (Python binding, delegate dispatch), which
    every single-op slice pays once but the whole model pays only once in total.
    """
    from tensorflow.lite.python import schema_py_generated as schema_fb
    from tensorflow.lite.tools import flatbuffer_utils

    model = schema_fb.ModelT()
    model.version = 3
    code = schema_fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema_fb.BuiltinOperator.ADD
    code.version = 1
    model.operatorCodes = [code]
    model.buffers = [schema_fb.BufferT() for _ in range(4)]
    subgraph = schema_fb.SubGraphT()
    subgraph.tensors = []
    for index, name in enumerate((b"a", b"b", b"sum")):
        tensor = schema_fb.TensorT()
        tensor.shape, tensor.type, tensor.buffer, tensor.name = [1], schema_fb.TensorType.FLOAT32, index + 1, name
        subgraph.tensors.append(tensor)
    operator = schema_fb.OperatorT()
    operator.opcodeIndex, operator.inputs, operator.outputs = 0, [0, 1], [2]
    operator.builtinOptionsType = schema_fb.BuiltinOptions.AddOptions
    operator.builtinOptions = schema_fb.AddOptionsT()
    subgraph.operators, subgraph.inputs, subgraph.outputs = [operator], [0, 1], [2]
    model.subgraphs = [subgraph]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def profile_ops(model_content: bytes, num_threads: int = 1, warmup: int = 5, runs: int = 50,
                clock: latency.Clock = time.perf_counter, name: str = "<bytes>") -> OpProfile:
    """Times every op of subgraph 0 as a single-op model, and the whole model with the same code.

    Args:
      model_content: the .tflite bytes.
      num_threads: interpreter threads for the whole model and every slice.
      warmup, runs: per model (whole and each slice); the median of `runs` is kept.
      clock: seconds clock (time.perf_counter).
      name: file name for error messages.

    Returns:
      OpProfile with one OpRow per op, in execution order (ops not timed have ms = 0 and a note).
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = tflite_model.parse_tflite(model_content, name)
    subgraph = model.subgraphs[0]
    whole_before = latency.interpreter_latency(model_content, num_threads, warmup, runs, clock, name)
    overhead = latency.interpreter_latency(trivial_model(), num_threads, warmup, max(runs, 100), clock, "trivial model")
    timings = []
    for op_index, operator in enumerate(subgraph.operators):
        op_type = flatbuffer_utils.opcode_to_name(model, operator.opcodeIndex)
        output = subgraph.tensors[operator.outputs[0]]
        ms, note = 0.0, ""
        constant_inputs = [index >= 0 and _has_data(model.buffers[subgraph.tensors[index].buffer])
                           for index in operator.inputs if index >= 0]
        if constant_inputs and all(constant_inputs):
            note = "constant"
        else:
            try:
                sliced = slice_op(model, op_index)
                raw = latency.interpreter_latency(sliced, num_threads, warmup, runs, clock, f"{name} op {op_index}")
                ms = max(raw.median - overhead.median, 0.0)
            except (ValueError, RuntimeError) as error:
                note = f"not timed: {str(error).splitlines()[0][:80]}"
        timings.append((op_index, op_type, tuple(int(side) for side in output.shape),
                        flatbuffer_utils.type_to_name(output.type), layer_of(_name(output.name)), ms, note))
    whole_after = latency.interpreter_latency(model_content, num_threads, warmup, runs, clock, name)
    total = sum(timing[5] for timing in timings) or 1.0
    rows = tuple(OpRow(*timing[:6], share=timing[5] / total, note=timing[6]) for timing in timings)
    # The whole model is timed before and after the slices; the lower median is the less disturbed one.
    return OpProfile(rows, min(whole_before.median, whole_after.median), num_threads, overhead.median)


def format_table(profile: OpProfile, by_layer: bool = True) -> str:
    """The per-op table (and the per-layer one) as Markdown, with the sum next to the whole model."""
    lines = ["| op | type | output shape | layer | ms | share |", "| ---: | --- | --- | --- | ---: | ---: |"]
    for row in profile.rows:
        shape = "x".join(str(side) for side in row.output_shape)
        ms = f"{row.ms:.4f}" if not row.note else f"- ({row.note})"
        lines.append(f"| {row.index} | {row.op_type} | {shape} {row.output_dtype} | {row.layer} | "
                     f"{ms} | {100 * row.share:.1f}% |")
    lines.append(f"\nsum of ops {profile.sum_ms:.3f} ms (incl. one call overhead {profile.call_overhead_ms:.4f} ms) "
                 f"vs whole model {profile.whole_model_ms:.3f} ms (ratio {profile.sum_ratio:.3f}, "
                 f"{profile.num_threads} thread(s))")
    if by_layer:
        lines += ["", "| layer | ops | ms | share |", "| --- | --- | ---: | ---: |"]
        for layer, ms, share, op_types in profile.by_layer():
            lines.append(f"| {layer} | {', '.join(op_types)} | {ms:.4f} | {100 * share:.1f}% |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    """`python -m distillery.op_profile MODEL.tflite [--runs=N] [--num_threads=N]`."""
    options = dict(arg[2:].split("=", 1) for arg in argv[1:] if arg.startswith("--") and "=" in arg)
    for path in [arg for arg in argv[1:] if not arg.startswith("--")]:
        profile = profile_ops(tflite_model.read_tflite(path), int(options.get("num_threads", 1)),
                              runs=int(options.get("runs", 50)), name=path)
        print(f"## {path}\n\n{format_table(profile)}\n")


if __name__ == "__main__":
    main(sys.argv)
