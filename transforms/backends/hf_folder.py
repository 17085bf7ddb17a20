"""Where an `hf` model's files are: a local folder, a copy of a gs:// or s3:// folder, or a hub snapshot; and what
can be checked of them before a job starts (its config, its weights' digest, safetensors headers)."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import struct
import tempfile
import uuid
from pathlib import Path
from typing import Any, Optional

import fsspec

from transforms.backends.weights import hash_file
from transforms.faults import one_line
from transforms.stores import is_local, use_worker_options

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class ModelFolderError(ValueError):
    """The model cannot be found or read: not a folder holding a model, not in the hub cache and no hub reachable."""


@functools.cache
def model_folder(name: str, revision: Optional[str] = None) -> str:
    """A local folder holding the model `name`: the folder itself, a copy of a gs:// or s3:// folder (made once per
    process, and shared by the processes of a worker through the temp folder), or a hub snapshot."""
    if not is_local(name):
        use_worker_options()
        fs, path = fsspec.core.url_to_fs(name)
        if not fs.isdir(path):
            raise ModelFolderError(f"{name!r} is not a folder")
        # The copy is named by the folder and what its listing says of every file (ETag or MD5, size), so a model
        # replaced in the bucket is copied again, never read stale from an earlier copy.
        listing = sorted((file, str(info.get("ETag") or info.get("md5Hash") or ""), info.get("size"))
                         for file, info in fs.find(path, detail=True).items())
        key = hashlib.sha256(json.dumps([name, listing], default=str).encode()).hexdigest()[:16]
        target = Path(tempfile.gettempdir()) / "zero-shot-models" / key
        if not target.is_dir():
            staging = target.with_name(f"{target.name}.{uuid.uuid4().hex}")
            fs.get(path.rstrip("/") + "/", str(staging), recursive=True)
            try:
                staging.rename(target)  # whole or not at all; another process may have won
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
        return str(target)
    local = name.removeprefix("file://")
    if os.path.isdir(local):
        return local
    if os.path.exists(local) or local.startswith((".", "/")):
        raise ModelFolderError(f"{name!r} is not a folder")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, revision=revision)
    except Exception as e:  # noqa: BLE001 - no network, unknown repo, gated model: one line, before the job
        raise ModelFolderError(f"cannot get {name!r} from the Hugging Face hub or its local cache "
                               f"({type(e).__name__}); give a local folder or a gs:// or s3:// copy of it") from None


@functools.cache
def weights_digest(folder: str) -> str:
    """sha256 over the model's weight files (names and bytes): `model` in rows names these weights exactly."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ModelFolderError(f"{folder!r} holds no weights ({', '.join(WEIGHT_SUFFIXES)} files)")
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        hash_file(digest, path)
    return digest.hexdigest()


def check_safetensors(folder: str) -> None:
    """ModelFolderError naming the first .safetensors file of `folder` whose header does not read or whose data is
    not as long as its header says (cut short, overwritten): checked from the header alone, before the job."""
    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                      default=0)
            if path.stat().st_size != 8 + length + end:
                raise ValueError(f"{path.stat().st_size} bytes, its header describes {8 + length + end}")
        except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as e:
            raise ModelFolderError(f"the weights file {str(path)!r} is damaged ({one_line(e)}); "
                                   "download or save the model again") from None


def model_config(folder: str) -> dict[str, Any]:
    """The folder's config.json; ModelFolderError when there is none to read."""
    try:
        return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFolderError(f"{folder!r} is not a transformers model (no readable config.json: "
                               f"{type(e).__name__})") from None
