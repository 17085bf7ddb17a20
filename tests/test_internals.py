"""Guards of transforms/internals.py: each fails, saying what changed, when a Beam, fsspec or Python upgrade moves the
internal a trick relies on, or makes the trick unneeded; and of how Beam reads the transforms' type hints."""
from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import re
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import apache_beam.ml.inference
import fsspec
import pytest
from apache_beam import typehints
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.cli import unknown_beam_args
from transforms import internals, stores

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_beams_model_manager_still_imports_torch_and_its_fallback_is_still_none():
    spec = importlib.machinery.PathFinder.find_spec("model_manager", apache_beam.ml.inference.__path__)
    if spec is None and tuple(map(int, apache_beam.__version__.split(".")[:2])) < (2, 72):
        pytest.skip("Beam before 2.72 has no model manager module: the stub stands in for nothing there")
    assert spec is not None, f"{internals.MODEL_MANAGER} is gone: remove skip_beams_model_manager"
    source = Path(spec.origin).read_text()
    assert "import torch" in source, "Beam's model manager no longer imports torch: the stub saves nothing, remove it"
    base = Path(apache_beam.ml.inference.__file__).with_name("base.py").read_text()
    assert "ModelManager = None" in base, "Beam's fallback for a missing model manager changed: match it"


def test_a_job_process_imports_beams_inference_without_torch_and_keeps_the_resource_module():
    done = _python("import sys; sys.argv = ['-m']; import pipelines, gc; assert not gc.isenabled(); "
                   "from apache_beam.ml.inference import base; assert getattr(base, 'ModelManager', None) is None; "
                   "assert 'torch' not in sys.modules, 'torch imported'; "
                   "from transforms import internals; internals.resume_garbage_collection(); "
                   "assert gc.isenabled() and gc.get_freeze_count() > 0; print(base.resource is not None)")
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]


def test_a_job_process_leaves_out_the_notices_googles_clients_print_as_they_are_imported():
    done = _python("import sys, warnings; sys.argv = ['-m']; import pipelines; "
                   "warnings.warn_explicit('support ends', FutureWarning, 'x.py', 1, module='google.api_core.x'); "
                   "warnings.warn_explicit('yours', FutureWarning, 'y.py', 1, module='mine')")
    assert done.returncode == 0 and "support ends" not in done.stderr and "yours" in done.stderr, done.stderr


def test_imported_by_a_program_the_package_leaves_its_process_alone():
    done = _python("import gc, sys; out = sys.stdout; import pipelines; "
                   "assert gc.isenabled() and sys.stdout is out and not pipelines.STARTED_AS_JOB")
    assert done.returncode == 0, done.stderr[-2000:]


def test_end_process_runs_the_exit_handlers_flushes_and_keeps_the_status(tmp_path):
    marker = tmp_path / "ran"
    done = _python("import atexit, pathlib, sys; from transforms import internals; "
                   "atexit.register(lambda: pathlib.Path(sys.argv[1]).write_text('yes')); "
                   "print('unflushed', end=''); internals.end_process(3)", str(marker))
    assert done.returncode == 3 and done.stdout == "unflushed" and marker.read_text() == "yes"
    assert callable(getattr(__import__("atexit"), "_run_exitfuncs", None))


def test_end_process_now_leaves_with_the_status_while_a_thread_still_runs():
    done = _python("import threading, time; from transforms import internals; "
                   "threading.Thread(target=time.sleep, args=(600,)).start(); print('stopping'); "
                   "internals.end_process_now(143)")
    assert done.returncode == 143 and done.stdout == "stopping\n"


def test_the_worker_options_are_what_beam_gave_its_filesystems():
    options = PipelineOptions(["--s3_endpoint_url", "http://127.0.0.1:1"])
    before = internals.worker_pipeline_options()
    try:
        FileSystems.set_options(options)
        assert internals.worker_pipeline_options() is options, "Beam no longer keeps FileSystems._pipeline_options"
    finally:
        FileSystems.set_options(before)


def test_every_beam_flag_is_declared_and_only_unknown_ones_are_named():
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    internals.declare_every_beam_option(parser)
    known = internals.option_names(parser)
    for flag in ("--runner", "--s3_endpoint_url", "--project", "--direct_num_workers", "--store_retry_s"):
        assert flag in known, f"{flag} is no longer declared through _add_argparse_args"
    assert unknown_beam_args(["--runner", "DirectRunner", "--lables", "x"]) == ["--lables", "x"]


def test_option_names_are_argparses_table():
    parser = argparse.ArgumentParser()
    parser.add_argument("--labels")
    assert {"-h", "--help", "--labels"} <= set(internals.option_names(parser))


def test_fsspec_gives_the_job_settings_to_every_new_filesystem(monkeypatch):
    for owner, name in ((fsspec.config, "conf"), (stores, "_applied"), (stores, "_retry_s"),
                        (FileSystems, "_pipeline_options")):  # all restored after the test
        monkeypatch.setattr(owner, name, {} if name == "conf" else getattr(owner, name))
    stores.use_job_options(PipelineOptions(["--s3_endpoint_url", "http://127.0.0.1:1", "--s3_access_key_id", "k"]))
    s3 = fsspec.filesystem("s3", skip_instance_cache=True)
    assert s3.key == "k" and s3.client_kwargs.get("endpoint_url", s3.endpoint_url) == "http://127.0.0.1:1"


