"""The factorized model converts to int8 TFLite, runs, and its ops map back to the Keras layers."""

import numpy as np
from factorize_fixtures import images, tiny_model
from tensorflow.lite.tools import flatbuffer_utils

from compress import factorize, quantize, rank_selection
from distillery import tflite_model


def _op_types(model_content):
    model = tflite_model.parse_tflite(model_content)
    return [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in model.subgraphs[0].operators]


def test_factorized_model_converts_to_int8_and_matches_keras():
    model = tiny_model()
    factorized = factorize.factorize_model(model, {"pw1": 8, "pw2": 9, "logits": 6})
    calibration = [images(1, seed) for seed in range(16)]
    original_content = quantize.convert(model, "int8", calibration)
    factorized_content = quantize.convert(factorized, "int8", calibration)
    original_ops, factorized_ops = _op_types(original_content), _op_types(factorized_content)
    # Two 1x1 convs and the dense layer each became two ops; nothing else changed (BN stays folded).
    assert factorized_ops.count("CONV_2D") == original_ops.count("CONV_2D") + 2
    assert factorized_ops.count("FULLY_CONNECTED") == original_ops.count("FULLY_CONNECTED") + 1
    assert len(factorized_ops) == len(original_ops) + 3
    classifier = tflite_model.Classifier.from_bytes(factorized_content)
    assert classifier.input_dtype == np.uint8
    test_images = images(20, seed=7)
    keras_logits = factorized(test_images).numpy()
    int8_logits = np.stack([classifier.predict(image)[0] for image in test_images])
    spread = keras_logits.max() - keras_logits.min()
    # int8 logits within a few quantization steps of the float ones.
    assert np.abs(int8_logits - keras_logits).max() < 0.1 * spread
    assert np.mean(int8_logits.argmax(1) == keras_logits.argmax(1)) >= 0.8


def test_ops_map_back_to_layers_by_name_or_shape():
    model = tiny_model()
    content = quantize.convert(model, "int8", [images(1, seed) for seed in range(4)])
    layers = factorize.find_factorizable_layers(model)
    mapping = rank_selection.map_ops_to_layers(content, layers)
    op_types = _op_types(content)
    assert sorted(mapping.values()) == ["logits", "pw1", "pw2"]
    by_layer = {name: op_types[index] for index, name in mapping.items()}
    assert by_layer == {"pw1": "CONV_2D", "pw2": "CONV_2D", "logits": "FULLY_CONNECTED"}
    milliseconds = rank_selection.layer_milliseconds(content, [float(i) for i in range(len(op_types))], layers)
    assert milliseconds == {name: float(index) for index, name in mapping.items()}
