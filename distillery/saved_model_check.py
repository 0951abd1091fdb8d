"""Refusing a SavedModel whose graph could do more than classify images, before TensorFlow loads it.

A SavedModel is a program, not data: loading and calling it runs whatever ops its graph holds, and
TensorFlow has ops that read and write files (ReadFile, WriteFile), list directories (MatchingFiles),
run Python (PyFunc, EagerPyFunc) or memory-map files (ImmutableConst). `check_saved_model` reads
saved_model.pb with TensorFlow's own parser (the proto the loader will use), walks every node of every
MetaGraphDef's graph and of every function in its function library, and refuses the model unless each op
is on an allow-list built from what the project's exported students and Keras teachers contain
(tests/test_saved_model_check.py exports them and checks that they pass). Anything else is refused,
naming the op, the function it is in and the file; commands load such a model only with
--trust_saved_model.

The saver: every SavedModel also carries a save function (SaveV2, MergeV2Checkpoints, ShardedFilename,
StringJoin, ...) and a restore function (RestoreV2). Their ops are allowed only inside the functions the
MetaGraphDef's saver_def names (and what those call), and only when no other node or function of the graph
calls them, so a serving function cannot borrow them. That is safe because TensorFlow 2's loader restores
variables itself, in Python, and never runs the stored save function; the stored restore function runs
only for a TensorFlow 1 model (no object graph) and RestoreV2 reads TensorFlow checkpoint files only. A
top-level SaveV2/RestoreV2 node (a TensorFlow 1 graph's saver) is refused: such models need trust.

    python -m distillery.saved_model_check runs/demo/student/saved_model
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator

# Ops of a feed-forward image classifier as Keras exports it (convolutions, dense layers, normalization,
# activations, pooling, shape arithmetic and the resource-variable and call plumbing around them).
CLASSIFIER_OPS = frozenset({
    "Abs", "Add", "AddN", "AddV2", "ArgMax", "AssignVariableOp", "AvgPool", "BatchMatMulV2", "BiasAdd", "Cast",
    "ClipByValue", "ConcatV2", "Const", "Conv2D", "DepthwiseConv2dNative", "Einsum", "Elu", "Equal", "Erf", "Exp",
    "ExpandDims", "Fill", "Floor", "FloorDiv", "FusedBatchNorm", "FusedBatchNormV3", "GatherV2", "Greater",
    "GreaterEqual", "Identity", "IdentityN", "LeakyRelu", "Less", "LessEqual", "Log", "LogSoftmax", "LogicalAnd",
    "LogicalNot", "LogicalOr", "MatMul", "Max", "MaxPool", "Maximum", "Mean", "Min", "Minimum", "MirrorPad", "Mul",
    "Neg", "NoOp", "Pack", "Pad", "PadV2", "PartitionedCall", "Placeholder", "Pow", "Prod", "Range", "ReadVariableOp",
    "RealDiv", "Reciprocal", "Relu", "Relu6", "Reshape", "ResizeBilinear", "ResizeNearestNeighbor", "Round", "Rsqrt",
    "ScaleAndTranslate", "Select", "SelectV2", "Selu", "Shape", "Sigmoid", "Slice", "Softmax", "Softplus", "Softsign",
    "Split", "SplitV", "Sqrt", "Square", "SquaredDifference", "Squeeze", "StatefulPartitionedCall", "StopGradient",
    "StridedSlice", "Sub", "Sum", "Tanh", "Tile", "Transpose", "Unpack", "VarHandleOp", "VarIsInitializedOp",
    "ZerosLike",
})
# Allowed on top of CLASSIFIER_OPS only inside the saver_def's save function (and what it calls).
SAVE_OPS = frozenset({"SaveV2", "MergeV2Checkpoints", "ShardedFilename", "StringJoin", "StaticRegexFullMatch",
                      "DisableCopyOnRead"})
# Allowed on top of CLASSIFIER_OPS only inside the saver_def's restore function (and what it calls).
RESTORE_OPS = frozenset({"RestoreV2"})
# Why some refused ops are refused, for the message (any op off the allow-list is refused all the same).
_WHAT_IT_DOES = {
    "ReadFile": "reads a file", "WriteFile": "writes a file", "MatchingFiles": "lists files",
    "PyFunc": "runs Python", "PyFuncStateless": "runs Python", "EagerPyFunc": "runs Python",
    "ImmutableConst": "memory-maps a file", "SaveV2": "writes files", "Save": "writes files",
    "SaveSlices": "writes files", "RestoreV2": "reads files", "Restore": "reads files",
    "RestoreSlice": "reads files", "MergeV2Checkpoints": "moves and deletes files",
    "InitializeTableFromTextFile": "reads a file", "InitializeTableFromTextFileV2": "reads a file",
    "FixedLengthRecordReaderV2": "reads files", "TFRecordReaderV2": "reads files", "TextLineReaderV2": "reads files",
    "WholeFileReaderV2": "reads files",
}
TRUST_FLAG = "--trust_saved_model"
# The help of that flag, one text for every command that has it (distillery-extract, -train, -quantize).
TRUST_HELP = ("Load a SavedModel without checking that its graph holds only classifier ops (one that reads or "
              "writes files, runs Python or does anything else is refused otherwise); only for a model from a "
              "source you trust.")


class UntrustedSavedModelError(ValueError):
    """A SavedModel whose graph holds an op outside the allow-list; the message names the op and the file."""


def _called_functions(attr_values: Iterable) -> Iterator[str]:
    """Names of the functions a node's attributes refer to (f=, then_branch=, body=, lists of them)."""
    for value in attr_values:
        if value.func.name:
            yield value.func.name
        for function in value.list.func:
            yield function.name