def test_s3fs_still_takes_its_tries_from_the_class_attribute_that_is_bounded():
    """If s3fs renames `retries` or stops reading it, the bound does nothing: a stalled store would hold each
    request for 25 timeouts again."""
    import inspect

    import s3fs.core

    original = s3fs.core.S3FileSystem.retries
    try:
        internals.bound_s3fs_retries()
        assert s3fs.core.S3FileSystem.retries == internals.S3FS_TRIES
    finally:
        s3fs.core.S3FileSystem.retries = original
    assert "retries=self.retries" in inspect.getsource(s3fs.core.S3FileSystem._call_s3)
    assert "retries=fs.retries" in inspect.getsource(s3fs.core)  # the ranged read's own loop


def test_output_types_declare_the_main_output_and_the_tags_where_beam_reads_them():
    @internals.output_types(tuple[str, int], {"errors": dict[str, str]})
    class Split(beam.DoFn):
        def process(self, number: int):
            if number < 0:
                yield beam.pvalue.TaggedOutput("errors", {"number": str(number)})
            else:
                yield str(number), number

    outputs = beam.Pipeline() | beam.Create([1, -1]) | beam.ParDo(Split()).with_outputs("errors", main="numbers")
    # the main output as declared, never Beam 2.78's inference from `process` (a Union with TaggedOutput)
    assert outputs.numbers.element_type == typehints.Tuple[str, int]
    assert outputs.errors.element_type in (typehints.Dict[str, str], typehints.Any)  # Any: Beam 2.65


def test_no_transform_hints_an_input_beam_cannot_check():
    """Beam 2.78 takes an annotation on a PTransform's expand() input as its input type hint, and for anything but a
    PCollection or PBegin logs "This input type hint will be ignored" on every job that applies it."""
    import inspect
    import pkgutil

    import transforms

    for module in pkgutil.walk_packages(transforms.__path__, "transforms."):
        for _, cls in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if issubclass(cls, beam.PTransform) and cls.__module__ == module.name and "expand" in vars(cls):
                (_, given, *_) = inspect.signature(cls.expand).parameters.values()
                hint = given.annotation  # a string: the modules use `from __future__ import annotations`
                checkable = re.match(r"(beam\.)?(pvalue\.)?(PCollection|PBegin)\b", str(hint))
                assert hint is inspect.Parameter.empty or checkable, f"{cls.__name__}.expand({given}): Beam warns on it"


def test_a_job_called_in_process_leaves_the_programs_logging_and_threads_as_they_were(photos, tmp_path, capsys):
    """A notebook runs a job: its own root configuration, the project's logger and PyTorch's threads are what they
    were after it."""
    import logging

    import torch

    from pipelines import classify_images

    logger, root = logging.getLogger("zero_shot"), logging.getLogger()
    before = (logger.level, logger.propagate, list(logger.handlers), list(root.handlers), root.level,
              torch.get_num_threads())
    assert classify_images.main(["--input", f"{photos}/chelsea.jpg", "--labels", "everyday", "--output",
                                 str(tmp_path / "out"), "--local_runtime", "torch", "--local_threads", "1"]) == 0
    assert (logger.level, logger.propagate, list(logger.handlers), list(root.handlers), root.level,
            torch.get_num_threads()) == before
    assert "labeled 1 image" in capsys.readouterr().out


def test_quiet_tool_hides_a_tools_chatter_and_puts_logging_and_stdout_back(capsys):
    import logging

    stdout, disabled = sys.stdout, logging.root.manager.disable
    with internals.quiet_tool():
        print("a note on each fusion")
        logging.getLogger("onnxruntime").warning("pre-process the graph first")
        assert logging.root.manager.disable == logging.WARNING
    assert sys.stdout is stdout and logging.root.manager.disable == disabled
    captured = capsys.readouterr()
    assert "fusion" not in captured.out + captured.err and "pre-process" not in captured.out + captured.err


def test_onnxruntime_and_transformers_get_their_default_chatter_back():
    """ONNX Runtime has no getter for its default logger's severity: its default is what quiet_onnxruntime puts
    back, and transformers' progress bars come back on."""
    import onnxruntime
    from transformers.utils import logging as transformers_logging

    assert "set_default_logger_severity" in dir(onnxruntime) and "get_default_logger_severity" not in dir(onnxruntime)
    with internals.quiet_onnxruntime():
        pass
    assert transformers_logging.is_progress_bar_enabled()
    with internals.no_progress_bars():
        assert not transformers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled()


def test_no_module_but_internals_changes_the_process():
    """The process-wide switches are called in transforms/internals.py only."""
    tricks = re.compile(r"logging\.disable\(|redirect_stdout|set_default_logger_severity|disable_progress_bar\(|"
                        r"set_num_threads\(|basicConfig\(")
    found = [str(path.relative_to(REPO)) for folder in ("transforms", "pipelines")
             for path in (REPO / folder).rglob("*.py")
             if path.name != "internals.py" and tricks.search(path.read_text(encoding="utf-8"))]
    assert found == []
