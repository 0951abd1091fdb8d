"""Rank selection for SVD factorization: by energy, by rank ratio, or by a global latency budget.

- `--energy=F`: per layer, the smallest rank r whose singular values keep a fraction F of the squared
  singular values (sum_{i<=r} s_i^2 >= F * sum_i s_i^2). The relative Frobenius error is then
  sqrt(1 - kept energy) <= sqrt(1 - F).
- `--rank_ratio=F`: per layer r = max(1, round(F * min(Cin, Cout))).
- `--target_latency_ms=MS`: a greedy global budget. Each layer's measured milliseconds come from the
  per-op profile of the unfactorized int8 TFLite student (benchmark/op_profile; the job scales the
  single-op times so that they add up to the whole model's latency). Factorizing a layer at
  rank r is estimated to save ms_layer * (1 - r(Cin + Cout)/(Cin*Cout)) - op_overhead_ms: the layer's
  time scaled by its MAC ratio, less the fixed cost of the one extra op the factorization adds. Small
  layers are dominated by that fixed cost (on the demo's ~0.05 ms student, 1-2 us per added op, measured
  on two selections; factorizing its layers of < 64 channels makes the model slower), which MACs do not
  show; the factorize job measures it (`calibrated_overhead_ms`): it selects, builds and times the
  factorized int8 model, and reselects with the overhead its miss implies. Candidates are the ranks at
  `ENERGY_GRID` per layer that are estimated to save time; each greedy step takes the move (one layer one
  grid step lower) with the most estimated ms saved per unit of added relative reconstruction error,
  until the estimated latency meets the budget. A budget below what every layer at its lowest grid rank
  reaches is refused before any fine-tuning.

In all three, a layer whose chosen rank does not save compute (r(Cin + Cout) >= Cin*Cout) is left as is.

    python -c "import numpy as np; from compress import rank_selection as r; \
print(r.rank_for_energy(np.array([4., 2., 1.]), 0.9))"
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import keras
import numpy as np

from compress import factorize

# Energy levels whose ranks are the latency-budget candidates of every layer, highest first.
# Tried on the demo student: extending the grid to 0.4 and 0.3 made the greedy take ranks of ~1/10 on
# five layers (for an 18% budget: measured 4% faster and -4.2 points after fine-tuning).
ENERGY_GRID = (0.999, 0.995, 0.99, 0.98, 0.97, 0.95, 0.92, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)


class BudgetError(ValueError):
    """A latency budget that no allowed factorization reaches."""


def rank_for_energy(values: np.ndarray, energy: float) -> int:
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2), for descending singular values.

    Raises:
      ValueError: when energy is not in (0, 1].
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"--energy must be in (0, 1], got {energy}")
    squares = np.asarray(values, np.float64) ** 2
    total = squares.sum()
    if total <= 0:
        return 1
    kept = np.cumsum(squares) / total
    # A relative tolerance so energy=1.0 gives the numerical rank, not r+1 past the end.
    return int(min(len(squares), np.searchsorted(kept, energy - 1e-12) + 1))


def rank_for_ratio(layer: factorize.FactorizableLayer, ratio: float) -> int:
    """max(1, round(ratio * min(Cin, Cout))).

    Raises:
      ValueError: when ratio is not in (0, 1].
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"--rank_ratio must be in (0, 1], got {ratio}")
    return max(1, int(round(ratio * layer.full_rank)))


@dataclasses.dataclass
class Selection:
    """The ranks to apply, and the layers left alone with the reason."""

    ranks: dict[str, int]
    skipped: dict[str, str]
    estimated_ms_saved: dict[str, float] = dataclasses.field(default_factory=dict)
    model_ms: float | None = None
    target_ms: float | None = None
    op_overhead_ms: float = 0.0

    @property
    def estimated_ms(self) -> float | None:
        if self.model_ms is None:
            return None
        return self.model_ms - sum(self.estimated_ms_saved.values())


def _kernel(model: keras.Model, name: str) -> np.ndarray:
    return model.get_layer(name).kernel.numpy()


def _only_saving(layers: Sequence[factorize.FactorizableLayer], wanted: Mapping[str, int]) -> Selection:
    ranks, skipped = {}, {}
    for layer in layers:
        rank = wanted[layer.name]
        if layer.saves(rank):
            ranks[layer.name] = rank
        else:
            skipped[layer.name] = (f"rank {rank} of {layer.full_rank} saves nothing "
                                   f"(r(Cin+Cout) = {rank * (layer.input_channels + layer.output_channels)} "
                                   f">= Cin*Cout = {layer.input_channels * layer.output_channels})")
    return Selection(ranks, skipped)


def select_by_energy(model: keras.Model, layers: Sequence[factorize.FactorizableLayer], energy: float) -> Selection:
    """Per-layer ranks keeping `energy` of the squared singular values (layers that save compute)."""
    wanted = {layer.name: rank_for_energy(factorize.singular_values(_kernel(model, layer.name)), energy)
              for layer in layers}
    return _only_saving(layers, wanted)


