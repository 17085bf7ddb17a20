"""Reader: expands an input pattern into file URIs inside the pipeline, spreads them out, reads bytes via fsspec."""
from __future__ import annotations

import logging
import os
import re
import stat
from typing import Callable, Iterator, Optional, Union

import apache_beam as beam
import fsspec
from fsspec.utils import glob_translate

from transforms.faults import FileTooLargeError, NotAFileError, StoreError, with_retries
from transforms.internals import output_types
from transforms.metrics import StageMetrics
from transforms.records import ERROR_OUTPUT, ERRORS, ListingFailure, error_row, exception_row
from transforms.stores import is_local, use_worker_options

DEFAULT_MAX_BYTES = 64 << 20
_LOG = logging.getLogger("zero_shot")


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _to_uri(fs: fsspec.AbstractFileSystem, pattern: str, path: str) -> str:
    # Report paths the way the user wrote them: plain for local patterns, with the protocol otherwise.
    return fs.unstrip_protocol(path) if "://" in pattern else path


def _walk(fs: fsspec.AbstractFileSystem, folder: str, maxdepth: Optional[int],
          unlisted: list[OSError]) -> Iterator[tuple[str, dict]]:
    """(path, listing info) of every non-folder below `folder`, in sorted order, lazily; folders that cannot be
    listed go to `unlisted`. (fsspec's own walk drops them silently below the top folder, whatever `on_error` says.)"""
    try:
        entries = sorted(fs.ls(folder, detail=True), key=lambda info: info["name"])
    except OSError as e:
        e.filename = e.filename or folder
        unlisted.append(e)
        return
    for info in entries:
        name = info["name"].rstrip("/")
        if info["type"] != "directory":
            # A symlink (fsspec types a dangling or looping one "other") reaches the reader: a bad one becomes a
            # `read` error row, never vanishes.
            yield name, info
        elif name != folder.rstrip("/") and not info.get("islink") and (maxdepth is None or maxdepth > 1):
            yield from _walk(fs, name, None if maxdepth is None else maxdepth - 1, unlisted)


def _candidates(pattern: str, unlisted: list[OSError]) -> Iterator[tuple[fsspec.AbstractFileSystem, str, dict]]:
    """Every file a pattern names, with its listing info, lazily: glob matches, all files below a directory, or the
    one file."""
    fs, path = fsspec.core.url_to_fs(pattern)
    if _has_glob(path):
        parts = path.split("/")
        literal = parts[: next(i for i, p in enumerate(parts) if _has_glob(p))]
        root = "/".join(literal) or ("/" if path.startswith("/") else "")
        maxdepth = None if "**" in path else len(parts) - len(literal)
        matches = re.compile(glob_translate(path)).match
        yield from ((fs, file, info) for file, info in _walk(fs, root, maxdepth, unlisted) if matches(file))
    elif fs.isdir(path):
        yield from ((fs, file, info) for file, info in _walk(fs, path, None, unlisted))
    elif fs.isfile(path):
        yield fs, path, fs.info(path)


def content_checksum(info: dict) -> Optional[str]:
    """The MD5 of an object's bytes as its store lists it, or None where the listing has none: GCS's `md5Hash`
    (absent for composite objects), S3's ETag when it is one (a multipart upload's ETag, with a '-', is not)."""
    if info.get("md5Hash"):
        return f"md5:{info['md5Hash']}"
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    return f"md5:{etag}" if len(etag) == 32 and "-" not in etag else None


def _printable(path: str) -> str:
    """A local path whose name is not UTF-8 (undecodable bytes kept as surrogates), with those bytes as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _inside(pattern: str, folder: Optional[str]) -> Callable[[str], bool]:
    """Whether a path the pattern's filesystem lists lies in `folder` (None: never)."""
    if not folder or (fsspec.core.split_protocol(pattern)[0] or "file") != (
            fsspec.core.split_protocol(folder)[0] or "file"):
        return lambda path: False
    prefix = fsspec.core.url_to_fs(folder)[1].rstrip("/") + "/"
    return lambda path: path.startswith(prefix)


