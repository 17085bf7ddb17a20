"""The per-machine cache of ONNX graphs made from checked weights (the local backend's image model, the hf backend's
image towers): a warm start reads the graph instead of making it, and needs neither torch nor the exporter; and the
ONNX Runtime session they run in."""
from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import Callable, Optional

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


def cached_graph(name: str, key: str, export: Callable[[], bytes]) -> bytes:
    """The graph `name` made for `key` (what it was made from): read from the cache folder, or made by `export` and
    written there (atomically: a reader sees a whole file or none). A graph whose bytes are not the ones its .sha256
    file names is not used; a cache that cannot be read or written only costs making the graph."""
    folder = cache_folder()
    path = folder / f"{name}-{key[:32]}.onnx" if folder else None
    if path is not None and path.is_file():
        try:
            graph, digest = path.read_bytes(), path.with_suffix(".sha256").read_text().strip()
        except OSError:  # no digest yet (a writer between its two files), or a file this user may not read
            digest = None
        if digest is not None and digest == hashlib.sha256(graph).hexdigest():
            return graph
    graph = export()
    if path is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256(graph).hexdigest().encode()
            for target, data in ((path, graph), (path.with_suffix(".sha256"), digest)):
                staging = target.with_name(f"{target.name}.{uuid.uuid4().hex}.tmp")
                staging.write_bytes(data)
                os.replace(staging, target)
        except OSError as e:  # a read-only home on a worker: export at every start instead
            _LOG.info("cannot cache the ONNX graph %s in %s (%s); it will be made at every start", name, folder, e)
    return graph


def cpu_session(graph: bytes, threads: int = 0, all_optimizations: bool = True):
    """An ONNX Runtime session over `graph` on the CPU: `threads` intra-op threads (0: one per physical core), one
    batch at a time (parallelism lives inside the operators); ONNX Runtime's basic graph optimizations only where the
    graph was optimized before it was cached."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # graph-cleanup notices of the exporter's constants are noise
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = (onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL if all_optimizations else
                                        onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
