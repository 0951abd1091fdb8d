"""The built-in teacher: torchvision's MobileNetV2 read without torch, checked on real photos and by hand.

The photos ship inside installed wheels (scikit-image, matplotlib, scikit-learn), so nothing is
downloaded. Each photo goes through the extraction's centre view (distillery.views, V = 1) at 224x224.
"""

from __future__ import annotations

import keras
import matplotlib.cbook
import matplotlib.image
import numpy as np
import pytest
import skimage.data
import sklearn.datasets
import tensorflow as tf

from distillery import imagenet, mobilenet_v2_torchvision, teachers, views

BUILTIN = "builtin:mobilenet_v2_imagenet"


@pytest.fixture(scope="module")
def teacher() -> teachers.Teacher:
    return teachers.load_teacher(BUILTIN)


@pytest.fixture(scope="module")
def state_dict():
    return mobilenet_v2_torchvision.read_torch_state_dict(mobilenet_v2_torchvision.weights_path())


def centre_view(image: np.ndarray, image_id: str) -> np.ndarray:
    """[224, 224, 3] float32: the view extraction stores for V = 1 (central 87.5%, resized)."""
    crops, flips = views.sample_views(image_id, 0, 1, *image.shape[:2])
    return views.crop_view(tf.constant(image[..., :3]), crops[0], flips[0], 224).numpy()


def test_teacher_attributes(teacher):
    assert teacher.names == (BUILTIN,)
    assert teacher.input_size == (224, 224)
    assert teacher.num_classes == 1000


