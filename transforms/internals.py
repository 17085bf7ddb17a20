"""Every process-wide trick and every private API of Beam, argparse or CPython the project uses, each said why.

Each function here is guarded by a test in tests/test_internals.py that fails, naming what changed, when the
internal it relies on changes or disappears on an upgrade of Beam, fsspec or Python: nothing here may break silently.
The process tricks are for a process a job owns (pipelines/__init__.py, the jobs' exit); the library's stages use
only `worker_pipeline_options`, `set_fsspec_defaults` and `bound_s3fs_retries`. Figures: docs/BENCHMARKS.md, 2
cores, 2026-11.

Only the standard library is imported here at module level: pipelines/__init__.py calls the start-up tricks before
Beam is imported.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import io
import os
import sys
import threading
import types
from typing import Any, Callable, Iterator, NoReturn, Optional, TextIO

MODEL_MANAGER = "apache_beam.ml.inference.model_manager"


# --- A job's process: start-up and exit ----------------------------------------------------------------------------

def skip_beams_model_manager() -> None:
    """Beam's optional ModelManager module (used only with RunInference's use_model_manager=True, which no job sets)
    imports torch at its top: 1.8 s of every job's start on 2 cores, and what makes a job with a cached image graph
    import torch at all. In its place goes a module whose ModelManager is None, the value Beam's own fallback gives
    it. (Marking the module absent instead made Beam's fallback also drop the `resource` module it imports beside
    it: RunInference then logged "Resource module is not available" twice per job and lost its memory metric.)"""
    stub = types.ModuleType(MODEL_MANAGER, "Not loaded: no job sets RunInference's use_model_manager.")
    stub.ModelManager = None
    sys.modules.setdefault(MODEL_MANAGER, stub)


def started_as_job(command: str) -> bool:
    """Whether this process was started as `python -m pipelines.<job>` (Python sets sys.argv[0] to "-m" while it
    locates the module, which imports its package first) or as the console `command` pip installed. Imported any
    other way (tests, a user's program), the process is not the job's to change."""
    return sys.argv[:1] == ["-m"] or os.path.basename(sys.argv[0] if sys.argv else "") == command


def pause_garbage_collection() -> None:
    """Python's cyclic collector walks every object the process holds each time the heap has grown by a quarter:
    while Beam, pyarrow and the models are imported and the pipeline is built, four walks over a growing heap for a
    few dozen garbage objects (0.26 s of a 300-image job). Paused until `resume_garbage_collection`."""
    gc.disable()


def resume_garbage_collection() -> None:
    """After the pipeline is built: what exists now lives to the end of the job, so it is frozen out of every later
    walk (gc.freeze), and collection resumes for what the run creates. Nothing if collection was not paused."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def redact_output(wrap: Callable[[TextIO], TextIO]) -> None:
    """Everything the process prints (its log, errors, a traceback) goes through `wrap` (pipelines.redact), so a
    secret never reaches a terminal or a log file."""
    sys.stdout, sys.stderr = wrap(sys.stdout), wrap(sys.stderr)


def quiet_import_time_logging() -> None:
    """Importing Beam without its optional GCP clients logs a warning through the root logger before a job sets up
    its logging: a NullHandler there swallows such chatter, so a configuration error stays the one line a user
    reads."""
    import logging

    logging.getLogger().addHandler(logging.NullHandler())


def quiet_google_client_notices() -> None:
    """Google's client libraries, which Beam imports wherever the [gcp] extra is installed, warn as they are imported
    about their own support plans (the Python versions and grpcio releases they will stop supporting): five
    FutureWarnings on every job's start with some of the versions setup.py allows, before a configuration error's
    one line. Notices for those libraries' users' developers, not for a job's: a job's process leaves out
    FutureWarnings raised in google.* modules, and only those."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google(\.|$)")


def end_process(status: int) -> NoReturn:
    """Ends a job's process with `status`: the exit handlers run (atexit's private `_run_exitfuncs`: logging's
    shutdown among them) and the output is flushed, as at any exit, and then the process ends without deleting, one
    by one, the millions of objects Beam, pyarrow and the models leave behind, which the operating system frees at
    once (0.5-0.9 s of every job)."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def end_process_now(status: int) -> NoReturn:
    """Ends the process from a signal handler: the runner's threads, still running bundles, would hold an ordinary
    exit (and its exit handlers) until they finish. The output is flushed first."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# --- What differs between the Beam releases setup.py allows ---------------------------------------------------------

def output_types(main: Any, tagged: dict[str, Any]) -> Callable[[Any], Any]:
    """Beam's `with_output_types` for a DoFn (or function) with tagged outputs: `main` is the main output's element
    type, `tagged` each tag's. Beam 2.78 infers an undeclared main output from what `process` yields, TaggedOutput
    included, and the next stage's type check then refuses a Union of TaggedOutput and a tuple; so every multi-output
    stage declares its main type. Beam 2.77 and 2.78 read the tags' types as keywords; 2.65, the floor setup.py
    allows, refuses keywords ("All arguments for the 'returns' decorator must be positional arguments") and gives
    the tagged outputs Any, so the tags' types are declared only where Beam takes them."""
    from apache_beam.typehints import with_output_types

    try:
        return with_output_types(main, **tagged)
    except ValueError:
        return with_output_types(main)


# --- Private APIs of Beam and argparse ---------------------------------------------------------------------------

