"""SVD factorization of 1x1 convolutions and dense layers, and the Keras model surgery that applies it.

In a MobileNet the 1x1 (pointwise) convolutions carry over 90% of the multiply-adds. A 1x1 convolution
with kernel W (Cin x Cout) is a matrix product at every pixel, so the truncated SVD W ~ U_r S_r V_r^T
(Eckart-Young: the best rank-r approximation in Frobenius norm) turns it into two 1x1 convolutions,
Cin -> r and r -> Cout, with nothing in between. The multiply-adds per pixel drop from Cin*Cout to
r*(Cin + Cout), so a layer is only worth factorizing when r*(Cin + Cout) < Cin*Cout. The original bias
and activation move to the second convolution, and whatever followed the layer (batch norm, ReLU)
stays where it was. A `Dense` layer (the classifier) is the same matrix and splits into two `Dense`.

The split is balanced: first = U_r sqrt(S_r), second = sqrt(S_r) V_r^T. With the usual split
(U_r S_r, V_r^T) channel i of the r-channel intermediate activation scales with s_i, so under int8's
single per-tensor activation scale the weakest kept directions get s_r/s_1 of the levels of the strongest;
balanced, the ratio is sqrt(s_r/s_1), and both factors' weights span similar ranges, so per-channel
weight quantization loses about the same precision on either side.

The rebuilt model holds only stock Keras layers (two `Conv2D` named `{name}_svd_a` without bias and
`{name}_svd_b` with the original bias), so it saves as `.keras` under safe_mode and converts to TFLite.

    python -c "import keras; from compress import factorize; \
m = keras.saving.load_model('runs/demo/student.keras'); \
print([l.name for l in factorize.find_factorizable_layers(m)])"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import keras
import numpy as np

FIRST_SUFFIX = "_svd_a"
SECOND_SUFFIX = "_svd_b"


class FactorizationError(ValueError):
    """A model or a rank request that cannot be factorized; the message names the layer."""


@dataclasses.dataclass(frozen=True)
class FactorizableLayer:
    """A 1x1 convolution or dense layer that SVD can split.

    Attributes:
      name: the Keras layer name.
      kind: "conv1x1" or "dense".
      input_channels: Cin.
      output_channels: Cout.
      positions: output positions per example at which the matrix is applied (H*W of the output for a
        convolution, 1 for a dense layer on vectors).
      use_bias: whether the layer has a bias (kept on the second factor).
    """

    name: str
    kind: str
    input_channels: int
    output_channels: int
    positions: int
    use_bias: bool

    @property
    def full_rank(self) -> int:
        return min(self.input_channels, self.output_channels)

    def saves(self, rank: int) -> bool:
        """True when rank r costs fewer multiply-adds than the layer: r(Cin + Cout) < Cin*Cout."""
        return rank * (self.input_channels + self.output_channels) < self.input_channels * self.output_channels

    @property
    def max_saving_rank(self) -> int:
        """The largest rank that still saves compute (0 when none does)."""
        return (self.input_channels * self.output_channels - 1) // (self.input_channels + self.output_channels)

    def params(self, rank: int | None = None) -> int:
        """Weights (kernel + bias) of the layer, or of its two factors at `rank`."""
        bias = self.output_channels if self.use_bias else 0
        if rank is None:
            return self.input_channels * self.output_channels + bias
        return rank * (self.input_channels + self.output_channels) + bias

    def macs(self, rank: int | None = None) -> int:
        """Multiply-accumulates per example of the layer, or of its two factors at `rank`."""
        per_position = (self.input_channels * self.output_channels if rank is None
                        else rank * (self.input_channels + self.output_channels))
        return self.positions * per_position


@dataclasses.dataclass(frozen=True)
class Factors:
    """W (Cin x Cout) ~ first @ second, first = U_r sqrt(S_r) [Cin, r], second = sqrt(S_r) V_r^T [r, Cout]."""

    first: np.ndarray
    second: np.ndarray
    singular_values: np.ndarray  # all of them, descending

    @property
    def rank(self) -> int:
        return int(self.first.shape[1])


def singular_values(kernel: np.ndarray) -> np.ndarray:
    """Descending singular values of a [Cin, Cout] (or [1, 1, Cin, Cout]) kernel, float64."""
    return np.linalg.svd(_as_matrix(kernel).astype(np.float64), compute_uv=False)


def svd_factors(kernel: np.ndarray, rank: int) -> Factors:
    """Balanced rank-r factors of a [Cin, Cout] (or [1, 1, Cin, Cout]) kernel (module docstring).

    Raises:
      ValueError: when rank is not in 1..min(Cin, Cout).
    """
    matrix = _as_matrix(kernel).astype(np.float64)
    full_rank = min(matrix.shape)
    if not 1 <= rank <= full_rank:
        raise ValueError(f"rank must be in 1..{full_rank} for a {matrix.shape[0]}x{matrix.shape[1]} kernel, got {rank}")
    left, values, right_transposed = np.linalg.svd(matrix, full_matrices=False)
    root = np.sqrt(values[:rank])
    first = left[:, :rank] * root[None, :]
    second = root[:, None] * right_transposed[:rank, :]
    return Factors(first.astype(np.float32), second.astype(np.float32), values)


def relative_error(values: np.ndarray, rank: int) -> float:
    """||W - W_r||_F / ||W||_F = sqrt(sum of discarded s_i^2 / sum of all s_i^2) (Eckart-Young)."""
    squares = np.asarray(values, np.float64) ** 2
    total = squares.sum()
    return float(np.sqrt(squares[rank:].sum() / total)) if total > 0 else 0.0


def _as_matrix(kernel: np.ndarray) -> np.ndarray:
    kernel = np.asarray(kernel)
    if kernel.ndim == 4:
        if kernel.shape[:2] != (1, 1):
            raise ValueError(f"not a 1x1 kernel: shape {kernel.shape}")
        return kernel[0, 0]
    if kernel.ndim != 2:
        raise ValueError(f"kernel must be [Cin, Cout] or [1, 1, Cin, Cout], got shape {kernel.shape}")
    return kernel


def is_factor_layer(name: str) -> bool:
    """True for the layers this module creates (they are never offered for factorization again)."""
    return name.endswith(FIRST_SUFFIX) or name.endswith(SECOND_SUFFIX)


def _describe(layer: keras.layers.Layer) -> FactorizableLayer | None:
    """The FactorizableLayer of a stock 1x1 Conv2D (groups 1, dilation 1) or Dense layer, else None."""
    if is_factor_layer(layer.name) or getattr(layer, "quantization_mode", None):
        return None
    if type(layer) is keras.layers.Conv2D:  # not subclasses: Depthwise/Separable are other classes anyway
        if (tuple(layer.kernel_size) != (1, 1) or layer.groups != 1 or tuple(layer.dilation_rate) != (1, 1)
                or layer.data_format != "channels_last"):
            return None
        kind = "conv1x1"
    elif type(layer) is keras.layers.Dense:
        if getattr(layer, "lora_rank", None):
            return None
        kind = "dense"
    else:
        return None
    try:
        output_shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):  # shared layer (several call sites) or never called
        return None
    if any(size is None for size in output_shape[1:-1]):
        return None
    positions = int(np.prod(output_shape[1:-1])) if len(output_shape) > 2 else 1
    input_channels, output_channels = (int(size) for size in layer.kernel.shape[-2:])
    return FactorizableLayer(layer.name, kind, input_channels, output_channels, positions, bool(layer.use_bias))


def find_factorizable_layers(model: keras.Model) -> list[FactorizableLayer]:
    """The 1x1 convolutions and dense layers of a model, in graph order (factor layers excluded).

    Only the model's own layers are searched (not inside nested models).
    """
    found = []
    for layer in model.layers:
        described = _describe(layer)
        if described is not None:
            found.append(described)
    return found


def require_factorizable(model: keras.Model, model_path: str = "the model") -> list[FactorizableLayer]:
    """`find_factorizable_layers`, raising a clear FactorizationError when there is nothing to do."""
    layers = find_factorizable_layers(model)
    if not any(layer.kind == "conv1x1" for layer in layers):
        nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
        hint = f" (nested models are not searched: {', '.join(nested)})" if nested else ""
        raise FactorizationError(
            f"{model_path} has no 1x1 convolution to factorize (Conv2D with kernel_size (1, 1), groups 1, "
            f"dilation 1){hint}; found {len(layers)} dense layer(s)")
    return layers


def check_ranks(model: keras.Model, ranks: Mapping[str, int], require_savings: bool = True) -> dict[str, FactorizableLayer]:
    """Checks a {layer name: rank} request against the model; returns the described layers by name.

    Raises:
      FactorizationError: naming the layer that is unknown, not factorizable, whose rank exceeds
        min(Cin, Cout), or (with require_savings) whose rank saves nothing.
    """
    available = {layer.name: layer for layer in find_factorizable_layers(model)}
    checked = {}
    for name, rank in ranks.items():
        if name not in available:
            raise FactorizationError(
                f"layer {name!r} is not a factorizable 1x1 convolution or dense layer of model {model.name!r}; "
                f"candidates: {', '.join(available) or 'none'}")
        layer = available[name]
        if not 1 <= int(rank) <= layer.full_rank:
            raise FactorizationError(
                f"rank {rank} for layer {name!r} is outside 1..{layer.full_rank} "
                f"(its kernel is {layer.input_channels}x{layer.output_channels})")
        if require_savings and not layer.saves(int(rank)):
            raise FactorizationError(
                f"rank {rank} for layer {name!r} saves nothing: "
                f"r(Cin + Cout) = {rank * (layer.input_channels + layer.output_channels)}"
                f" >= Cin*Cout = {layer.input_channels * layer.output_channels} (largest useful rank: {layer.max_saving_rank})")
        checked[name] = layer
    return checked


def _factor_layers(original: keras.layers.Layer, rank: int) -> tuple[keras.layers.Layer, keras.layers.Layer]:
    """Two stock layers that replace `original` at `rank` (weights are set after the graph is built)."""
    name = original.name
    if isinstance(original, keras.layers.Conv2D):
        first = keras.layers.Conv2D(
            rank, 1, strides=original.strides, padding=original.padding, use_bias=False,
            name=name + FIRST_SUFFIX, dtype=original.dtype_policy)
        second = keras.layers.Conv2D(
            original.filters, 1, use_bias=original.use_bias, activation=original.activation,
            name=name + SECOND_SUFFIX, dtype=original.dtype_policy)
    else:
        first = keras.layers.Dense(rank, use_bias=False, name=name + FIRST_SUFFIX, dtype=original.dtype_policy)
        second = keras.layers.Dense(original.units, use_bias=original.use_bias, activation=original.activation,
                                    name=name + SECOND_SUFFIX, dtype=original.dtype_policy)
    return first, second


def factorize_model(model: keras.Model, ranks: Mapping[str, int], require_savings: bool = True) -> keras.Model:
    """A copy of `model` in which each layer named in `ranks` is replaced by its two rank-r SVD factors.

    Every other layer is a fresh copy holding the same weights (the input model is not modified).

    Args:
      model: a Keras 3 functional (or Sequential) model.
      ranks: {layer name: rank}.
      require_savings: refuse ranks with r(Cin + Cout) >= Cin*Cout (tests turn it off to check full rank).

    Returns:
      The new functional model (same name, inputs and outputs).

    Raises:
      FactorizationError: see `check_ranks`.
    """
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    check_ranks(model, ranks, require_savings)
    existing = {layer.name for layer in model.layers}
    for name in ranks:
        for suffix in (FIRST_SUFFIX, SECOND_SUFFIX):
            if name + suffix in existing:
                raise FactorizationError(f"model already has a layer named {name + suffix!r}")
    factors: dict[str, tuple[keras.layers.Layer, keras.layers.Layer]] = {}

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config(layer.get_config())

    def call_layer(layer: keras.layers.Layer, *args, **kwargs):
        if layer.name not in ranks:
            return layer(*args, **kwargs)
        first, second = _factor_layers(layer, int(ranks[layer.name]))
        factors[layer.name] = (first, second)
        return second(first(*args, **kwargs))

    # Fresh inputs with the original names (clone_model would name them "keras_tensor"), so the
    # TFLite signature of the factorized model keeps its input name.
    inputs = keras.tree.map_structure(
        lambda tensor: keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                                   name=tensor._keras_history.operation.name), model.input)
    rebuilt = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone_layer,
                                       call_function=call_layer)
    originals = {layer.name: layer for layer in model.layers}
    for layer in rebuilt.layers:
        if layer.name in originals and layer.weights:
            layer.set_weights(originals[layer.name].get_weights())
    for name, (first, second) in factors.items():
        original = originals[name]
        split = svd_factors(original.kernel.numpy(), int(ranks[name]))
        first.kernel.assign(split.first.reshape(first.kernel.shape))
        second.kernel.assign(split.second.reshape(second.kernel.shape))
        if original.use_bias:
            second.bias.assign(original.bias.numpy())
    return rebuilt


@dataclasses.dataclass
class LayerReport:
    """One factorized layer in the report."""

    name: str
    kind: str
    input_channels: int
    output_channels: int
    rank: int
    full_rank: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    relative_error: float
    estimated_ms_saved: float | None = None


def layer_report(model: keras.Model, layer: FactorizableLayer, rank: int,
                 estimated_ms_saved: float | None = None) -> LayerReport:
    """The report line of factorizing `layer` of `model` (the unfactorized one) at `rank`."""
    values = singular_values(model.get_layer(layer.name).kernel.numpy())
    return LayerReport(
        name=layer.name, kind=layer.kind, input_channels=layer.input_channels, output_channels=layer.output_channels,
        rank=int(rank), full_rank=layer.full_rank, params_before=layer.params(), params_after=layer.params(rank),
        macs_before=layer.macs(), macs_after=layer.macs(rank), relative_error=relative_error(values, rank),
        estimated_ms_saved=estimated_ms_saved)


def model_macs(model: keras.Model) -> int:
    """Multiply-accumulates per example of the model's convolutions and dense layers (from shapes)."""
    total = 0
    for layer in model.layers:
        try:
            output_shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        positions = int(np.prod(output_shape[1:-1])) if len(output_shape) > 2 else 1
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            # [kh, kw, Cin/groups, Cout], [kh, kw, Cin, multiplier] and [Cin, Cout]: MACs per position = prod.
            total += positions * int(np.prod(layer.kernel.shape))
    return total


def format_table(layer_reports: list[LayerReport]) -> str:
    """A Markdown table of per-layer rank, params, MACs and reconstruction error."""
    lines = ["| layer | kind | Cin x Cout | rank / full | params before -> after | MACs before -> after | rel. error |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for item in layer_reports:
        lines.append(
            f"| {item.name} | {item.kind} | {item.input_channels}x{item.output_channels} | {item.rank} / {item.full_rank} "
            f"| {item.params_before:,} -> {item.params_after:,} | {item.macs_before:,} -> {item.macs_after:,} "
            f"| {item.relative_error:.4f} |")
    return "\n".join(lines)