def test_state_dict_is_torchvision_mobilenet_v2(state_dict):
    # torchvision's mobilenet_v2: 52 conv/BN modules' worth of tensors + the classifier; counters are int64.
    assert len(state_dict) == 314
    assert state_dict["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state_dict["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # depthwise
    assert state_dict["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert state_dict["classifier.1.weight"].shape == (1000, 1280)
    assert state_dict["classifier.1.weight"].dtype == np.float32
    assert state_dict["features.0.1.num_batches_tracked"].dtype == np.int64
    assert np.all(state_dict["features.0.1.running_var"] > 0)
    # Trainable parameters of torchvision's MobileNetV2: 3,504,872 (its documented size).
    trainable = sum(value.size for key, value in state_dict.items()
                    if not key.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert trainable == 3_504_872


def test_chelsea_is_a_cat(teacher):
    logits = teacher.predict(centre_view(skimage.data.chelsea(), "chelsea")[None])
    assert logits.shape == (1, 1000) and logits.dtype == np.float32
    top1 = int(np.argmax(logits[0]))
    assert 281 <= top1 <= 285, imagenet.class_names()[top1]  # tabby .. Egyptian cat
    # Measured: Egyptian cat 0.71, tiger cat 0.15, tabby 0.13; all three cat classes lead.
    assert set(np.argsort(-logits[0])[:3]) == {281, 282, 285}


def test_photos_top5_are_sensible(teacher):
    """Other bundled photos, with the classes a human would accept (each measured first)."""
    grace_hopper = matplotlib.image.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
    photos = {
        # skimage coffee: a cup of espresso on a saucer -> espresso (967), and cup (968) in the top-5.
        "coffee": skimage.data.coffee(),
        # matplotlib's Grace Hopper portrait in navy uniform with a bow tie (TF's label_image example).
        "grace_hopper": np.asarray(grace_hopper),
        # skimage rocket: a rocket on its launch pad beside the service tower.
        "rocket": skimage.data.rocket(),
        # scikit-learn's china.jpg: the Summer Palace's Buddhist temple above trees.
        "china": sklearn.datasets.load_sample_image("china.jpg"),
    }
    batch = np.stack([centre_view(image, name) for name, image in photos.items()])
    logits = teacher.predict(batch, batch_size=3)  # two batches: 3 + 1
    top5 = {name: [int(i) for i in np.argsort(-row)[:5]] for name, row in zip(photos, logits)}
    assert top5["coffee"][0] == 967 and 968 in top5["coffee"]  # espresso; cup
    assert set(top5["grace_hopper"][:2]) == {457, 652}  # bow tie and military uniform lead
    assert {812, 657, 744} <= set(top5["rocket"])  # space shuttle, missile, projectile
    assert set(top5["china"][:3]) <= {832, 663, 698, 442, 497}  # stupa, monastery, palace, bell cote, church


def test_call_inside_tf_function_resizes_and_matches_predict(teacher):
    image = skimage.data.chelsea()
    view = centre_view(image, "chelsea")
    expected = teacher.predict(view[None])

    @tf.function
    def traced(images):
        return teacher(images)

    np.testing.assert_allclose(traced(tf.constant(view[None])).numpy(), expected, rtol=1e-5, atol=1e-4)
    # Another size is resized inside the call: a 448x448 upscale of the view is nearly the same image.
    bigger = tf.image.resize(view[None], (448, 448), method="bilinear", antialias=True)
    logits = traced(bigger).numpy()
    assert int(np.argmax(logits)) == int(np.argmax(expected))


def _numpy_conv(x, weight_oihw, stride, groups=1):
    """Direct convolution in torch's conventions: x [H, W, Cin], weight [O, Cin/groups, kh, kw], padding 1."""
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out_channels, _, kernel_h, kernel_w = weight_oihw.shape
    out_h = (x.shape[0] + 2 - kernel_h) // stride + 1
    out_w = (x.shape[1] + 2 - kernel_w) // stride + 1
    out = np.zeros((out_h, out_w, out_channels), np.float64)
    per_group = out_channels // groups
    in_per_group = x.shape[2] // groups
    for ky in range(kernel_h):
        for kx in range(kernel_w):
            patch = padded[ky:ky + stride * out_h:stride, kx:kx + stride * out_w:stride, :]
            for group in range(groups):
                channels_in = patch[..., group * in_per_group:(group + 1) * in_per_group]
                weights = weight_oihw[group * per_group:(group + 1) * per_group, :, ky, kx]  # [O_g, Cin_g]
                out[..., group * per_group:(group + 1) * per_group] += channels_in @ weights.T
    return out


def _numpy_bn_relu6(x, state_dict, prefix):
    scale = state_dict[prefix + ".weight"] / np.sqrt(state_dict[prefix + ".running_var"] + 1e-5)
    y = (x - state_dict[prefix + ".running_mean"]) * scale + state_dict[prefix + ".bias"]
    return np.clip(y, 0.0, 6.0)


def test_first_blocks_match_a_numpy_computation(teacher, state_dict):
    """features.0 (3x3 stride-2 conv) and features.1's depthwise conv against NumPy in torch's layout.

    Checks the OIHW -> HWIO transposition, symmetric padding (1 on every side), BN eps 1e-5 and the
    preprocessing. An input of 224 is even, so Keras' asymmetric 'same' padding would shift the output.
    """
    model = mobilenet_v2_torchvision.mobilenet_v2_imagenet()
    sub_model = keras.Model(model.input, [model.get_layer("features_0_2").output,
                                           model.get_layer("features_1_conv_0_2").output])
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (224, 224, 3)).astype(np.float32)
    keras_first, keras_depthwise = (output.numpy()[0] for output in sub_model(image[None], training=False))

    normalized = (image / 255.0 - np.array(mobilenet_v2_torchvision.IMAGENET_MEAN)) / np.array(
        mobilenet_v2_torchvision.IMAGENET_STD)
    first = _numpy_bn_relu6(_numpy_conv(normalized, state_dict["features.0.0.weight"], 2), state_dict, "features.0.1")
    depthwise = _numpy_bn_relu6(_numpy_conv(first, state_dict["features.1.conv.0.0.weight"], 1, groups=32),
                                state_dict, "features.1.conv.0.1")
    assert keras_first.shape == first.shape == (112, 112, 32)
    np.testing.assert_allclose(keras_first, first, atol=2e-4)
    np.testing.assert_allclose(keras_depthwise, depthwise, atol=5e-4)


def test_builtin_saves_as_a_safe_keras_file_teacher(teacher, tmp_path):
    """The built-in is a plain Keras model: saved to .keras it loads back (safe_mode) with the same logits."""
    path = tmp_path / "mobilenet_v2_torchvision.keras"
    mobilenet_v2_torchvision.mobilenet_v2_imagenet().save(str(path))
    file_teacher = teachers.load_teacher(str(path))
    assert file_teacher.input_size == (224, 224) and file_teacher.num_classes == 1000
    view = centre_view(skimage.data.chelsea(), "chelsea")[None]
    np.testing.assert_allclose(file_teacher.predict(view), teacher.predict(view), atol=1e-4)
