"""Reader: expands an input pattern into file URIs inside the pipeline, spreads them out, reads bytes via fsspec."""
from __future__ import annotations

import re
from typing import Iterator, Optional, Union

import apache_beam as beam
import fsspec
from fsspec.utils import glob_translate

from transforms.metrics import StageMetrics
from transforms.records import ERRORS, exception_row

DEFAULT_MAX_BYTES = 64 << 20


class FileTooLargeError(ValueError):
    """The file is larger than the reader accepts; it would not be decoded safely anyway."""


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _to_uri(fs: fsspec.AbstractFileSystem, pattern: str, path: str) -> str:
    # Report paths the way the user wrote them: plain for local patterns, with the protocol otherwise.
    return fs.unstrip_protocol(path) if "://" in pattern else path


def expand_pattern(pattern: str) -> Iterator[str]:
    """Every file a pattern names: glob matches, all files below a directory, or the one file; sorted."""
    fs, path = fsspec.core.url_to_fs(pattern)
    if _has_glob(path):
        # Everything but folders: fsspec types a symlink "other", and a dangling or looping one must reach the
        # reader and become a `read` error row, as it does for a directory input, never vanish.
        files = sorted(p for p, info in fs.glob(path, detail=True).items() if info["type"] != "directory")
    elif fs.isdir(path):
        files = sorted(fs.find(path))
    else:
        files = [path] if fs.isfile(path) else []
    for file in files:
        yield _to_uri(fs, pattern, file)


def first_match(pattern: str) -> Optional[str]:
    """One file the pattern names, or None; walks lazily so a check on a huge bucket stops at the first hit."""
    fs, path = fsspec.core.url_to_fs(pattern)
    if not _has_glob(path):
        return next(expand_pattern(pattern), None)
    parts = path.split("/")
    literal = [p for p in parts[: next(i for i, p in enumerate(parts) if _has_glob(p))]]
    root = "/".join(literal) or ("/" if path.startswith("/") else "")
    maxdepth = None if "**" in path else len(parts) - len(literal)
    matches = re.compile(glob_translate(path)).match
    for dirpath, _, files in fs.walk(root, maxdepth=maxdepth):
        for name in sorted(files):
            candidate = f"{dirpath.rstrip('/')}/{name}"
            if matches(candidate):
                return _to_uri(fs, pattern, candidate)
    return None


class MatchFiles(beam.PTransform):
    """pattern -> file URIs, expanded by a worker at run time and reshuffled so reads spread over workers."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = pattern

    def expand(self, pbegin):
        return (
            pbegin
            | "Pattern" >> beam.Create([self.pattern])
            | "Expand" >> beam.FlatMap(expand_pattern)
            | "Spread" >> beam.Reshuffle()
        )


class ReadFiles(beam.DoFn):
    """URI -> (URI, bytes) read through fsspec; (URI, bytes) pairs pass through; failures go to `errors`."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes

    def setup(self):
        self.metrics = StageMetrics("read")

    def process(self, element: Union[str, tuple[str, bytes]]):
        if isinstance(element, tuple):
            yield element
            return
        uri = element
        try:
            with self.metrics.timed(), fsspec.open(uri, "rb") as f:
                data = f.read(self.max_bytes + 1)
            if len(data) > self.max_bytes:
                raise FileTooLargeError(f"file is larger than {self.max_bytes} bytes")
        except Exception as e:  # noqa: BLE001 - any failure of one file belongs in the dead-letter output
            self.metrics.failed.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, exception_row(uri, "read", e))
            return
        self.metrics.passed.inc()
        yield uri, data
