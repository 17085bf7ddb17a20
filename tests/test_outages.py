"""Outages: the S3 store (moto's server on 127.0.0.1) goes away mid-job. The job must fail with one line naming the
store, in bounded time, commit nothing and leave the previous run as it was; an outage is never a file's error row.
A rerun once the store is back resumes from the vectors the failed run saved."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import boto3
import fsspec
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from benchmarks.buckets import s3_server
from tests.conftest import REPO
from transforms.run_folder import SUCCESS, read_manifest, read_run
from transforms.stores import use_job_options

pytestmark = pytest.mark.slow
IMAGES = 200
HANG_GUARD_S = 600  # far above the 2 minutes an outage may take: a hang fails the test instead of stalling the suite


class Store:
    """moto's S3 server with a bucket of IMAGES small photos; stop() takes it away, start() brings it back (with
    its objects, on the same port)."""

    def __init__(self):
        self.server, self.endpoint, self.log = s3_server()
        self.flags = ["--s3_endpoint_url", self.endpoint, "--s3_access_key_id", "testing",
                      "--s3_secret_access_key", "testing-secret", "--s3_region_name", "us-east-1"]
        use_job_options(PipelineOptions(self.flags))  # this process reads the store as the job does
        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing-secret", region_name="us-east-1")
        client.create_bucket(Bucket="bkt")
        for i in range(IMAGES):
            buffer = io.BytesIO()
            Image.new("RGB", (48, 40), (i % 256, (7 * i) % 256, (13 * i) % 256)).save(buffer, "JPEG")
            client.put_object(Bucket="bkt", Key=f"photos/{i:04d}.jpg", Body=buffer.getvalue())

    def gets(self) -> int:
        return sum(self.log.gets(r"GET /bkt/(photos/[^ ?]+)").values())

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        """The server back on its port, with the objects it held (moto keeps them per process)."""
        from moto.server import ThreadedMotoServer

        host, port = self.server.get_host_and_port()
        self.server = ThreadedMotoServer(ip_address=host, port=port, verbose=True)
        self.server.start()

    def close(self) -> None:
        self.log.close()
        fsspec.config.conf.pop("s3", None)


@pytest.fixture
def store(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    store = Store()
    yield store
    store.close()
    try:
        store.stop()
    except Exception:  # noqa: BLE001 - already stopped by the test
        pass


def _start(store: Store, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.classify_images", "--input", "s3://bkt/photos/*.jpg", "--labels",
         "everyday", "--batch_size", "8", *store.flags, *flags],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def _stop_when(store: Store, job: subprocess.Popen, ready) -> float:
    """Stops the store once `ready()` holds; returns when it did (time.monotonic)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not ready():
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    store.stop()
    return time.monotonic()


def _failed_after(job: subprocess.Popen, stopped: float) -> tuple[str, float]:
    out, err = job.communicate(timeout=HANG_GUARD_S)
    seconds = time.monotonic() - stopped
    assert job.returncode not in (0, None), out[-2000:]
    return err, seconds


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("when", ["early", "late"])
def test_the_input_store_going_away_fails_the_job_with_one_line_and_commits_nothing(store, tmp_path, when):
    output = tmp_path / "out"
    job = _start(store, "--output", str(output), "--max_error_fraction", "1")
    at = 5 if when == "early" else IMAGES - 7
    stopped = _stop_when(store, job, lambda: store.gets() >= at)
    err, seconds = _failed_after(job, stopped)
    line = _last_line(err)
    assert line.startswith("error: the job failed: StoreError: the store s3://bkt failed"), err[-3000:]
    assert "--store_retry_s" in line
    print(f"input store gone after {at} reads: exit {seconds:.0f} s later")  # docs/BENCHMARKS.md
    assert not (output / SUCCESS).exists()


def test_the_output_store_going_away_fails_the_job_and_keeps_the_previous_run(store, tmp_path, photos):
    local = tmp_path / "photos"
    local.mkdir()
    for i in range(60):
        (local / f"{i:03d}.jpg").write_bytes((photos / "chelsea.jpg").read_bytes()[:-2] + bytes([i, 0xD9]))
    flags = ["--input", f"{local}/*.jpg", "--labels", "everyday", "--output", "s3://bkt/out", *store.flags]
    first = subprocess.run([sys.executable, "-m", "pipelines.classify_images", *flags], cwd=REPO,
                           capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert first.returncode == 0, first.stderr[-3000:]
    previous = read_manifest("s3://bkt/out")
    job = subprocess.Popen([sys.executable, "-m", "pipelines.classify_images", *flags, "--overwrite"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stopped = _stop_when(store, job, lambda: re.search(r"PUT /bkt/out/run-[^/ ]+/_STARTED", "\n".join(
        store.log.lines)) is not None)
    err, seconds = _failed_after(job, stopped)
    print(f"output store gone at the start: exit {seconds:.0f} s later")  # docs/BENCHMARKS.md
    assert "s3://bkt" in _last_line(err) or "127.0.0.1" in _last_line(err), err[-3000:]
    assert len(err.strip().splitlines()[-1]) < 600
    # The store back with what it held: the previous run is still the one readers get.
    store.restart()
    assert read_manifest("s3://bkt/out").run_id == previous.run_id
    assert len(read_run("s3://bkt/out")) == 60



def test_progress_on_a_bucket_is_resumed_from_the_bucket(store):
    """Resume on an object store (no rename): a run whose commit failed, then the same command again."""
    fs = fsspec.filesystem("s3")
    fs.pipe("bkt/out/_COMMIT-00000001", b"another job")  # the claim is taken: the commit fails
    flags = ["--output", "s3://bkt/out", "--max_error_fraction", "0"]
    failed = _start(store, *flags)
    _, err = failed.communicate(timeout=HANG_GUARD_S)
    assert failed.returncode == 1 and "ConcurrentRunError" in err.strip().splitlines()[-1], err[-3000:]
    fs.rm("bkt/out/_COMMIT-00000001")
    store.log.lines.clear()
    rerun = _start(store, *flags)
    out, err = rerun.communicate(timeout=HANG_GUARD_S)
    assert rerun.returncode == 0, err[-3000:]
    assert f"resumed {IMAGES} images from the vectors an unfinished run saved" in out
    assert store.gets() == 0  # not one image fetched again
    assert len(read_run("s3://bkt/out")) == IMAGES