def select_by_ratio(layers: Sequence[factorize.FactorizableLayer], ratio: float) -> Selection:
    """Per-layer ranks round(ratio * min(Cin, Cout)) (layers that save compute)."""
    return _only_saving(layers, {layer.name: rank_for_ratio(layer, ratio) for layer in layers})


def estimated_saving_ms(layer: factorize.FactorizableLayer, layer_ms: float, rank: int,
                        op_overhead_ms: float = 0.0) -> float:
    """ms_layer * (1 - r(Cin + Cout)/(Cin*Cout)) - op_overhead_ms: the layer's time scaled by its MAC
    ratio, less the fixed cost of the second op (an estimate; negative when splitting costs time)."""
    return layer_ms * (1.0 - rank * (layer.input_channels + layer.output_channels)
                       / (layer.input_channels * layer.output_channels)) - op_overhead_ms


def calibrated_overhead_ms(selection: Selection, measured_ms: float) -> float:
    """The per-op overhead that makes `selection`'s estimate match the measured latency of its model:
    its own overhead plus its miss spread over the ops it added (never below 0)."""
    if not selection.ranks or selection.estimated_ms is None:
        return selection.op_overhead_ms
    return max(0.0, selection.op_overhead_ms + (measured_ms - selection.estimated_ms) / len(selection.ranks))


def candidate_ranks(layer: factorize.FactorizableLayer, values: np.ndarray,
                    energy_grid: Sequence[float] = ENERGY_GRID) -> list[int]:
    """The distinct ranks of the energy grid that save compute, highest rank first."""
    ranks = {rank_for_energy(values, energy) for energy in energy_grid}
    return sorted((rank for rank in ranks if layer.saves(rank)), reverse=True)


def select_for_latency(model: keras.Model, layers: Sequence[factorize.FactorizableLayer],
                       layer_ms: Mapping[str, float], model_ms: float, target_ms: float,
                       energy_grid: Sequence[float] = ENERGY_GRID, op_overhead_ms: float = 0.0) -> Selection:
    """Greedy global selection under a latency budget (module docstring).

    Args:
      model: the unfactorized model (its kernels give the singular values).
      layers: the candidate layers.
      layer_ms: measured milliseconds of each layer's op in the int8 TFLite model; layers without an
        entry are not candidates.
      model_ms: measured latency of the whole unfactorized model.
      target_ms: the budget.
      energy_grid: the energy levels whose ranks are the candidates.
      op_overhead_ms: fixed cost of the op a factorization adds (see `calibrated_overhead_ms`).

    Returns:
      The selection, with the estimated ms saved per layer.

    Raises:
      BudgetError: when even every layer at its lowest candidate rank is estimated above `target_ms`.
    """
    if target_ms <= 0:
        raise ValueError(f"--target_latency_ms must be positive, got {target_ms}")
    skipped: dict[str, str] = {}
    options: dict[str, list[tuple[int, float, float]]] = {}  # name -> [(rank, ms saved, relative error)]
    by_name = {layer.name: layer for layer in layers}
    for layer in layers:
        if layer.name not in layer_ms:
            skipped[layer.name] = "no op of the per-op profile maps to this layer"
            continue
        values = factorize.singular_values(_kernel(model, layer.name))
        ranks = candidate_ranks(layer, values, energy_grid)
        if not ranks:
            skipped[layer.name] = "no candidate rank saves compute"
            continue
        choices = [(rank, estimated_saving_ms(layer, layer_ms[layer.name], rank, op_overhead_ms),
                    factorize.relative_error(values, rank)) for rank in ranks]
        choices = [choice for choice in choices if choice[1] > 0]  # a suffix: savings grow as rank falls
        if not choices:
            skipped[layer.name] = (f"no candidate rank saves time: {layer_ms[layer.name]:.4f} ms, and the extra "
                                   f"op is estimated at {op_overhead_ms:.4f} ms")
            continue
        options[layer.name] = choices
    best_possible = model_ms - sum(choices[-1][1] for choices in options.values())
    if best_possible > target_ms:
        raise BudgetError(
            f"--target_latency_ms={target_ms:g} cannot be met: the model takes {model_ms:.3f} ms and "
            f"factorizing every 1x1 layer at its lowest candidate rank (energy {min(energy_grid):g}) is "
            f"estimated to reach {best_possible:.3f} ms")
    position = {name: -1 for name in options}  # index into options[name]; -1 = not factorized
    estimated = model_ms
    while estimated > target_ms:
        best_name, best_score = None, -np.inf
        for name, choices in options.items():
            current = position[name]
            if current + 1 >= len(choices):
                continue
            saved_now, error_now = (choices[current][1], choices[current][2]) if current >= 0 else (0.0, 0.0)
            _, saved_next, error_next = choices[current + 1]
            gain = saved_next - saved_now
            if gain <= 0:
                continue
            score = gain / max(error_next - error_now, 1e-9)
            if score > best_score:
                best_name, best_score = name, score
        if best_name is None:  # cannot happen after the feasibility check, kept as a guard
            raise BudgetError(f"--target_latency_ms={target_ms:g} cannot be met (estimate {estimated:.3f} ms)")
        choices = options[best_name]
        before = choices[position[best_name]][1] if position[best_name] >= 0 else 0.0
        position[best_name] += 1
        estimated -= choices[position[best_name]][1] - before
    ranks = {name: options[name][index][0] for name, index in position.items() if index >= 0}
    saved = {name: options[name][index][1] for name, index in position.items() if index >= 0}
    for name in by_name:
        if name not in ranks and name not in skipped:
            skipped[name] = "not needed to meet the budget"
    return Selection(ranks, skipped, saved, model_ms, target_ms, op_overhead_ms)


