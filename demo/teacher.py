"""The demo's teacher: a bigger CNN trained on the labelled part of Fashion-MNIST with hard labels.

It follows the teacher contract of DESIGN.md: RGB float32 pixels in 0..255 at 28x28, normalization
inside the model, logits out. Training it is ordinary supervised learning (Keras fit on one device);
distillation starts after it.

    python -m demo.teacher  # trains on 2000 images for a quick look
"""

from __future__ import annotations

import time

import keras
import numpy as np
from absl import logging


def build_teacher(image_size: int = 28, num_classes: int = 10, width: int = 32) -> keras.Model:
    """A small VGG-style CNN with a wide dense head: more parameters than the demo's students, and
    ~12M multiply-adds per image at width 32, so it trains in a minute or two on 2 cores."""
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    for filters, convolutions in ((width, 2), (2 * width, 1)):
        for _ in range(convolutions):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(8 * width, activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="fashion_teacher")


def train_teacher(images: np.ndarray, labels: np.ndarray, epochs: int, width: int = 32,
                  batch_size: int = 128, seed: int = 0) -> keras.Model:
    """Trains the teacher with hard labels (dropout is its only regularizer); logs images/s per epoch."""
    keras.utils.set_random_seed(seed)
    model = build_teacher(images.shape[1], int(labels.max()) + 1, width)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    class _Throughput(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            rate = len(images) / (time.perf_counter() - self.start)
            logging.info("teacher epoch %d/%d: loss %.3f accuracy %.3f, %.0f images/s", epoch + 1, epochs,
                         logs["loss"], logs["accuracy"], rate)

    model.fit(images.astype(np.float32), labels, epochs=epochs, batch_size=batch_size, verbose=0,
                 callbacks=[_Throughput()])
    return model