def _closure(roots: Iterable[str], functions: dict) -> set[str]:
    """The functions in `roots` and every function they call, transitively."""
    seen, stack = set(), list(roots)
    while stack:
        name = stack.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        for node in functions[name].node_def:
            stack.extend(_called_functions(node.attr.values()))
    return seen


def refused_ops(meta_graph) -> list[tuple[str, str]]:
    """(op, where) for every node of one MetaGraphDef that the allow-lists refuse; empty when it passes."""
    graph = meta_graph.graph_def
    functions = {function.signature.name: function for function in graph.library.function}
    saver = meta_graph.saver_def
    saver_nodes = {name.split(":")[0] for name in (saver.save_tensor_name, saver.restore_op_name) if name}
    nodes = {node.name: node for node in graph.node}

    def called_by(node_names: Iterable[str]) -> set[str]:
        return _closure((name for node_name in node_names if node_name in nodes
                         for name in _called_functions(nodes[node_name].attr.values())), functions)

    save_functions = called_by([saver.save_tensor_name.split(":")[0]] if saver.save_tensor_name else [])
    restore_functions = called_by([saver.restore_op_name] if saver.restore_op_name else [])
    # What serving can reach: every other node, the nodes the signatures read, the object graph's functions.
    signature_nodes = {tensor.name.split(":")[0] for signature in meta_graph.signature_def.values()
                       for tensors in (signature.inputs, signature.outputs) for tensor in tensors.values()}
    other_nodes = [node for node in graph.node if node.name not in saver_nodes or node.name in signature_nodes]
    other_roots = list(_called_functions(value for node in other_nodes for value in node.attr.values()))
    other_roots += list(meta_graph.object_graph_def.concrete_functions)
    everything_else = _closure(other_roots, functions)
    refused = [(node.op, "the graph") for node in graph.node if node.op not in CLASSIFIER_OPS]
    shared = (save_functions | restore_functions) & everything_else
    for name, function in functions.items():
        allowed = CLASSIFIER_OPS
        if name not in shared:
            if name in save_functions:
                allowed = allowed | SAVE_OPS
            if name in restore_functions:
                allowed = allowed | RESTORE_OPS
        refused += [(node.op, f"function {name}") for node in function.node_def if node.op not in allowed]
    return refused


def check_saved_model(path: str) -> None:
    """Raises UntrustedSavedModelError unless every op of the SavedModel in directory `path` is allowed.

    Reads only saved_model.pb (or .pbtxt), never the variables, and runs nothing.

    Raises:
      UntrustedSavedModelError: naming the refused op(s), where they are, and the file.
      OSError: the file is missing or does not parse (TensorFlow's message names it).
    """
    from tensorflow.python.saved_model import loader_impl  # pylint: disable=import-outside-toplevel

    saved_model = loader_impl.parse_saved_model(path)
    refused: dict[str, list[str]] = {}
    for meta_graph in saved_model.meta_graphs:
        for op, where in refused_ops(meta_graph):
            places = refused.setdefault(op, [])
            if where not in places:
                places.append(where)
    if refused:
        listed = "; ".join(f"{op}{' (' + _WHAT_IT_DOES[op] + ')' if op in _WHAT_IT_DOES else ''} in "
                           f"{', '.join(places[:3])}{' and more' if len(places) > 3 else ''}"
                           for op, places in sorted(refused.items()))
        raise UntrustedSavedModelError(
            f"{os.path.join(path, 'saved_model.pb')}: refusing to load this SavedModel: its graph has ops a "
            f"classifier does not need: {listed}. Load it only if you trust where it came from ({TRUST_FLAG}).")


def main(argv: list[str]) -> None:
    """`python -m distillery.saved_model_check DIR...`: prints each verdict; exit status 1 if any is refused."""
    status = 0
    for path in argv[1:]:
        try:
            check_saved_model(path)
            print(f"{path}: every op is allowed")
        except (UntrustedSavedModelError, OSError) as error:
            print(error)
            status = 1
    sys.exit(status)


if __name__ == "__main__":
    main(sys.argv)
