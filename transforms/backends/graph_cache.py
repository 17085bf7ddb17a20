"""The per-machine cache of ONNX graphs made from checked weights (the local backend's image model, the hf backend's
image towers): a warm start reads the graph instead of making it, and needs neither torch nor the exporter; and the
ONNX Runtime session they run in."""
from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import Callable, Optional, Union

CACHE_ENV = "ZERO_SHOT_CACHE"  # where graphs are kept; "off" makes them at every start
_LOG = logging.getLogger("zero_shot")


def cache_folder() -> Optional[Path]:
    """$ZERO_SHOT_CACHE, else $XDG_CACHE_HOME/beam-zero-shot-labels, else ~/.cache/beam-zero-shot-labels; None when
    $ZERO_SHOT_CACHE is "off"."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "beam-zero-shot-labels"


def _stamp(path: Path, digest: str) -> str:
    """What the .sha256 file records of a checked graph: its digest, then its size and change time, which let a
    later start trust the file without hashing it again while neither has changed."""
    status = path.stat()
    return f"{digest} {status.st_size} {status.st_mtime_ns}"


def _checked(path: Path) -> bool:
    """Whether the graph at `path` is the one its .sha256 file names: by size and change time where the stamp has
    them and they still hold (a warm start reads no byte of a graph of hundreds of MB), else by hashing it."""
    try:
        digest, *seen = path.with_suffix(".sha256").read_text().split()
        if seen and _stamp(path, digest) == " ".join([digest, *seen]):
            return True
        hashed = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                hashed.update(chunk)
        if hashed.hexdigest() != digest:
            return False
        path.with_suffix(".sha256").write_text(_stamp(path, digest))  # a stamp of the old form, or a touched file
        return True
    except (OSError, ValueError):  # no digest yet (a writer between its two files), or a file this user may not read
        return False


def cached_graph(name: str, key: str, export: Callable[[], bytes]) -> Union[str, bytes]:
    """The graph `name` made for `key` (what it was made from): the path of the file in the cache folder, which ONNX
    Runtime reads itself (no copy of it in Python), or, where no cache can be written, the bytes `export` made. A
    graph that is not the one its .sha256 file names is made again; a cache that cannot be read or written only
    costs making the graph."""
    folder = cache_folder()
    path = folder / f"{name}-{key[:32]}.onnx" if folder else None
    if path is not None and path.is_file() and _checked(path):
        return str(path)
    graph = export()
    if path is None:
        return graph
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        staging.write_bytes(graph)
        os.replace(staging, path)  # a reader sees a whole graph or none, and trusts none without its digest
        stamp = path.with_suffix(".sha256")
        staging = stamp.with_name(f"{stamp.name}.{uuid.uuid4().hex}.tmp")
        staging.write_text(_stamp(path, hashlib.sha256(graph).hexdigest()))
        os.replace(staging, stamp)
    except OSError as e:  # a read-only home on a worker: export at every start instead
        _LOG.info("cannot cache the ONNX graph %s in %s (%s); it will be made at every start", name, folder, e)
        return graph
    return str(path)


def graph_bytes(graph: Union[str, bytes]) -> bytes:
    """The bytes of what cached_graph gave: for the tools that rewrite a graph (quantization)."""
    return Path(graph).read_bytes() if isinstance(graph, str) else graph


def cpu_session(graph: Union[str, bytes], threads: int = 0, all_optimizations: bool = True):
    """An ONNX Runtime session over `graph` (a file's path, or its bytes) on the CPU: `threads` intra-op threads (0:
    one per physical core), one batch at a time (parallelism lives inside the operators); ONNX Runtime's basic graph
    optimizations only where the graph was optimized before it was cached."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # graph-cleanup notices of the exporter's constants are noise
    options.graph_optimization_level = (onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL if all_optimizations else
                                        onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
