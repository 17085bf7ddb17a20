"""Outages: the S3 store (moto's server on 127.0.0.1, in its own process) goes away mid-job: killed (connections
refused) or paused with SIGSTOP (connections open, no answer: a frozen load balancer). The job must fail with one
line naming the store, in bounded time, commit nothing and leave the previous run as it was; an outage is never a
file's error row, and a stall shorter than --store_retry_s is waited out. A rerun resumes from the vectors saved."""
from __future__ import annotations

import dataclasses
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from tests.conftest import REPO
from transforms.records import EMBEDDINGS, embeddings_schema
from transforms.run_folder import SUCCESS, read_manifest, read_run
from transforms.stores import use_job_options
from transforms.write import Shard

pytestmark = pytest.mark.slow
IMAGES = 200
HANG_GUARD_S = 600  # far above the 2 minutes an outage may take: a hang fails the test instead of stalling the suite
BOUND_S = 120  # from the stall or the kill to the job's exit, at the default --store_retry_s (60 s)


class Store:
    """moto's S3 server in its own process, with a bucket of IMAGES small photos: pause() stalls it (SIGSTOP: the
    kernel still accepts connections, nothing answers), resume() lets it go on, kill() takes it away."""

    def __init__(self, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.log = log
        with log.open("w") as out:
            self.server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                           stdout=out, stderr=subprocess.STDOUT)
        self.endpoint = f"http://127.0.0.1:{port}"
        self.flags = ["--s3_endpoint_url", self.endpoint, "--s3_access_key_id", "testing",
                      "--s3_secret_access_key", "testing-secret", "--s3_region_name", "us-east-1"]
        use_job_options(PipelineOptions(self.flags))  # this process reads the store as the job does
        self.client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                                   aws_secret_access_key="testing-secret", region_name="us-east-1")
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client.create_bucket(Bucket="bkt")
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                assert time.monotonic() < deadline and self.server.poll() is None, log.read_text()[-2000:]
                time.sleep(0.1)
        for i in range(IMAGES):
            buffer = io.BytesIO()
            Image.new("RGB", (48, 40), (i % 256, (7 * i) % 256, (13 * i) % 256)).save(buffer, "JPEG")
            self.client.put_object(Bucket="bkt", Key=f"photos/{i:04d}.jpg", Body=buffer.getvalue())

    def requests(self, pattern: str) -> int:
        """How many requests the server logged whose line matches `pattern` ("GET /bkt/photos/")."""
        return len(re.findall(pattern, self.log.read_text()))

    def gets(self) -> int:
        return self.requests(r"GET /bkt/photos/")

    def pause(self) -> None:
        self.server.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.server.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        self.server.kill()
        self.server.wait()

    def close(self) -> None:
        self.resume()
        self.kill()
        fsspec.config.conf.pop("s3", None)


