"""Files of run folders on any store, through fsspec, every request retried as faults.with_retries says.

Beam's own filesystems retry an S3 request for about ten minutes (seven retries from 5 s, doubling) with no setting
to shorten it, so a store that goes away mid-job held the job silently for that long. Here a store's outage costs
--store_retry_s, the same on the output side as on the input side.
"""
from __future__ import annotations

import uuid
from typing import IO

import fsspec

from transforms.faults import with_retries
from transforms.stores import is_local, use_worker_options


def join(base: str, *names: str) -> str:
    """`base`/name/name..., for a local path or any URL alike (never os.path: a URL keeps its slashes)."""
    return "/".join([base.rstrip("/"), *names])


def _fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    use_worker_options()
    return fsspec.core.url_to_fs(path)


def _uri(fs: fsspec.AbstractFileSystem, like: str, path: str) -> str:
    """`path` as the caller writes paths: with its protocol where `like` has one, plain for a local one."""
    return fs.unstrip_protocol(path) if "://" in like else path


def exists(path: str) -> bool:
    fs, stripped = _fs(path)
    fs.invalidate_cache(stripped)
    return with_retries(path, lambda: fs.exists(stripped))


def read(path: str) -> bytes:
    """The whole file; FileNotFoundError if there is none."""
    fs, stripped = _fs(path)
    return with_retries(path, lambda: fs.cat_file(stripped))


def write(path: str, data: bytes) -> None:
    """Creates or replaces `path` holding `data`, never seen half-written: a local file is written beside and
    renamed over (a rename replaces atomically); an object store shows an object only once its upload completed."""
    fs, stripped = _fs(path)
    if is_local(path):
        fs.makedirs(stripped.rsplit("/", 1)[0], exist_ok=True)
        staging = f"{stripped}.{uuid.uuid4().hex}.tmp"
        with_retries(path, lambda: fs.pipe_file(staging, data))
        fs.mv(staging, stripped)
    else:
        with_retries(path, lambda: fs.pipe_file(stripped, data))


def open_write(path: str) -> IO[bytes]:
    """A new file to stream into (a shard); a local one's folder is made first."""
    fs, stripped = _fs(path)
    if is_local(path):
        fs.makedirs(stripped.rsplit("/", 1)[0], exist_ok=True)
    return with_retries(path, lambda: fs.open(stripped, "wb"))


def copy(source: str, destination: str) -> None:
    """Copies a file: within one store by the store (a bucket's copy never brings the bytes here), between two
    through this machine."""
    fs, stripped = _fs(source)
    target_fs, target = _fs(destination)
    if fs.protocol != target_fs.protocol:
        write(destination, read(source))
        return
    if is_local(destination):
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    with_retries(source, lambda: fs.copy(stripped, target))


def delete(paths: list[str]) -> None:
    """Deletes files and folders (with everything in them); one already gone is no error."""
    for path in paths:
        fs, stripped = _fs(path)
        try:
            with_retries(path, lambda: fs.rm(stripped, recursive=True))
        except FileNotFoundError:
            pass


def glob(pattern: str) -> list[str]:
    """The files and folders the pattern matches, fresh from the store (no cached listing), sorted."""
    fs, stripped = _fs(pattern)
    fs.invalidate_cache()
    return sorted(_uri(fs, pattern, path) for path in with_retries(pattern, lambda: fs.glob(stripped)))
