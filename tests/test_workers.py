"""Remote workers get the versions the launcher ran with: the job hands Beam a requirements file of them, which Beam
ships to every worker that installs the package fresh (Dataflow's --setup_file, a portable runner's containers)."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from pipelines.workers import launcher_requirements, with_launcher_versions


def _installed(name: str) -> str:
    return metadata.version(name).split("+")[0]


def test_a_dataflow_job_ships_the_launchers_versions_to_its_workers(capsys):
    args = with_launcher_versions(["--runner", "DataflowRunner", "--project", "p", "--region", "europe-west1",
                                   "--temp_location", "gs://b/tmp", "--setup_file", "./setup.py"])
    setup = PipelineOptions(args).view_as(SetupOptions)
    assert setup.setup_file == "./setup.py" and setup.requirements_cache == "skip"
    pins = Path(setup.requirements_file).read_text().splitlines()[1:]
    assert pins == launcher_requirements()
    # beam's [gcp] and [aws] extras (google-cloud-pubsub, boto3) are reached through the package's own extras, after
    # apache-beam itself was reached without them
    for name in ("apache-beam", "numpy", "pillow", "pyarrow", "onnxruntime", "fsspec", "nomic", "tokenizers",
                 "google-cloud-pubsub", "boto3"):
        assert f"{name}=={_installed(name)}" in {pin.lower() for pin in pins}, name
    # the package itself comes from --setup_file; the test tools stay on the launcher; a local label ("+cpu") is
    # not on the package index, and `torch==2.13.0` matches the launcher's 2.13.0+cpu
    assert not [pin for pin in pins if pin.lower().startswith(("beam-zero-shot-labels==", "pytest==", "duckdb=="))]
    assert f"torch=={_installed('torch')}" in pins and not [pin for pin in pins if "+" in pin]
    said = capsys.readouterr().out
    assert f"versions of {len(pins)} packages (--requirements_file {setup.requirements_file})" in said


def test_workers_that_are_this_process_or_a_users_own_requirements_are_left_alone(tmp_path):
    mine = tmp_path / "requirements.txt"
    mine.write_text("numpy\n")
    for args in ([], ["--runner", "DirectRunner"], ["--runner", "PortableRunner", "--environment_type", "LOOPBACK"],
                 ["--runner", "DataflowRunner", "--requirements_file", str(mine)]):
        assert with_launcher_versions(args) == args
