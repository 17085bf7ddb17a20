"""The nomic backend against a loopback Nomic API: the full command line, and what the user gets for each fault."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from pipelines import classify_images, relabel, search
from tests.conftest import colour_photo, commit_gate
from transforms.backends.nomic import MAX_IMAGES_PER_REQUEST, NomicBackend, NomicKeyError, read_api_key
from transforms.classify import ZeroShotClassify
from transforms.nearest import get_nearest_texts
from transforms.rank import Decision
from transforms.run_folder import read_run, run_files

REPO = Path(__file__).resolve().parents[1]
COLOURS = ["red", "green", "blue", "yellow"]
RGB = {"red": (230, 20, 20), "green": (20, 200, 30), "blue": (20, 30, 220), "yellow": (230, 220, 20)}


@pytest.fixture
def colour_photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, rgb in RGB.items():
        (folder / f"{name}.jpg").write_bytes(colour_photo(rgb))
    return folder


def _cli(args, **env):
    return subprocess.run([sys.executable, "-m", "pipelines.classify_images", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def _files_holding(folder: Path, secret: str) -> list[str]:
    """Every file under `folder` whose bytes contain `secret`."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def _rows(run, table="results"):
    return pq.read_table(run_files(str(run), table)).to_pylist()


@pytest.mark.parametrize("runner_args",
                         [[], ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]],
                         ids=["in_process", "worker_processes"])