def worker_pipeline_options() -> Optional[Any]:
    """The options Beam gave this worker (the launcher's in Pipeline()): Beam keeps them for its own FileSystems in
    the private `FileSystems._pipeline_options` and offers no public way to read them on a worker; a stage that
    reaches a store through fsspec needs the same settings (endpoint, keys, --store_retry_s)."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems._pipeline_options


def declare_every_beam_option(parser: argparse.ArgumentParser) -> None:
    """Declares on `parser` every flag any Beam options class knows, through their `_add_argparse_args` hook, as
    Beam's own PipelineOptions.get_all_options does: to name flags that neither a job nor Beam knows, which Beam
    would drop silently."""
    from apache_beam.options.pipeline_options import PipelineOptions

    def subclasses(cls: type) -> set[type]:
        return {cls} | {sub for direct in cls.__subclasses__() for sub in subclasses(direct)}

    for options_class in subclasses(PipelineOptions) - {PipelineOptions}:
        try:
            options_class._add_argparse_args(parser)
        except argparse.ArgumentError:
            pass  # two options classes declaring one flag: the first declaration is enough here


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string `parser` takes (--labels, -h ...), from argparse's private table of them: what a
    did-you-mean compares a misspelled flag with."""
    return list(parser._option_string_actions)


def set_fsspec_defaults(settings: dict[str, dict[str, Any]]) -> None:
    """protocol -> settings, given to every fsspec filesystem of that protocol made in this process from now on
    (fsspec's documented, process-wide `fsspec.config.conf`): the store options of the job reach each place that
    opens a store (inputs, label files, thumbnails, the run folder) without passing them through every call."""
    import fsspec

    for protocol, values in settings.items():
        if values:  # fsspec gives them to every filesystem class serving the protocol (s3 and s3a alike)
            fsspec.config.conf.setdefault(protocol, {}).update(values)


S3FS_TRIES = 2  # one quick second try for a blip; waiting out anything longer is faults.with_retries's


def bound_s3fs_retries() -> None:
    """s3fs makes each request up to `S3FileSystem.retries` times (5), a class attribute that no argument and no
    fsspec setting reaches, and a ranged read nests that loop in itself: with 5, a stalled store held one read for
    25 read timeouts (125 s), past the job's --store_retry_s. With 2, one request waits at most 4 read timeouts;
    faults.with_retries retries within the budget. Process-wide, like fsspec's own config (set_fsspec_defaults)."""
    try:
        from s3fs import S3FileSystem
    except ImportError:  # no [aws] extra: no S3 store to bound
        return
    S3FileSystem.retries = S3FS_TRIES


_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def job_logging(own_process: bool) -> Iterator[None]:
    """A job's log: WARNING and up from every library, INFO from the project's own `zero_shot` logger, as `LEVEL
    name: message` on stderr. In a process the job owns, that is the root configuration (basicConfig(force): the
    handlers libraries added at import would print lines twice). A program that calls a job in-process keeps its own
    configuration: only `zero_shot` changes while the job runs (INFO, to stderr, not passed on to the program's
    handlers, which would show its lines twice), and is put back as it was when the job ends; so is PyTorch's
    thread count (set_torch_threads)."""
    import logging

    if own_process:
        logging.basicConfig(level=logging.WARNING, format=_LOG_FORMAT, force=True)
        logging.getLogger("zero_shot").setLevel(logging.INFO)
        yield
        return
    logger = logging.getLogger("zero_shot")
    level, propagate = logger.level, logger.propagate
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        restore_torch_threads()


_quiet_lock = threading.Lock()


@contextlib.contextmanager
def quiet_tool() -> Iterator[None]:
    """Hides what ONNX Runtime's transformer optimizer and quantizer say while they run: a root-logger note for each
    fusion they did not find, printed too, and advice to pre-process the graph at every export. logging.disable and
    sys.stdout are process-wide: a lock keeps two threads of a worker from interleaving them, and both come back as
    they were (a line another thread prints meanwhile is lost: these run while a model loads, once per process)."""
    import logging

    with _quiet_lock:
        disabled = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            logging.disable(disabled)


ONNXRUNTIME_DEFAULT_SEVERITY = 2  # WARNING: ONNX Runtime has no getter, so this is what it starts with


@contextlib.contextmanager
def quiet_onnxruntime() -> Iterator[None]:
    """ONNX Runtime's default logger at ERROR while a graph is quantized (its calibration sessions warn about every
    constant the exporter folded), then back to its default. Sessions the project runs are quieted by their own
    options (`log_severity_level`), which touch nothing else."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    try:
        yield
    finally:
        onnxruntime.set_default_logger_severity(ONNXRUNTIME_DEFAULT_SEVERITY)


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off while a model loads (a bar per worker for loading local weights is noise),
    then as they were."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


_torch_threads_before: Optional[int] = None


def set_torch_threads(threads: int) -> None:
    """PyTorch's intra-op threads (`--local_threads` with `--local_runtime torch`): a process-wide setting, which a
    job run in-process gives back when it ends (job_logging calls restore_torch_threads)."""
    global _torch_threads_before
    import torch

    if _torch_threads_before is None:
        _torch_threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)


def restore_torch_threads() -> None:
    global _torch_threads_before
    if _torch_threads_before is not None:
        import torch

        torch.set_num_threads(_torch_threads_before)
        _torch_threads_before = None