@pytest.fixture
def store(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    store = Store(tmp_path / "server.log")
    yield store
    store.close()


def _start(store: Store, *flags: str, job: str = "classify_images") -> subprocess.Popen:
    inputs = ["--input", "s3://bkt/photos/*.jpg", "--labels", "everyday", "--batch_size", "8"]
    return subprocess.Popen([sys.executable, "-m", f"pipelines.{job}", *(inputs if job == "classify_images" else ()),
                             *store.flags, *flags],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def _when(job: subprocess.Popen, ready) -> None:
    """Returns once `ready()` holds (the job still running)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not ready():
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _fault(store: Store, how: str) -> float:
    """The store paused or killed; when (time.monotonic)."""
    store.pause() if how == "paused" else store.kill()
    return time.monotonic()


def _failed_after(job: subprocess.Popen, since: float) -> tuple[str, float]:
    out, err = job.communicate(timeout=HANG_GUARD_S)
    seconds = time.monotonic() - since
    assert job.returncode not in (0, None), out[-2000:]
    return err, seconds


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def _says_the_store_failed(err: str, before_the_run: bool = False) -> None:
    line = _last_line(err)
    said = "error: cannot read --embeddings 's3://bkt/kept': " if before_the_run else "error: the job failed: "
    assert line.startswith(f"{said}StoreError: the store s3://bkt failed"), err[-3000:]
    assert "--store_retry_s" in line and "a rerun resumes" in line


@pytest.mark.parametrize("how, when", [("paused", "early"), ("paused", "late"), ("killed", "early"),
                                       ("killed", "late")])
def test_the_input_store_failing_mid_job_ends_it_with_one_line_and_commits_nothing(store, tmp_path, how, when):
    output = tmp_path / "out"
    job = _start(store, "--output", str(output), "--max_error_fraction", "1")
    at = 5 if when == "early" else IMAGES - 7
    _when(job, lambda: store.gets() >= at)
    err, seconds = _failed_after(job, _fault(store, how))
    _says_the_store_failed(err)
    print(f"input store {how} after {at} reads: exit {seconds:.0f} s later")  # docs/BENCHMARKS.md
    assert seconds < BOUND_S
    assert not (output / SUCCESS).exists()


def _written_once(store: Store, tmp_path: Path, photos: Path) -> list[str]:
    """A first run of 60 local photos committed to s3://bkt/out; the flags that made it."""
    local = tmp_path / "photos"
    local.mkdir()
    for i in range(60):
        (local / f"{i:03d}.jpg").write_bytes((photos / "chelsea.jpg").read_bytes()[:-2] + bytes([i, 0xD9]))
    flags = ["--input", f"{local}/*.jpg", "--labels", "everyday", "--output", "s3://bkt/out", *store.flags]
    first = subprocess.run([sys.executable, "-m", "pipelines.classify_images", *flags], cwd=REPO,
                           capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert first.returncode == 0, first.stderr[-3000:]
    return flags


@pytest.mark.parametrize("how", ["paused", "killed"])
def test_the_output_store_failing_ends_the_job_and_keeps_the_previous_run(store, tmp_path, photos, how):
    flags = _written_once(store, tmp_path, photos)
    previous = read_manifest("s3://bkt/out")
    job = subprocess.Popen([sys.executable, "-m", "pipelines.classify_images", *flags, "--overwrite"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _when(job, lambda: store.requests(r"PUT /bkt/out/run-[^/ ]+/_STARTED") > 0)
    err, seconds = _failed_after(job, _fault(store, how))
    print(f"output store {how} at the start: exit {seconds:.0f} s later")  # docs/BENCHMARKS.md
    assert seconds < BOUND_S
    assert "s3://bkt" in _last_line(err), err[-3000:]
    assert len(_last_line(err)) < 600
    if how == "paused":  # the store back as it was: the previous run is still the one readers get
        store.resume()
        assert read_manifest("s3://bkt/out").run_id == previous.run_id
        assert len(read_run("s3://bkt/out")) == 60


def test_a_stall_shorter_than_the_retry_budget_is_waited_out(store):
    clean = _start(store, "--output", "s3://bkt/clean")
    assert clean.wait(timeout=HANG_GUARD_S) == 0, clean.communicate()[1][-3000:]
    job = _start(store, "--output", "s3://bkt/out")
    _when(job, lambda: store.requests(r"PUT /bkt/out/run-[^/ ]+/_STARTED") > 0)  # every read and write still to do
    store.pause()
    paused = time.monotonic()
    time.sleep(20)
    store.resume()
    out, err = job.communicate(timeout=HANG_GUARD_S)
    assert job.returncode == 0, err[-3000:]
    assert time.monotonic() - paused > 20 and f"labeled {IMAGES} images" in out  # it waited, then went on
    by_uri = lambda run: sorted(read_run(run), key=lambda row: row["uri"])  # noqa: E731
    assert by_uri("s3://bkt/out") == by_uri("s3://bkt/clean")


KEPT = 40_000  # vectors of the kept run relabel, search and topics read: 4 shards, a few reads each


@pytest.fixture
def kept_run(store, finished_run) -> str:
    """s3://bkt/kept: a finished run of KEPT synthetic unit vectors, with finished_run's model."""
    manifest = read_manifest(str(finished_run))
    dim = len(read_run(str(finished_run), EMBEDDINGS)[0]["embedding"])
    rng = np.random.default_rng(0)
    fs, written = fsspec.filesystem("s3"), []
    for shard in range(4):
        rows = KEPT // 4
        vectors = rng.standard_normal((rows, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        path = f"{manifest.run_id}/embeddings-{shard:05d}-of-00004.parquet"
        buffer = io.BytesIO()
        pq.write_table(pa.table({
            "uri": [f"s3://bkt/photos/{shard}-{i}.jpg" for i in range(rows)], "sha256": ["0" * 64] * rows,
            "model": [manifest.model] * rows,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            "width": pa.array([1] * rows, pa.int32()), "height": pa.array([1] * rows, pa.int32()),
            "strength": pa.array([1.0] * rows, pa.float32())}, schema=embeddings_schema(dim)), buffer,
            row_group_size=2_000)
        fs.pipe(f"bkt/kept/{path}", buffer.getvalue())
        written.append(Shard(path, rows))
    fs.pipe(f"bkt/kept/{SUCCESS}", dataclasses.replace(manifest, shards={EMBEDDINGS: tuple(written)}).to_json())
    return "s3://bkt/kept"


@pytest.mark.parametrize("job, flags", [("relabel", ["--labels", "everyday"]), ("search", ["--query", "a cat"]),
                                        ("topics", ["--topics", "4"])])
@pytest.mark.parametrize("how", ["paused", "killed"])
def test_jobs_reading_a_kept_run_retry_the_store_then_end_with_one_line(store, kept_run, tmp_path, job, flags, how):
    """--store_retry_s 20: the same retries as the default's, in a third of the time. The fault comes once the job
    reads the vectors, past the footer of each shard its checks read."""
    output = tmp_path / "out"
    started = _start(store, "--embeddings", kept_run, "--output", str(output), "--store_retry_s", "20", *flags,
                     job=job)
    _when(started, lambda: store.requests(r"GET /bkt/kept/run-[^ ]+/embeddings-") > 4)  # 4: the checks' footers
    err, seconds = _failed_after(started, _fault(store, how))
    _says_the_store_failed(err)
    print(f"{job}: store {how} mid-read: exit {seconds:.0f} s later")
    assert seconds < 60
    assert not (output / SUCCESS).exists()


def test_a_store_failing_while_the_job_is_checked_stops_it_with_one_line(store, kept_run, tmp_path):
    started = _start(store, "--embeddings", kept_run, "--output", str(tmp_path / "out"), "--store_retry_s", "20",
                     "--labels", "everyday", job="relabel")
    err, _ = _failed_after(started, _fault(store, "paused"))  # before the job's first request: its checks stall
    assert started.returncode == 2
    _says_the_store_failed(err, before_the_run=True)


def test_progress_on_a_bucket_is_resumed_from_the_bucket(store):
    """Resume on an object store (no rename): a run whose commit failed (another job claimed it while this one
    ran), then the same command again."""
    flags = ["--output", "s3://bkt/out", "--max_error_fraction", "0"]
    failed = _start(store, *flags)
    _when(failed, lambda: store.requests(r"PUT /bkt/out/run-[^/ ]+/_STARTED") > 0)
    fsspec.filesystem("s3").pipe("bkt/out/_COMMIT-00000001", b"another job")  # the commit will fail
    _, err = failed.communicate(timeout=HANG_GUARD_S)
    assert failed.returncode == 1 and "ConcurrentRunError" in _last_line(err), err[-3000:]
    fsspec.filesystem("s3").rm("bkt/out/_COMMIT-00000001")
    fetched = store.gets()
    rerun = _start(store, *flags)
    out, err = rerun.communicate(timeout=HANG_GUARD_S)
    assert rerun.returncode == 0, err[-3000:]
    assert f"resumed {IMAGES} images from the vectors an unfinished run saved" in out
    assert store.gets() == fetched  # not one image fetched again
    assert len(read_run("s3://bkt/out")) == IMAGES