@pytest.mark.slow
def test_command_line_end_to_end(nomic_api, colour_photos, tmp_path, runner_args):
    """Worker processes have no login of their own: each one must authenticate itself in setup."""
    (colour_photos / "magenta.jpg").write_bytes(colour_photo((255, 0, 255)))
    (colour_photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    labels = tmp_path / "colours.txt"
    labels.write_text("\n".join(COLOURS) + "\n")
    out = tmp_path / "out" / "labels"
    temp = tmp_path / "temp"  # the job's temporary files, and HOME (the fixture's), are searched for the key below
    temp.mkdir()
    done = _cli(["--backend", "nomic", "--input", f"{colour_photos}/*.jpg", "--labels", str(labels),
                 "--output", str(out), "--top_k", "2", "--max_error_fraction", "0.5", *runner_args], TMPDIR=str(temp))
    assert done.returncode == 0, done.stderr[-3000:]
    results = {Path(row["uri"]).stem: row for row in _rows(out)}
    assert {name: row["labels"][0] for name, row in results.items()} == {c: c for c in COLOURS}
    assert {row["model"] for row in results.values()} == {"nomic-embed-vision-v1.5"}
    errors = {Path(row["uri"]).name: (row["stage"], row["error"]) for row in _rows(out, "errors")}
    assert errors == {"magenta.jpg": ("embed", "ImageRejectedError"),
                      "broken.jpg": ("decode", "UnidentifiedImageError")}
    assert nomic_api.task_types == {"search_query"}
    assert "backend: nomic_image_calls" in done.stdout and "nomic_text_usage_total_tokens" in done.stdout
    assert nomic_api.key not in done.stdout + done.stderr and _files_holding(tmp_path, nomic_api.key) == []
    # One login per process (the client's own /v1/user call), plus the launcher's key check; in-process workers
    # reuse the launcher's login.
    assert nomic_api.requests["/v1/user"] == (2 if not runner_args else pytest.approx(3, abs=1))


@pytest.mark.slow
def test_a_killed_job_leaves_no_key_on_disk(nomic_api, colour_photos, tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    out = tmp_path / "out"
    log = (tmp_path / "job.log").open("w")
    job = subprocess.Popen(
        [sys.executable, "-m", "pipelines.classify_images", "--backend", "nomic", "--input",
         f"{colour_photos}/*.jpg", "--labels", "everyday", "--output", str(out),
         "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "TMPDIR": str(temp), **commit_gate(tmp_path / "never")})
    deadline = time.monotonic() + 300
    while not list(out.glob("run-*/results-*")):  # every worker has logged in and embedded by then
        assert job.poll() is None and time.monotonic() < deadline, (tmp_path / "job.log").read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    assert nomic_api.requests["/v1/embedding/image"] > 0
    assert _files_holding(tmp_path, nomic_api.key) == []


def test_a_worker_that_cannot_get_the_key_says_so_in_the_last_line(nomic_api, colour_photos, tmp_path, monkeypatch,
                                                                  capsys):
    """The launcher can read the key; the worker processes cannot (memory:// is per process, like a secret that
    only the launcher's machine has)."""
    monkeypatch.delenv("NOMIC_API_KEY")
    with fsspec.open("memory://secrets/nomic-key", "w") as f:
        f.write(nomic_api.key)
    status = classify_images.main(["--backend", "nomic", "--nomic_api_key_file", "memory://secrets/nomic-key",
                                   "--input", f"{colour_photos}/*.jpg", "--labels", "everyday", "--output",
                                   str(tmp_path / "out"), "--direct_running_mode", "multi_processing",
                                   "--direct_num_workers", "2"])
    assert status == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: the job failed: NomicKeyError: cannot read the Nomic API key file "
                           "'memory://secrets/nomic-key' (FileNotFoundError)"), last


def _label(backend, inputs, labels=COLOURS, batch_size=8):
    p = TestPipeline()
    outputs = p | beam.Create(inputs) | ZeroShotClassify(labels, backend, decision=Decision(top_k=1),
                                                         batch_size=batch_size)
    return p, outputs


def _outcomes(outputs):
    ok = outputs["results"] | "Ok" >> beam.Map(lambda row: (Path(row["uri"]).name, row["labels"][0]))
    bad = outputs["errors"] | "Bad" >> beam.Map(lambda row: (Path(row["uri"]).name, row["error"]))
    return (ok, bad) | beam.Flatten()


def _pairs(folder):
    return [(str(folder / f"{name}.jpg"), (folder / f"{name}.jpg").read_bytes()) for name in RGB]


def test_labels_are_embedded_once_whatever_the_number_of_images(nomic_api, tmp_path):
    inputs = [(f"img{i}.jpg", colour_photo(RGB[COLOURS[i % 4]])) for i in range(40)]
    p, outputs = _label(NomicBackend(), inputs, batch_size=10)
    assert_that(outputs["results"] | beam.combiners.Count.Globally(), equal_to([40]))
    p.run().wait_until_finish()
    text_requests_for_one_call = len(COLOURS)  # the client sends small label sets one text per request
    assert nomic_api.requests["/v1/embedding/text"] == text_requests_for_one_call
    assert nomic_api.images_seen == 40


@pytest.mark.parametrize("status", [429, 500, 503])
def test_bursts_of_retriable_errors_are_absorbed(nomic_api, colour_photos, status):
    nomic_api.fail_next(2, status=status)
    p, outputs = _label(NomicBackend(), _pairs(colour_photos))
    assert_that(_outcomes(outputs), equal_to([(f"{c}.jpg", c) for c in COLOURS]))
    p.run().wait_until_finish()
    assert sum(nomic_api.requests.values()) > len(COLOURS) + 2  # the failed requests were sent again


def _fails_with(p, pattern):
    with pytest.raises(Exception, match=pattern):
        p.run().wait_until_finish()


def test_malformed_responses_that_persist_fail_the_job(nomic_api, colour_photos):
    p, outputs = _label(NomicBackend(retries=0), _pairs(colour_photos))
    nomic_api.fail_next(len(COLOURS))  # label requests succeed
    nomic_api.fail_next(100, malformed=True)
    _fails_with(p, r"NomicAPIError: .*no image was at fault")


def test_a_wrong_number_of_embeddings_is_never_aligned_by_guess(nomic_api, colour_photos):
    p, outputs = _label(NomicBackend(retries=0), _pairs(colour_photos))
    nomic_api.fail_next(len(COLOURS))
    nomic_api.fail_next(1, drop_one=True)  # one of the requests the client sends for the batch
    _fails_with(p, r"EmbeddingCountError: the Nomic API returned 3 embeddings for 4 inputs")


def test_a_call_that_hangs_fails_the_job_at_the_timeout(nomic_api, colour_photos):
    p, outputs = _label(NomicBackend(retries=0, call_timeout_s=1), _pairs(colour_photos))
    nomic_api.fail_next(len(COLOURS))
    nomic_api.fail_next(1, delay_s=4)
    _fails_with(p, r"TimeoutError.*no image was at fault")


@pytest.mark.slow
def test_an_api_that_is_down_fails_the_job_in_minutes_and_keeps_the_previous_run(nomic_api, tmp_path):
    """The outage of the issue: 503 on every image request for 20 images used to commit 20 error rows after 149 s."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(20):
        (photos / f"{i:02d}.jpg").write_bytes(colour_photo(RGB[COLOURS[i % 4]]))
    labels = tmp_path / "colours.txt"
    labels.write_text("\n".join(COLOURS) + "\n")
    out = tmp_path / "out"
    argv = ["--backend", "nomic", "--input", f"{photos}/*.jpg", "--labels", str(labels), "--output", str(out)]
    assert classify_images.main(argv) == 0
    previous = (out / "_SUCCESS").read_text()
    sent_before = nomic_api.requests["/v1/embedding/image"]
    nomic_api.fail_next(len(COLOURS))  # the labels are embedded, then every image request fails
    nomic_api.fail_next(10_000, status=503)
    started = time.monotonic()
    done = _cli([*argv, "--overwrite"])
    assert time.monotonic() - started < 180
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: the job failed: NomicUnavailableError: the Nomic API is unavailable (HTTP 503, after the client's "
        "retries)"), done.stderr[-2000:]
    assert (out / "_SUCCESS").read_text() == previous
    # The first failed batch ends the job: its requests (at most one per image) tried by the client's own backoff,
    # 6 times each, and not again by Beam's retries nor split up (measured: 24 requests in 35 s).
    assert nomic_api.requests["/v1/embedding/image"] - sent_before <= 6 * 5


def test_a_key_refused_mid_job_fails_the_job_fast(nomic_api, colour_photos):
    nomic_api.fail_next(len(COLOURS))  # the labels are embedded, then the key is revoked
    nomic_api.fail_next(1000, status=401)
    p, _ = _label(NomicBackend(), _pairs(colour_photos))
    with pytest.raises(Exception, match="refused the API key"):
        p.run().wait_until_finish()
    assert sum(nomic_api.requests.values()) < 20  # no minutes of retries


@pytest.mark.slow
def test_a_refused_key_stops_the_command_before_it_starts(nomic_api, colour_photos, tmp_path):
    done = _cli(["--backend", "nomic", "--input", f"{colour_photos}/*.jpg", "--labels", "everyday",
                 "--output", str(tmp_path / "out")], NOMIC_API_KEY="nk-wrong-key-4242")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: backend 'nomic' cannot run: the Nomic API refused the API key (HTTP 401)"
    assert "nk-wrong-key-4242" not in done.stdout + done.stderr


def test_key_file_any_fsspec_url_and_missing_key(tmp_path, monkeypatch):
    monkeypatch.delenv("NOMIC_API_KEY", raising=False)
    (tmp_path / "key").write_text("nk-from-file\n")
    assert read_api_key(str(tmp_path / "key")) == "nk-from-file"
    with pytest.raises(NomicKeyError, match="no Nomic API key: set NOMIC_API_KEY or pass --nomic_api_key_file"):
        read_api_key(None)
    with pytest.raises(NomicKeyError, match="cannot read the Nomic API key file"):
        read_api_key(str(tmp_path / "missing"))
    monkeypatch.setenv("NOMIC_API_KEY", "sk-not-nomic")
    with pytest.raises(NomicKeyError, match="start with 'nk-'") as caught:
        read_api_key(None)
    assert "sk-not-nomic" not in str(caught.value)


def test_requests_never_exceed_the_api_limit():
    handler = NomicBackend().model_handler(batch_size=5000)
    assert handler.batch_elements_kwargs()["max_batch_size"] == MAX_IMAGES_PER_REQUEST


def test_get_nearest_texts_on_the_nomic_backend(nomic_api):
    image = Image.new("RGB", (40, 40), (20, 30, 220))
    ranked = get_nearest_texts(image, ["a red car", "a blue sky", "green grass"], backend="nomic")
    assert ranked[0][0] == "a blue sky" and ranked[0][1] > 0.99 > ranked[1][1]


def test_relabel_and_search_on_nomic_send_text_requests_only(nomic_api, colour_photos, tmp_path):
    labels = tmp_path / "colours.txt"
    labels.write_text("\n".join(COLOURS) + "\n")
    kept = tmp_path / "kept"
    assert classify_images.main(["--backend", "nomic", "--input", f"{colour_photos}/*.jpg", "--labels", str(labels),
                                 "--output", str(kept), "--keep_embeddings", "--top_k", "1"]) == 0
    image_requests = nomic_api.requests["/v1/embedding/image"]
    things = tmp_path / "things.txt"
    things.write_text("".join(f"a {colour} thing\n" for colour in COLOURS))
    assert relabel.main(["--backend", "nomic", "--embeddings", str(kept), "--labels", str(things), "--top_k", "1",
                         "--output", str(tmp_path / "relabeled")]) == 0
    assert search.main(["--backend", "nomic", "--embeddings", str(kept), "--query", "something blue",
                        "--images_per_query", "1",
                        "--output", str(tmp_path / "found")]) == 0
    assert nomic_api.requests["/v1/embedding/image"] == image_requests
    relabeled = {Path(row["uri"]).stem: row["labels"] for row in read_run(str(tmp_path / "relabeled"))}
    assert relabeled == {colour: [f"a {colour} thing"] for colour in COLOURS}
    assert [Path(hit["uri"]).stem for hit in read_run(str(tmp_path / "found"))] == ["blue"]
