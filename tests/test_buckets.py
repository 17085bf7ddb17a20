"""Real buckets: the job against real S3 and GCS protocol servers on 127.0.0.1 (moto's S3 server, the GCS emulator),
inputs and run folders on the store, every object fetched once (counted in the server's own request log), and
relabel, search, the report and the README's readers reading the run from the store."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import relabel, report, search
from testbed.s3 import RequestLog, free_port, s3_server
from tests.conftest import REPO, commit_gate
from tests.test_run_folder import readme_readers
from transforms.run_folder import SUCCESS, read_manifest, read_run
from transforms.stores import use_job_options

pytestmark = pytest.mark.slow
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture
def s3(monkeypatch):
    server, endpoint, log = s3_server()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    flags = ["--s3_endpoint_url", endpoint, "--s3_access_key_id", "testing",
             "--s3_secret_access_key", "testing-secret", "--s3_region_name", "us-east-1"]
    use_job_options(PipelineOptions(flags))  # this process reads the store like the job: from the same options
    import boto3

    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                 aws_secret_access_key="testing-secret", region_name="us-east-1").create_bucket(Bucket="bkt")
    yield {"flags": flags, "log": log, "object": r"GET /bkt/(photos/[^ ?]+)", "url": "s3://bkt"}
    log.close()
    fsspec.config.conf.pop("s3", None)
    server.stop()


@pytest.fixture
def gcs(monkeypatch):
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="bkt")
    server.start()
    log = RequestLog("gcp_storage_emulator.server")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")  # Google's and gcsfs's own setting
    # gcsfs's default filesystem asks a gRPC control plane (no emulator has one) for the bucket's layout first.
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    flags = ["--no_auth"]
    use_job_options(PipelineOptions(flags))
    yield {"flags": flags, "log": log, "object": r"GET /download/storage/v1/b/bkt/o/(photos%2F[^ ?]+)",
           "url": "gs://bkt"}
    log.close()
    fsspec.config.conf.pop("gs", None)
    server.stop()


def _upload(store, photos: Path) -> None:
    fs = fsspec.filesystem(store["url"].split(":")[0])
    bucket = store["url"].split("://")[1]
    for name in PHOTOS:
        fs.pipe(f"{bucket}/photos/{name}.jpg", (photos / f"{name}.jpg").read_bytes())
    fs.pipe(f"{bucket}/photos/chelsea_copy.jpg", (photos / "chelsea.jpg").read_bytes())  # the same bytes
    fs.pipe(f"{bucket}/photos/broken.jpg", b"\xff\xd8\xff not a photo")


def _job(module: str, store, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args, *store["flags"]], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env})


def _classify(store, *args: str) -> subprocess.CompletedProcess:
    return _job("pipelines.classify_images", store, "--input", f"{store['url']}/photos/*.jpg", "--labels",
                "general", "--output", f"{store['url']}/out", "--max_error_fraction", "0.5", *args)


@pytest.mark.parametrize("store_name", ["s3", "gcs"])
def test_a_bucket_in_and_out_with_one_fetch_per_image(store_name, request, photos, tmp_path):
    store = request.getfixturevalue(store_name)
    _upload(store, photos)
    done = _classify(store, "--keep_embeddings")
    assert done.returncode == 0, done.stderr[-3000:]
    run = f"{store['url']}/out"
    rows = {row["uri"].rsplit("/", 1)[-1]: row for row in read_run(run)}
    assert set(rows) == {f"{name}.jpg" for name in PHOTOS} | {"chelsea_copy.jpg"}
    assert rows["chelsea.jpg"]["labels"][0] == "animal" and rows["chelsea_copy.jpg"]["labels"][0] == "animal"
    assert [row["uri"].rsplit("/", 1)[-1] for row in read_run(run, "errors")] == ["broken.jpg"]
    # Each object is fetched once; the copy, whose listed MD5 is chelsea's, not at all.
    fetched = store["log"].gets(store["object"])
    assert max(fetched.values()) == 1 and sum(fetched.values()) == len(PHOTOS) + 1, fetched
    assert readme_readers(run) == {"pandas": 5, "pyarrow": 5, "duckdb": 5}

    # An incremental run: unchanged objects keep their rows, still one fetch each.
    first = read_manifest(run).run_id
    store["log"].lines.clear()
    done = _classify(store, "--keep_embeddings", "--overwrite", "--skip_existing", run)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "labeled 0 images" in done.stdout and "kept 5 rows of the previous run" in done.stdout
    assert max(store["log"].gets(store["object"]).values()) == 1
    manifest = read_manifest(run)
    assert manifest.run_id != first and manifest.skip_existing == first
    listing = fsspec.filesystem(store["url"].split(":")[0]).ls(run.split("://")[1])
    assert sorted(path.rsplit("/", 1)[-1] for path in listing) == sorted(
        [SUCCESS, f"_COMMIT-{manifest.generation:08d}", manifest.run_id])

    # Relabel, search and the report read the run from the store.
    assert relabel.main(["--embeddings", run, "--labels", "everyday", "--output", f"{store['url']}/relabeled",
                         *store["flags"]]) == 0
    assert len(read_run(f"{store['url']}/relabeled")) == 5
    assert search.main(["--embeddings", run, "--query", "a cat", "--images_per_query", "1", "--output",
                        f"{store['url']}/found", *store["flags"]]) == 0
    assert read_run(f"{store['url']}/found")[0]["uri"].rsplit("/", 1)[-1] in ("chelsea.jpg", "chelsea_copy.jpg")
    page = tmp_path / "report.html"
    assert report.main(["--run", run, "--output", str(page), *store["flags"]]) == 0
    assert page.read_text().count("data:image/jpeg;base64,") >= 5  # thumbnails fetched from the store


def test_a_job_killed_before_its_commit_leaves_no_success_on_the_store(s3, photos, tmp_path):
    _upload(s3, photos)
    env = {**os.environ, **commit_gate(tmp_path / "never")}
    job = subprocess.Popen([sys.executable, "-m", "pipelines.classify_images", "--input", "s3://bkt/photos/*.jpg",
                            "--labels", "general", "--output", "s3://bkt/out", "--max_error_fraction", "0.5",
                            *s3["flags"]], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                           start_new_session=True)
    fs = fsspec.filesystem("s3")
    deadline = time.monotonic() + 300
    while not (fs.glob("bkt/out/run-*/results-*") and fs.glob("bkt/out/run-*/errors-*")):
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
        fs.invalidate_cache()
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    fs.invalidate_cache()
    assert not fs.exists(f"bkt/out/{SUCCESS}") and read_manifest("s3://bkt/out") is None


def test_the_commit_claim_is_exclusive_on_s3(s3):
    """S3's conditional write (If-None-Match: *, through s3fs's "xb" mode) lets one of two claims through. (The GCS
    emulator does not enforce GCS's ifGenerationMatch=0 precondition that gcsfs sends, so it cannot show this.)"""
    from transforms.run_folder import ConcurrentRunError, _claim

    _claim("s3://bkt/out", 1, "run-a")
    _claim("s3://bkt/out", 1, "run-a")  # the same run's retried commit goes on
    with pytest.raises(ConcurrentRunError, match=r"another job \(run run-a\) is committing to 's3://bkt/out'"):
        _claim("s3://bkt/out", 1, "run-b")


def test_an_hf_model_folder_in_the_bucket_is_copied_once_and_labels(s3, photos, tmp_path):
    from tests.tiny_models import tiny_clip

    folder = tiny_clip(tmp_path / "clip")
    fs = fsspec.filesystem("s3")
    fs.put(f"{folder}/", "bkt/models/clip/", recursive=True)
    _upload(s3, photos)
    done = _job("pipelines.classify_images", s3, "--backend", "hf", "--hf_model", "s3://bkt/models/clip", "--input",
                "s3://bkt/photos/*.jpg", "--labels", "general", "--output", "s3://bkt/out", "--max_error_fraction",
                "0.5", TMPDIR=str(tmp_path))  # where workers keep their copy of the model
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_run("s3://bkt/out")
    assert len(rows) == 5 and {row["model"] for row in rows} == {read_manifest("s3://bkt/out").model}
    assert rows[0]["model"].startswith("hf:s3://bkt/models/clip@")
    # The launcher and the in-process workers share one copy: each model file was fetched once.
    model_gets = s3["log"].gets(r"GET /bkt/(models/clip/[^ ?]+)")
    assert model_gets and max(model_gets.values()) == 1, model_gets


def test_an_index_on_a_bucket_is_built_served_and_grown(s3, finished_run, tmp_path):
    """index --output s3://..., opened and served from the bucket, answers as the same index on a local disk."""
    from pipelines import index
    from tests.test_index import Server
    from transforms.backends import get_backend
    from transforms.vector_index import VectorIndex

    on_bucket, local = f"{s3['url']}/index", tmp_path / "index"
    assert index.main(["--embeddings", str(finished_run), "--output", on_bucket, *s3["flags"]]) == 0
    assert index.main(["--embeddings", str(finished_run), "--output", str(local)]) == 0
    backend = get_backend("local")
    expected = [(hit.uri, hit.labels) for hit in VectorIndex.open(str(local), backend).search_text("a cat", 7)]
    assert [(hit.uri, hit.labels) for hit in VectorIndex.open(on_bucket, backend).search_text("a cat", 7)] == expected
    server = Server(on_bucket, tuple(s3["flags"]))
    try:
        status, answer = server.json("GET", "/search?q=a%20cat&k=7")
        assert status == 200 and [hit["uri"] for hit in answer["hits"]] == [uri for uri, _ in expected]
    finally:
        server.stop()
    # Grown in place: nothing new to add, so the same images, and the previous rows kept.
    assert index.main(["--embeddings", str(finished_run), "--output", on_bucket, "--overwrite", "--skip_existing",
                       on_bucket, *s3["flags"]]) == 0
    manifest = read_manifest(on_bucket)
    assert (manifest.details["ann"]["vectors"], manifest.details["ann"]["added"]) == (7, 0)
    assert len(read_run(on_bucket, "rows")) == 7
