"""SVD factorization and model surgery: values checked against hand computations and direct model calls."""

import keras
import numpy as np
import pytest
from factorize_fixtures import images, tiny_model

from compress import factorize


def test_finds_the_1x1_convolutions_and_the_dense_layer_with_their_sizes():
    layers = {layer.name: layer for layer in factorize.find_factorizable_layers(tiny_model())}
    assert list(layers) == ["pw1", "pw2", "logits"]
    assert (layers["pw1"].input_channels, layers["pw1"].output_channels, layers["pw1"].positions) == (16, 24, 64)
    assert (layers["pw2"].input_channels, layers["pw2"].output_channels, layers["pw2"].positions) == (24, 32, 16)
    assert (layers["logits"].kind, layers["logits"].positions) == ("dense", 1)
    pw1 = layers["pw1"]
    assert pw1.params() == 16 * 24 + 24 and pw1.params(5) == 5 * (16 + 24) + 24
    assert pw1.macs() == 64 * 16 * 24 and pw1.macs(5) == 64 * 5 * 40
    assert pw1.max_saving_rank == 9  # 9 * 40 = 360 < 384 <= 10 * 40
    assert pw1.saves(9) and not pw1.saves(10)


def test_full_rank_reproduces_the_model_outputs():
    model = tiny_model()
    factorized = factorize.factorize_model(model, {"pw1": 16, "pw2": 24, "logits": 10}, require_savings=False)
    x = images()
    assert np.abs(factorized(x).numpy() - model(x).numpy()).max() < 1e-4
    for name in ("pw1", "pw2", "logits"):  # each layer's own output, not just the model's
        original = keras.Model(model.inputs, model.get_layer(name).output)(x).numpy()
        replaced = keras.Model(factorized.inputs, factorized.get_layer(name + "_svd_b").output)(x).numpy()
        assert np.abs(replaced - original).max() < 1e-4
    names = [layer.name for layer in factorized.layers]
    assert names.index("pw1_svd_a") + 1 == names.index("pw1_svd_b") < names.index("bn1")
    assert "pw1" not in names and factorized.get_layer("pw1_svd_a").bias is None


def test_eckart_young_and_balanced_factors():
    kernel = np.random.default_rng(3).normal(size=(1, 1, 20, 12)).astype(np.float32)
    values = np.linalg.svd(kernel[0, 0].astype(np.float64), compute_uv=False)
    for rank in (1, 4, 11, 12):
        split = factorize.svd_factors(kernel, rank)
        error = np.linalg.norm(kernel[0, 0].astype(np.float64) - split.first.astype(np.float64) @ split.second)
        expected = np.sqrt(np.sum(values[rank:] ** 2))
        assert error == pytest.approx(expected, abs=1e-5)
        assert factorize.relative_error(values, rank) == pytest.approx(expected / np.linalg.norm(kernel), abs=1e-6)
        # Balanced: column i of the first factor and row i of the second both have norm sqrt(s_i).
        np.testing.assert_allclose(np.linalg.norm(split.first, axis=0), np.sqrt(values[:rank]), rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(split.second, axis=1), np.sqrt(values[:rank]), rtol=1e-5)


