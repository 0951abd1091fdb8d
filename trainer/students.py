"""Student models: the MobileNet grid the LPIRC teams searched, plus a tiny CNN for tests and demos.

Every student is a flat Keras 3 functional model (no nested sub-models) whose first layer is its own
preprocessing, so the TFLite model takes raw pixels as a phone feeds them:

    input  [S, S, channels] float32 RGB in 0..255
    Rescaling(1/127.5, offset=-1)  -> [-1, 1]  (the MobileNet convention)
    ... the network ...
    output [num_classes] float32 logits (no softmax)

The MobileNets come from `keras.applications` with `weights=None` (nothing is downloaded) and the
Rescaling layer's output as `input_tensor`, which keeps the model flat. Their 1x1 convolutions are plain
`Conv2D` layers with a 1x1 kernel (the factorize job finds them that way). Batch sizes stay dynamic; the
quantize job converts from a fixed batch-1 signature.

    python -c "from trainer import students; students.build_student('mobilenet_v1', 0.25, 128, 1000).summary()"
"""

from __future__ import annotations

import keras

STUDENTS = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "small_cnn")
# Width multipliers keras.applications builds for each family (any value works with weights=None for
# V1 and V3; V2 rounds channel counts to multiples of 8, so any positive value works too).
MIN_IMAGE_SIZE = 32


def _preprocess(inputs: keras.KerasTensor) -> keras.KerasTensor:
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(inputs)


def _small_cnn(inputs: keras.KerasTensor, width: float, num_classes: int) -> keras.KerasTensor:
    """Two conv blocks and a linear head: ~88% on Fashion-MNIST in a minute on 2 cores at width 1.

    No batch normalization and no dropout, so a step is a deterministic function of the batch: two
    replicas with half the batch each reach the same weights as one replica (tested).
    """
    filters = max(4, int(round(32 * width)))
    x = _preprocess(inputs)
    x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(2 * filters, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Conv2D(4 * filters, 1, activation="relu", name="conv3_1x1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.layers.Dense(num_classes, name="logits")(x)


def build_student(name: str, width: float, image_size: int, num_classes: int, channels: int = 3) -> keras.Model:
    """Builds an untrained student that takes raw pixels and returns logits.

    Args:
      name: one of `STUDENTS`: mobilenet_v1, mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large, small_cnn.
      width: the width multiplier (alpha): 0.25, 0.5, 0.75, 1.0 ... (small_cnn: scales its 32 filters).
      image_size: S, the square input side in pixels (the LPIRC grid used 128, 160, 192, 224).
      num_classes: C, the number of logits.
      channels: input channels (3 for RGB; the MobileNets need 3).

    Returns:
      A float32 `keras.Model` named `{name}_{width}_{image_size}`: [N, S, S, channels] float32 pixels
      in 0..255 -> [N, C] float32 logits.

    Raises:
      ValueError: an unknown name, a non-positive width or class count, or too small an image.
    """
    if name not in STUDENTS:
        raise ValueError(f"unknown student {name!r}; choose one of {', '.join(STUDENTS)}")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if name != "small_cnn" and channels != 3:
        raise ValueError(f"{name} takes RGB input (channels=3), got channels={channels}")
    shape = (image_size, image_size, channels)
    inputs = keras.Input(shape=shape, dtype="float32", name="pixels")
    model_name = f"{name}_{width:g}_{image_size}"
    if name == "small_cnn":
        return keras.Model(inputs, _small_cnn(inputs, width, num_classes), name=model_name)
    common = dict(input_shape=shape, alpha=width, include_top=True, weights=None,
                  input_tensor=_preprocess(inputs), classes=num_classes, classifier_activation=None)
    if name == "mobilenet_v1":
        backbone = keras.applications.MobileNet(**common)
    elif name == "mobilenet_v2":
        backbone = keras.applications.MobileNetV2(**common)
    elif name == "mobilenet_v3_small":
        backbone = keras.applications.MobileNetV3Small(include_preprocessing=False, **common)
    else:
        backbone = keras.applications.MobileNetV3Large(include_preprocessing=False, **common)
    # keras.applications traced the graph from `inputs` (the source of input_tensor); rename the model.
    return keras.Model(backbone.inputs[0], backbone.outputs[0], name=model_name)


def with_synchronized_batch_norm(model: keras.Model) -> keras.Model:
    """`model` rebuilt with every BatchNormalization layer synchronized across replicas, same weights.

    Keras' `synchronized=True` all-reduces each batch-norm layer's sum, sum of squares and count over the
    strategy's replicas, so with many replicas of a few images each the batch statistics (and the moving
    averages they update) are those of the global batch rather than of each replica's share. Build
    under the strategy's scope; a model without batch norm (small_cnn) comes back unchanged in value.
    The exported student is a plain one (trainer/export.py rebuilds it): inference uses the moving
    averages and needs no all-reduce.
    """

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = True
        return layer.__class__.from_config(config)

    synchronized = keras.models.clone_model(model, clone_function=clone_layer)
    synchronized.set_weights(model.get_weights())
    return synchronized
