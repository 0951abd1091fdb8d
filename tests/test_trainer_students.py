"""Students: raw pixels in, logits out, preprocessing inside, flat graphs with plain 1x1 Conv2D, TFLite-ready."""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from trainer import students


@pytest.mark.parametrize("name,width,size", [("mobilenet_v1", 0.25, 32), ("mobilenet_v2", 0.35, 48),
                                             ("mobilenet_v3_small", 0.25, 64), ("mobilenet_v3_large", 0.25, 64),
                                             ("small_cnn", 0.5, 32)])
def test_student_takes_raw_pixels_and_returns_logits(name, width, size):
    model = students.build_student(name, width, size, 7)
    assert model.name == f"{name}_{width:g}_{size}"
    assert tuple(model.inputs[0].shape) == (None, size, size, 3) and tuple(model.outputs[0].shape) == (None, 7)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # flat
    preprocess = model.get_layer("preprocess")
    assert model.layers[1] is preprocess
    np.testing.assert_allclose(preprocess(np.array([[0.0, 127.5, 255.0]], np.float32)), [[-1.0, 0.0, 1.0]])
    one_by_one = [layer for layer in model.layers if type(layer) is keras.layers.Conv2D and layer.kernel_size == (1, 1)]
    assert one_by_one
    pixels = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    logits = model(pixels, training=False).numpy()
    assert logits.shape == (2, 7) and np.all(np.isfinite(logits))
    assert not np.allclose(logits.sum(axis=1), 1.0)  # logits, not probabilities


def test_width_scales_the_network():
    narrow = students.build_student("mobilenet_v1", 0.25, 32, 10).count_params()
    wide = students.build_student("mobilenet_v1", 0.5, 32, 10).count_params()
    assert wide > 2 * narrow


def test_student_converts_to_tflite_at_batch_one_and_matches_keras():
    from compress import quantize  # the quantize job's converter (fixed batch 1, via a SavedModel)

    model = students.build_student("mobilenet_v3_small", 0.25, 64, 5)
    interpreter = Interpreter(model_content=quantize.convert(model, "float32"), num_threads=1)
    interpreter.allocate_tensors()
    pixels = np.random.default_rng(1).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], pixels)
    interpreter.invoke()
    tflite_logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(tflite_logits, model(pixels, training=False).numpy(), rtol=1e-4, atol=1e-4)


def test_bad_student_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown student 'resnet'"):
        students.build_student("resnet", 1.0, 224, 10)
    with pytest.raises(ValueError, match="width"):
        students.build_student("mobilenet_v1", 0.0, 224, 10)
    with pytest.raises(ValueError, match="image_size"):
        students.build_student("mobilenet_v2", 1.0, 16, 10)
    with pytest.raises(ValueError, match="channels=3"):
        students.build_student("mobilenet_v2", 1.0, 64, 10, channels=1)