def test_rank_r_layer_computes_the_truncated_kernel_and_other_layers_are_untouched():
    model = tiny_model()
    factorized = factorize.factorize_model(model, {"pw1": 4})
    kernel = model.get_layer("pw1").kernel.numpy()[0, 0].astype(np.float64)
    left, values, right = np.linalg.svd(kernel, full_matrices=False)
    truncated = (left[:, :4] * values[:4]) @ right[:4]
    first = factorized.get_layer("pw1_svd_a").kernel.numpy()[0, 0]
    second = factorized.get_layer("pw1_svd_b").kernel.numpy()[0, 0]
    np.testing.assert_allclose(first.astype(np.float64) @ second, truncated, atol=1e-5)
    np.testing.assert_array_equal(factorized.get_layer("pw1_svd_b").bias.numpy(), model.get_layer("pw1").bias.numpy())
    # The factorized layer's output is x @ W_r + b, computed by hand from the stem's output.
    x = images()
    stem = keras.Model(model.inputs, model.get_layer("stem").output)(x).numpy().astype(np.float64)
    probe = keras.Model(factorized.inputs, factorized.get_layer("pw1_svd_b").output)
    expected = stem @ truncated + model.get_layer("pw1").bias.numpy()
    np.testing.assert_allclose(probe(x).numpy(), expected, atol=1e-4)
    # Every other layer holds exactly the weights it had, and the input model is unchanged.
    for layer in model.layers:
        if layer.name == "pw1":
            continue
        for before, after in zip(layer.get_weights(), factorized.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(model.get_layer("pw1").kernel.numpy()[0, 0], kernel.astype(np.float32))
    assert factorized.input.name == model.input.name == "pixels"


def test_strided_1x1_convolution_keeps_its_stride():
    model = tiny_model()
    factorized = factorize.factorize_model(model, {"pw2": 24}, require_savings=False)
    assert tuple(factorized.get_layer("pw2_svd_a").strides) == (2, 2)
    assert tuple(factorized.get_layer("pw2_svd_b").output.shape) == (None, 4, 4, 32)
    x = images()
    assert np.abs(factorized(x).numpy() - model(x).numpy()).max() < 1e-4


def test_factorized_model_saves_and_loads_with_safe_mode(tmp_path):
    model = tiny_model()
    factorized = factorize.factorize_model(model, {"pw1": 3, "logits": 2})
    path = tmp_path / "factorized.keras"
    factorized.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = images()
    np.testing.assert_allclose(loaded(x).numpy(), factorized(x).numpy(), atol=1e-6)
    assert factorize.find_factorizable_layers(loaded)[0].name == "pw2"  # factor layers are not offered again


def test_model_macs_drop_by_the_factorized_layers_saving():
    model = tiny_model()
    factorized = factorize.factorize_model(model, {"pw1": 3, "pw2": 5})
    layers = {layer.name: layer for layer in factorize.find_factorizable_layers(model)}
    saved = sum(layers[name].macs() - layers[name].macs(rank) for name, rank in (("pw1", 3), ("pw2", 5)))
    assert factorize.model_macs(model) - factorize.model_macs(factorized) == saved
    # stem 64*27*16, pw1 64*16*24, dw 64*9*24, pw2 16*24*32, logits 32*10
    assert factorize.model_macs(model) == 64 * 27 * 16 + 64 * 16 * 24 + 64 * 9 * 24 + 16 * 24 * 32 + 320


def test_rank_above_the_layers_rank_is_refused_naming_the_layer():
    with pytest.raises(factorize.FactorizationError, match=r"rank 17 for layer 'pw1' is outside 1\.\.16"):
        factorize.factorize_model(tiny_model(), {"pw1": 17})
    with pytest.raises(factorize.FactorizationError, match=r"rank 12 for layer 'pw1' saves nothing"):
        factorize.factorize_model(tiny_model(), {"pw1": 12})
    with pytest.raises(factorize.FactorizationError, match=r"layer 'stem' is not a factorizable"):
        factorize.factorize_model(tiny_model(), {"stem": 2})


def test_model_without_1x1_convolutions_is_refused():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv3x3")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(x))
    with pytest.raises(factorize.FactorizationError, match="no_1x1.keras has no 1x1 convolution"):
        factorize.require_factorizable(keras.Model(inputs, outputs), "no_1x1.keras")


def test_format_table_lists_each_layer():
    model = tiny_model()
    layer = factorize.find_factorizable_layers(model)[0]
    report = factorize.layer_report(model, layer, 3)
    assert (report.params_before, report.params_after, report.macs_after) == (408, 144, 64 * 3 * 40)
    values = factorize.singular_values(model.get_layer("pw1").kernel.numpy())
    assert report.relative_error == pytest.approx(np.sqrt(np.sum(values[3:] ** 2) / np.sum(values**2)))
    table = factorize.format_table([report])
    assert "| pw1 | conv1x1 | 16x24 | 3 / 16 | 408 -> 144 | 24,576 -> 7,680 |" in table