# TFLite op types a 1x1 convolution or a dense layer converts to.
_MATRIX_OPS = ("CONV_2D", "FULLY_CONNECTED")
# The part of a converted tensor name that comes from the layer's own matrix product (not a fused BN/ReLU).
_PRODUCT_SUFFIXES = ("convolution", "MatMul", "BiasAdd", "Squeeze", "Tensordot")


def _scope_layer(name_part: str) -> tuple[str, str]:
    """("layer_scope", "op") of one ';' part "model_1/layer_1/op..." ("", "") when it has no scope."""
    components = name_part.split("/")
    if len(components) < 3:
        return "", ""
    return components[1], components[2]


def _matches(scope: str, layer_name: str) -> bool:
    # Keras 3 uniquifies name scopes during tracing: layer "pw1" becomes scope "pw1_1".
    return scope == layer_name or re.fullmatch(re.escape(layer_name) + r"_\d+", scope) is not None


def map_ops_to_layers(model_content: bytes, layers: Sequence[factorize.FactorizableLayer]) -> dict[int, str]:
    """{op index: layer name} for the CONV_2D / FULLY_CONNECTED ops of a .tflite model of the same Keras model.

    An op belongs to a layer when one part of its fused output tensor name is "<model>/<layer>[_n]/convolution"
    (or MatMul, BiasAdd ...). Ops whose names lost the scope (the model's last op is often renamed
    "StatefulPartitionedCall:0") are matched by their weight shape ([Cout, 1, 1, Cin] or [Cout, Cin]) and
    output positions when exactly one remaining layer has that shape.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    from distillery import tflite_model

    model = tflite_model.parse_tflite(model_content)
    subgraph = model.subgraphs[0]
    found: dict[int, str] = {}
    unnamed: list[tuple[int, tuple[int, ...], int]] = []
    for op_index, operator in enumerate(subgraph.operators):
        op_type = flatbuffer_utils.opcode_to_name(model, operator.opcodeIndex)
        if op_type not in _MATRIX_OPS:
            continue
        output = subgraph.tensors[operator.outputs[0]]
        name = output.name.decode("utf-8", "replace") if isinstance(output.name, bytes) else str(output.name)
        owner = None
        for part in name.split(";"):
            scope, op_name = _scope_layer(part)
            if not scope or not op_name.startswith(_PRODUCT_SUFFIXES):
                continue
            exact = [layer.name for layer in layers if layer.name == scope]
            owner = exact[0] if exact else next((layer.name for layer in layers if _matches(scope, layer.name)), None)
            if owner:
                break
        if owner:
            found[op_index] = owner
            continue
        weight_shape = tuple(int(side) for side in subgraph.tensors[operator.inputs[1]].shape)
        output_shape = tuple(int(side) for side in output.shape)
        unnamed.append((op_index, weight_shape, int(np.prod(output_shape[1:-1])) if len(output_shape) > 2 else 1))
    remaining = [layer for layer in layers if layer.name not in found.values()]
    for op_index, weight_shape, positions in unnamed:
        fits = [layer for layer in remaining
                if weight_shape in ((layer.output_channels, 1, 1, layer.input_channels),
                                    (layer.output_channels, layer.input_channels))
                and layer.positions == positions]
        if len(fits) == 1:
            found[op_index] = fits[0].name
            remaining.remove(fits[0])
    return found


def layer_milliseconds(model_content: bytes, op_milliseconds: Sequence[float],
                       layers: Sequence[factorize.FactorizableLayer]) -> dict[str, float]:
    """{layer name: ms} from a per-op profile (ms per op index, e.g. `[row.ms for row in profile.rows]`)."""
    milliseconds: dict[str, float] = {}
    for op_index, name in map_ops_to_layers(model_content, layers).items():
        milliseconds[name] = milliseconds.get(name, 0.0) + float(op_milliseconds[op_index])
    return milliseconds