def list_files(pattern: str, exclude: Optional[str] = None) -> Iterator[Union[tuple[str, Optional[str]],
                                                                               ListingFailure]]:
    """(uri, content checksum from the listing or None) of every file a pattern names, sorted, less those in the
    folder `exclude` (a job's own --output: its runs are never its inputs). A folder that cannot be listed, or a
    file whose name is not UTF-8, comes as a ListingFailure: it must reach the errors output, never vanish from the
    run."""
    use_worker_options()
    unlisted: list[OSError] = []
    excluded = _inside(pattern, exclude)
    left_out = 0
    for fs, file, info in sorted(_candidates(pattern, unlisted), key=lambda found: found[1]):
        if excluded(file):
            left_out += 1
            continue
        if not _is_utf8(file):
            yield ListingFailure(_to_uri(fs, pattern, _printable(file)), "FileNameError",
                                 "the file name is not valid UTF-8 (shown with its bytes as \\xNN); rename it")
            continue
        yield _to_uri(fs, pattern, file), content_checksum(info)
    if left_out:
        _LOG.warning("--input %s also matches %d files in --output %s: they are left out (a job's output is never "
                     "its input)", pattern, left_out, exclude)
    fs = fsspec.core.url_to_fs(pattern)[0]
    for error in unlisted:
        yield ListingFailure(_to_uri(fs, pattern, _printable(str(error.filename))), type(error).__name__,
                             f"cannot list this folder, so the files in it are not labeled: {error.strerror or error}")


def expand_pattern(pattern: str, exclude: Optional[str] = None) -> Iterator[Union[str, ListingFailure]]:
    """Every file a pattern names (its uri), sorted; `exclude` and ListingFailures as in list_files."""
    for listed in list_files(pattern, exclude):
        yield listed if isinstance(listed, ListingFailure) else listed[0]


def first_match(pattern: str) -> Optional[str]:
    """One file the pattern names, or None; walks lazily so a check on a huge bucket stops at the first hit."""
    use_worker_options()
    return next((_to_uri(fs, pattern, file) for fs, file, _ in _candidates(pattern, []) if _is_utf8(file)), None)


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class MatchFiles(beam.PTransform):
    """pattern -> file URIs (with `checksums`, (uri, checksum or None) pairs: see list_files), expanded by a worker
    at run time and reshuffled so reads spread over workers; files in the folder `exclude` are left out."""

    def __init__(self, pattern: str, checksums: bool = False, exclude: Optional[str] = None):
        super().__init__()
        self.pattern, self.checksums, self.exclude = pattern, checksums, exclude

    def expand(self, pbegin):
        listing = list_files if self.checksums else expand_pattern
        return (
            pbegin
            | "Once" >> beam.Impulse()  # one element; Create would add two more steps to every job
            | "Expand" >> beam.FlatMap(lambda _, pattern, exclude: listing(pattern, exclude), self.pattern,
                                       self.exclude)
            | "Spread" >> beam.Reshuffle()
        )


def _check_regular_file(uri: str) -> None:
    """Raises NotAFileError for a local path that is not a regular file (after following links)."""
    if not is_local(uri):
        return  # object stores hold only objects
    mode = os.stat(uri.removeprefix("file://")).st_mode
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise NotAFileError(f"{kind}, not a regular file: only files are read")


def read_bytes(uri: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The file's bytes, in one request; raises for a file over `max_bytes` or one that is not a regular file."""
    _check_regular_file(uri)
    with fsspec.open(uri, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooLargeError(f"file is larger than {max_bytes} bytes")
    return data


@output_types(tuple[str, bytes], ERROR_OUTPUT)
def read_file(uri: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of one input file as the read stage reads them: at most `max_bytes`, a fault of its store retried
    for --store_retry_s (then StoreError); any other exception is the file's own fault."""
    return with_retries(uri, lambda: read_bytes(uri, max_bytes))


class ReadFiles(beam.DoFn):
    """URI -> (URI, bytes) read through fsspec; (URI, bytes) pairs pass through; failures go to `errors`, and so
    does a ListingFailure. Only regular files are read: a FIFO would block the worker forever, a device never end."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes

    def setup(self):
        use_worker_options()
        self.metrics = StageMetrics("read")

    def process(self, element: Union[str, tuple[str, bytes], ListingFailure]):
        if isinstance(element, ListingFailure):
            self.metrics.failed.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(element.uri, "read", element.error, element.message))
            return
        if isinstance(element, tuple):
            yield element
            return
        read = self.read(element)
        yield beam.pvalue.TaggedOutput(ERRORS, read) if isinstance(read, dict) else (element, read)

    def read(self, uri: str) -> Union[bytes, dict[str, str]]:
        """The bytes of `uri`, or its `read` error row; counted in the read stage's metrics. A fault of the store is
        retried, then ends the job (StoreError): it is no file's row."""
        try:
            with self.metrics.timed():
                data = read_file(uri, self.max_bytes)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - any other failure is the file's own: its dead-letter row
            self.metrics.failed.inc()
            return exception_row(uri, "read", e)
        self.metrics.passed.inc()
        return data
