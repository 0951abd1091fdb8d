"""The demo's teacher: a bigger CNN trained on the labelled part of Fashion-MNIST with hard labels.

It follows the teacher contract of docs/design.md: RGB float32 pixels in 0..255 at 32x32 (the padded
images), normalization inside the model, logits out. Training it is ordinary supervised learning
(Keras fit on one device); distillation starts after it.

    .venv/bin/python -c "from demo import data, teacher; x, y = data.read_images('runs/demo/data/labelled.tfrecord'); \
teacher.train_teacher(x[:2000], y[:2000], epochs=2, min_scale=0.7).summary()"
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from configs.demo import DemoConfig
from distillery import views


def build_teacher(image_size: int = 32, num_classes: int = 10, width: int = 32, dropout: float = 0.3) -> keras.Model:
    """A small VGG-style CNN: three conv-BN-ReLU-max-pool blocks of width, 2x and 4x width filters (at
    32, 16 and 8 pixels), then an 8x width dense layer. At width 32: ~0.6M parameters (~3x the demo's
    students') and ~11M multiply-adds per 32x32 image (~13x the students').

    Measured on 2 cores against the previous design (two convolutions at 32 pixels, one at 16, 16M
    multiply-adds): ~590 vs ~370 training images/s, and 86.6% vs 87.0% centre-crop top-1 after 10
    epochs on the demo's 10k labelled images; 12 epochs of this one take less time than 10 of the old
    (14 epochs: 88.0%). Full-resolution feature maps cost more than their multiply-adds say on a CPU.
    """
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    for filters in (width, 2 * width, 4 * width):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(dropout)(x)
    x = keras.layers.Dense(8 * width, activation="relu")(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="fashion_teacher")


def augmented_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, min_scale: float,
                      seed: int) -> tf.data.Dataset:
    """Batches of random views of the training images, drawn like the stored views of extraction
    (`distillery.views.random_view_tensor`, cropped and resized by `views.crop_view`), so the teacher
    labels views of the kind it was trained on; a new view of each image every epoch. Repeats forever."""
    size = images.shape[1:3]

    def view(position, example):
        image, label = example
        box, flip = views.random_view_tensor(size[0], size[1], tf.stack([tf.constant(seed, tf.int64), position]),
                                             min_scale)
        return views.crop_view(image, box, flip, tuple(size)), label

    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(len(images), seed=seed).repeat()
    return (dataset.enumerate().map(view, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def train_teacher(images: np.ndarray, labels: np.ndarray, epochs: int, width: int = 32,
                  batch_size: int = 128, seed: int = 0, min_scale: float | None = None,
                  dropout: float = 0.3) -> keras.Model:
    """Trains the teacher with hard labels; logs images/s per epoch.

    With `min_scale`, every epoch sees a fresh random view of each image (the distribution the
    extraction's --views > 1 stores: crops of area >= min_scale, flips), else the whole images.
    """
    keras.utils.set_random_seed(seed)
    steps_per_epoch = -(-len(images) // batch_size)
    model = build_teacher(images.shape[1], int(labels.max()) + 1, width, dropout)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
                      2e-3, decay_steps=epochs * steps_per_epoch)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])

    class _Throughput(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            rate = len(images) / (time.perf_counter() - self.start)
            logging.info("teacher epoch %d/%d: loss %.3f accuracy %.3f, %.0f images/s", epoch + 1, epochs,
                         logs["loss"], logs["accuracy"], rate)

    if min_scale is None:
        model.fit(images.astype(np.float32), labels, epochs=epochs, batch_size=batch_size, verbose=0,
                  callbacks=[_Throughput()])
    else:
        epochs_data = augmented_dataset(images, labels, batch_size, min_scale, seed)
        model.fit(epochs_data, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0,
                  callbacks=[_Throughput()])
    return model


def train_and_save(cfg: DemoConfig, labelled: str, output: str) -> keras.Model:
    """The demo's teacher step: trains the teacher on the labelled TFRecord `labelled` (demo/data.py) with the
    settings of `cfg` and saves it to `output` (.keras); demo/run.py and the pipeline's teacher step both run it."""
    from demo import data  # pylint: disable=import-outside-toplevel  (demo.data imports the image sources)

    images, labels = data.read_images(labelled)
    teacher = train_teacher(images, labels, cfg.teacher_epochs, cfg.teacher_width, seed=cfg.seed,
                            min_scale=cfg.min_scale, dropout=cfg.teacher_dropout)
    teacher.save(output)
    logging.info("saved %s", output)
    return teacher
