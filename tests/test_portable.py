"""The job on Beam's portable runner: the Fn API path that Flink, Spark and Dataflow Runner v2 drive, against Beam's
own job service (and, for EXTERNAL workers, its worker pool) on 127.0.0.1."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import classify_images
from transforms.run_folder import read_manifest, read_run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(module: str, port_flag: str, log: Path) -> tuple[subprocess.Popen, int]:
    """Starts `python -m module PORT_FLAG <free port>` and waits until it accepts connections."""
    port = _free_port()
    # The worker pool starts SDK workers as `python`: the one of this environment must come first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([sys.executable, "-m", module, port_flag, str(port)], cwd=REPO, env=env,
                              stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)


@pytest.fixture(scope="module")
def job_service(tmp_path_factory):
    server, port = _serve("apache_beam.runners.portability.local_job_service_main", "--port",
                          tmp_path_factory.mktemp("job_service") / "log")
    yield f"localhost:{port}"
    server.kill()


@pytest.fixture(scope="module")
def worker_pool(tmp_path_factory):
    server, port = _serve("apache_beam.runners.worker.worker_pool_main", "--service_port",
                          tmp_path_factory.mktemp("worker_pool") / "log")
    yield f"localhost:{port}"
    server.kill()


@pytest.fixture(scope="module")
def inputs_and_direct_rows(tmp_path_factory, photos, hostile_dir):
    """Real photos and hostile files, and what the DirectRunner makes of them."""
    inputs = tmp_path_factory.mktemp("inputs")
    for path in [*photos.iterdir(), hostile_dir / "truncated.jpg", hostile_dir / "cmyk.jpg"]:
        (inputs / path.name).write_bytes(path.read_bytes())
    out = tmp_path_factory.mktemp("direct") / "out"
    assert classify_images.main(["--input", f"{inputs}/*", "--labels", "everyday", "--output", str(out),
                                  "--max_error_fraction", "0.2"]) == 0
    return inputs, read_run(str(out)), read_run(str(out), "errors")


def _by_uri(rows):
    return {row["uri"]: row for row in rows}


@pytest.mark.parametrize("environment", ["loopback", "external"])
def test_the_portable_runner_gives_the_direct_runners_rows(environment, job_service, request, tmp_path,
                                                           inputs_and_direct_rows):
    inputs, results, errors = inputs_and_direct_rows
    workers = (["--environment_type", "LOOPBACK"] if environment == "loopback" else
               ["--environment_type", "EXTERNAL", "--environment_config", request.getfixturevalue("worker_pool")])
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.classify_images", "--input", f"{inputs}/*", "--labels", "everyday",
         "--output", str(out), "--max_error_fraction", "0.2", "--runner", "PortableRunner", "--job_endpoint",
         job_service, *workers],
        cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"run {read_manifest(str(out)).run_id} in {out} (_SUCCESS written)" in done.stdout
    portable = _by_uri(read_run(str(out)))
    assert portable.keys() == _by_uri(results).keys() and len(portable) == 8
    for uri, row in _by_uri(results).items():
        assert portable[uri]["labels"] == row["labels"] and portable[uri]["sha256"] == row["sha256"]
        assert portable[uri]["scores"] == pytest.approx(row["scores"], abs=1e-5)
        assert portable[uri]["probs"] == pytest.approx(row["probs"], abs=1e-5)
    assert _by_uri(read_run(str(out), "errors")) == _by_uri(errors) and len(errors) == 1
    assert "labeled 8 images, 1 error (11.1% of inputs; read 0, decode 1, embed 0)" in done.stdout
    # EXTERNAL workers may live on other machines: Beam ships them the launcher's versions (pipelines/workers.py)
    assert ("the workers install this launcher's versions of" in done.stdout) == (environment == "external")
