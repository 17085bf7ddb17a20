"""A failure costs minutes, not the run: a killed or failed job's embedded images are kept and a rerun continues;
too many errors stop the job early; a store's fault is never a file's row; each other way a job used to lose work,
hang, leak a secret or crash, fed exactly as it came."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import classify_images, options, relabel, report, runner
from testbed.images import make_images
from tests import jobs
from tests.conftest import REPO
from transforms import faults, progress, rank
from transforms.backends.local import LocalBackend
from transforms.manifest import Manifest
from transforms.run_folder import SUCCESS, read_manifest, read_run
from transforms.stores import use_job_options


def _job(*flags: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.classify_images", *flags], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, start_new_session=True)


def _wait_for(job: subprocess.Popen, ready, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the moment never came"
        time.sleep(0.05)


def _by_uri(rows):
    return {row["uri"]: row for row in rows}


def _same_rows(resumed: list[dict], clean: list[dict]) -> None:
    resumed, clean = _by_uri(resumed), _by_uri(clean)
    assert resumed.keys() == clean.keys()
    for uri, row in clean.items():
        assert resumed[uri]["labels"] == row["labels"] and resumed[uri]["sha256"] == row["sha256"], uri
        np.testing.assert_allclose(resumed[uri]["scores"], row["scores"], atol=1e-6)
        np.testing.assert_allclose(resumed[uri]["probs"], row["probs"], atol=1e-6)


# --- Resume -------------------------------------------------------------------------------------------------------

def _saving(tmp_path: Path) -> tuple[subprocess.Popen, list[str], Path]:
    """(a job over 400 images, its flags, its --output), once the job has saved its first progress file."""
    images = make_images(tmp_path / "images", 400, max_side=96)
    out = tmp_path / "out"
    flags = ["--input", f"{images}/*.jpg", "--labels", "everyday", "--output", str(out), "--batch_size", "8"]
    job = _job(*flags)
    _wait_for(job, lambda: any(out.glob(f"run-*/{progress.PROGRESS_PREFIX}*.parquet")))
    return job, flags, out


def _again(flags: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.classify_images", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_killed_job_run_again_embeds_only_the_rest_and_gives_a_clean_runs_rows(tmp_path):
    job, flags, out = _saving(tmp_path)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)
    killed = [folder.name for folder in out.glob("run-*")]
    assert not (out / SUCCESS).exists() and len(killed) == 1

    rerun = _again(flags)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming: 1 progress files of the unfinished run(s) {killed[0]}" in rerun.stderr
    resumed = int(re.search(r"resumed (\d+) images from the vectors an unfinished run saved", rerun.stdout)[1])
    assert progress.SAVE_EVERY <= resumed < 400
    assert "labeled 400 images" in rerun.stdout
    assert [folder.name for folder in out.glob("run-*")] == [read_manifest(str(out)).run_id]  # killed one gone
    assert not list(out.glob(f"run-*/{progress.PROGRESS_PREFIX}*")) and not list(out.glob("run-*/_STARTED"))

    clean = tmp_path / "clean"
    assert classify_images.main([*flags[:-4], "--output", str(clean), "--batch_size", "8"]) == 0
    _same_rows(read_run(str(out)), read_run(str(clean)))


@contextlib.contextmanager
def _claim_taken_once_started(out: Path) -> Iterator[None]:
    """Another job claims the first commit of `out` just after a job's checks passed: that job's commit fails at
    the end, and what it saved stays."""
    check = options.check_next_claim

    def check_then_claimed(output: str, current) -> None:
        check(output, current)
        Path(output).mkdir(parents=True, exist_ok=True)
        Path(output, "_COMMIT-00000001").write_text("another job")

    with mock.patch.object(options, "check_next_claim", check_then_claimed):
        yield
    (out / "_COMMIT-00000001").unlink()


def test_a_stale_commit_claim_stops_the_job_before_it_starts(tmp_path, photos, capsys):
    """A claim left by a job killed while it committed would fail this job's own commit: said before any work."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "_COMMIT-00000001").write_text("run-killed")
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "everyday", "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: another job (run run-killed) is committing to {str(out)!r}, or was killed while it did: this job "
        f"does not start. If no job is running there, delete {out / '_COMMIT-00000001'} and run again")
    assert not list(out.glob("run-*"))


def _unfinished_run(out: Path, photos: Path, labels: str = "everyday") -> str:
    """A run folder as a killed job leaves it: its _STARTED record and one progress file with the photos' vectors,
    made by a real job whose commit failed."""
    with _claim_taken_once_started(out):
        assert jobs.classify(f"{photos}/*.jpg", out, labels) == 1
    (run,) = [folder.name for folder in out.glob("run-*")]
    assert list((out / run).glob(f"{progress.PROGRESS_PREFIX}*.parquet"))
    return run


def test_a_failed_run_is_resumed_and_its_images_are_not_embedded_again(tmp_path, photos, capsys, monkeypatch):
    out = tmp_path / "out"
    run = _unfinished_run(out, photos)
    capsys.readouterr()
    embedded = []
    real = classify_images.ZeroShotClassify.expand

    def counting(self, inputs):
        embedded.append(self.resumed is not None)
        return real(self, inputs)

    monkeypatch.setattr(classify_images.ZeroShotClassify, "expand", counting)
    assert jobs.classify(f"{photos}/*.jpg", out) == 0
    captured = capsys.readouterr()
    assert embedded == [True]
    assert "resumed 7 images from the vectors an unfinished run saved" in captured.out
    assert "labeled 7 images" in captured.out
    assert not (out / run).exists()


@pytest.mark.parametrize("settings, why", [({"backend": LocalBackend(top_t=5)}, "another model"),
                                           ({"backend": LocalBackend(class_prompt="a picture of a {}.")},
                                            "another model"),
                                           ({"resume": False}, None)])  # --fresh
def test_another_model_or_fresh_start_afresh_and_say_so(tmp_path, photos, capsys, settings, why):
    out = tmp_path / "out"
    _unfinished_run(out, photos)
    capsys.readouterr()
    assert jobs.classify(f"{photos}/*.jpg", out, **settings) == 0
    captured = capsys.readouterr()
    assert "resumed" not in captured.out
    if why:
        assert f"was made with another {why.split()[1]}: starting afresh" in captured.err


@pytest.mark.parametrize("settings, why", [({"labels": "general"}, "label_set_sha256"),
                                           ({"decision": rank.Decision(top_k=2, min_prob=0.2)}, "top_k")])
def test_other_labels_or_decisions_reuse_the_saved_vectors_and_label_them_anew(tmp_path, photos, capsys, settings,
                                                                               why):
    """The vectors depend on the model alone: after a kill, the one command a user changes costs no embedding."""
    out = tmp_path / "out"
    _unfinished_run(out, photos)
    capsys.readouterr()
    assert jobs.classify(f"{photos}/*.jpg", out, **settings) == 0
    captured = capsys.readouterr()
    assert "resumed 7 images from the vectors an unfinished run saved" in captured.out
    assert f"was made with another {why}; its images' vectors are the same, so they are reused" in captured.err
    clean = tmp_path / "clean"
    assert jobs.classify(f"{photos}/*.jpg", clean, **settings) == 0
    _same_rows(read_run(str(out)), read_run(str(clean)))


def test_a_progress_file_with_vectors_of_another_length_is_skipped_with_a_warning(tmp_path, photos, capsys):
    out = tmp_path / "out"
    run = _unfinished_run(out, photos)
    (saved,) = (out / run).glob(f"{progress.PROGRESS_PREFIX}*.parquet")
    table = pq.read_table(saved)
    short = pa.array([vector[:-1] for vector in table["vector"].to_pylist()], pa.list_(pa.float32()))
    pq.write_table(table.set_column(table.schema.get_field_index("vector"), "vector", short), saved)
    capsys.readouterr()
    assert jobs.classify(f"{photos}/*.jpg", out) == 0
    captured = capsys.readouterr()
    assert "resumed" not in captured.out and "labeled 7 images" in captured.out
    assert "holds vectors of length 383, the model's are 384): its images are embedded again" in captured.err


def test_a_progress_file_saved_before_vectors_carried_their_strength_is_embedded_again(tmp_path, photos, capsys):
    out = tmp_path / "out"
    run = _unfinished_run(out, photos)
    (saved,) = (out / run).glob(f"{progress.PROGRESS_PREFIX}*.parquet")
    pq.write_table(pq.read_table(saved).drop_columns(["strength"]), saved)  # as an earlier version wrote it
    capsys.readouterr()
    assert jobs.classify(f"{photos}/*.jpg", out) == 0
    captured = capsys.readouterr()
    assert "resumed" not in captured.out and "labeled 7 images" in captured.out
    assert "before vectors carried their strength): its images are embedded again" in captured.err
    clean = tmp_path / "clean"
    assert jobs.classify(f"{photos}/*.jpg", clean) == 0
    _same_rows(read_run(str(out)), read_run(str(clean)))


def test_a_progress_file_cut_short_is_skipped_and_its_images_embedded_again(tmp_path, photos, capsys):
    out = tmp_path / "out"
    run = _unfinished_run(out, photos)
    (saved,) = (out / run).glob(f"{progress.PROGRESS_PREFIX}*.parquet")
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    capsys.readouterr()
    assert jobs.classify(f"{photos}/*.jpg", out) == 0
    captured = capsys.readouterr()
    assert "resumed" not in captured.out and "cannot be used (ArrowInvalid" in captured.err
    assert len(read_run(str(out))) == 7


def test_a_file_changed_since_the_failed_run_is_embedded_again(tmp_path, photos, capsys):
    images = tmp_path / "images"
    shutil.copytree(photos, images)
    out = tmp_path / "out"
    _unfinished_run(out, images)
    shutil.copy(photos / "rocket.jpg", images / "chelsea.jpg")  # other bytes under the same name
    capsys.readouterr()
    assert jobs.classify(f"{images}/*.jpg", out) == 0
    assert "resumed 6 images" in capsys.readouterr().out
    rows = _by_uri(read_run(str(out)))
    assert rows[f"{images}/chelsea.jpg"]["labels"] == rows[f"{images}/rocket.jpg"]["labels"]


def test_saved_vectors_answer_to_the_sha256_and_to_either_form_of_the_md5():
    row = {"sha256": "ab" * 32, "md5": "0123456789abcdef0123456789abcdef"}
    assert list(progress.content_keys(row)) == [f"sha256:{'ab' * 32}", "md5:0123456789abcdef0123456789abcdef",
                                                "md5:ASNFZ4mrze8BI0VniavN7w=="]


# --- Too many errors stop the job early -------------------------------------------------------------------------

def test_too_many_errors_stop_the_job_as_soon_as_it_is_sure_to_fail(tmp_path, photos, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(400):  # they sort first: the first inputs alone would say nothing of the rest
        (inputs / f"broken{i:03d}.jpg").write_bytes(b"\xff\xd8\xff not a photo %d" % i)
    for name in ("chelsea", "coffee"):
        shutil.copy(photos / f"{name}.jpg", inputs / f"{name}.jpg")
    assert classify_images.main(["--input", f"{inputs}/*.jpg", "--labels", "general", "--output",
                                 str(tmp_path / "out")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "TooManyErrorsError: 41 of the job's 402 inputs failed, more than --max_error_fraction 0.1 of them; " \
           "commonest: decode UnidentifiedImageError (41)" in last, last
    assert "run the same command again to continue" in last
    assert not (tmp_path / "out" / SUCCESS).exists()


def test_the_watch_stops_only_when_the_job_cannot_end_under_the_limit():
    tally = faults.ErrorTally(limit=0.1)
    for _ in range(40):
        tally.add_error({"stage": "decode", "error": "UnidentifiedImageError"}, inputs=400)  # 10%: could still pass
    with pytest.raises(faults.TooManyErrorsError, match=r"41 of the job's 400 inputs failed"):
        tally.add_error({"stage": "read", "error": "FileNotFoundError"}, inputs=400)
    with pytest.raises(faults.TooManyErrorsError, match=r"commonest: decode UnidentifiedImageError \(40\), read "):
        tally.add_error({"stage": "read", "error": "FileNotFoundError"}, inputs=400)
    never = faults.ErrorTally(limit=1.0)
    for _ in range(400):
        never.add_error({"stage": "decode", "error": "UnidentifiedImageError"}, inputs=400)


def test_the_commit_time_check_says_how_to_keep_the_work(tmp_path, photos, capsys):
    """Copies of a broken file are its error rows too, but only the commit sees them: the job runs to the end."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("astronaut", "chelsea", "china", "coffee", "flower", "motorcycle", "rocket", "china"):
        shutil.copy(photos / f"{name}.jpg", inputs / f"{name}.jpg")
    for copy in ("broken.jpg", "broken_copy.jpg"):
        (inputs / copy).write_bytes(b"\xff\xd8\xff not a photo")
    flags = ["--input", f"{inputs}/*.jpg", "--labels", "general", "--output", str(tmp_path / "out")]
    assert classify_images.main([*flags, "--max_error_fraction", "0.15"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # the same message as the watch's (one route for the error budget), with every error row counted
    assert "TooManyErrorsError: 2 of the job's 9 inputs failed, more than --max_error_fraction 0.15 of them" in err
    assert "the images already embedded are kept: fix the cause, or raise --max_error_fraction" in err
    assert classify_images.main([*flags, "--max_error_fraction", "0.25"]) == 0
    assert "resumed 7 images" in capsys.readouterr().out


# --- A store's fault is the job's, a file's fault its row ---------------------------------------------------------

class _ClientError(Exception):
    def __init__(self, code: str):
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


def _translated(kind: type, code: str) -> Exception:
    error = kind(f"{code} from the store")
    error.__cause__ = _ClientError(code)
    return error


@pytest.mark.parametrize("error, file_fault", [
    (FileNotFoundError("gone since the listing"), True),
    (_translated(PermissionError, "AccessDenied"), True),
    (faults.FileTooLargeError("too large"), True),
    (_translated(PermissionError, "ExpiredToken"), False),
    (_translated(PermissionError, "InvalidAccessKeyId"), False),
    (OSError(errno.EBUSY, "SlowDown"), False),
    (ConnectionRefusedError("refused"), False),
    (TimeoutError("timed out"), False),
])
def test_what_is_a_files_own_fault(error, file_fault):
    assert faults.is_file_fault("s3://bkt/photos/a.jpg", error) is file_fault
    assert faults.is_store_fault("s3://bkt/photos/a.jpg", error) is not file_fault
    assert faults.is_file_fault("/local/a.jpg", error)  # a local disk: every error is the file's
    assert not faults.is_store_fault("/local/a.jpg", error)


def test_a_bug_is_neither_retried_nor_a_store_fault():
    def bug():
        raise TypeError("unsupported operand")

    start = time.monotonic()
    with pytest.raises(TypeError):
        faults.with_retries("s3://bkt/a.jpg", bug)
    assert time.monotonic() - start < 1


def _answering(*answers):
    """A request that raises or returns each of `answers` in turn."""
    pending = iter(answers)

    def request():
        answer = next(pending)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return request


def test_a_failing_store_is_retried_within_the_budget_then_stops_the_job():
    use_job_options(PipelineOptions(["--store_retry_s", "1.5"]))
    calls = []

    def refused():
        calls.append(time.monotonic())
        raise ConnectionRefusedError("connection refused")

    start = time.monotonic()
    with pytest.raises(faults.StoreError, match=r"the store s3://bkt failed for [12] s \(ConnectionRefusedError: "
                                                r"connection refused\).*--store_retry_s"):
        faults.with_retries("s3://bkt/photos/a.jpg", refused)
    assert 1.5 <= time.monotonic() - start < 5 and len(calls) >= 2
    assert faults.with_retries("s3://other/a.jpg", _answering(ConnectionResetError("reset"), b"bytes")) == b"bytes"
    use_job_options(PipelineOptions([]))


def test_a_stalled_request_counts_against_the_budget_from_when_it_was_made():
    """A stalled store answers nothing until the client's timeout: the time spent waiting is time it failed."""
    use_job_options(PipelineOptions(["--store_retry_s", "1"]))

    def timed_out():
        time.sleep(1.2)  # the client's read timeout, longer than the whole budget
        raise TimeoutError("read timeout")

    start = time.monotonic()
    try:
        with pytest.raises(faults.StoreError, match=r"the store s3://stalled failed for 1 s \(TimeoutError: read "):
            faults.with_retries("s3://stalled/a.jpg", timed_out)
    finally:
        use_job_options(PipelineOptions([]))
    assert time.monotonic() - start < 2  # one timeout, not a budget after it


def test_a_stream_broken_by_the_store_goes_on_from_where_it_broke_off():
    reads = []

    def rows_from(given: int):
        reads.append(given)
        for row in range(given, 5):
            if row == 3 and len(reads) == 1:
                raise ConnectionResetError("reset mid-stream")
            yield row

    assert list(faults.stream_with_retries("s3://bkt/shard.parquet", rows_from)) == [0, 1, 2, 3, 4]
    assert reads == [0, 3]
    with pytest.raises(ValueError):  # the file's own fault, or a bug: raised at once
        list(faults.stream_with_retries("s3://bkt/shard.parquet", lambda given: iter([int("x")])))


def test_an_object_rewritten_after_listing_is_read_again_and_one_still_changing_gets_a_row():
    class FileExpired(OSError):  # s3fs's exception for an object whose ETag changed since it was opened
        pass

    assert faults.with_retries("memory://bkt/a.jpg", _answering(FileExpired("changed"), b"new")) == b"new"
    with pytest.raises(faults.FileChangedError, match="changed while it was read, twice"):
        faults.with_retries("memory://bkt/a.jpg", _answering(FileExpired("changed"), FileExpired("again")))
    assert faults.is_file_fault("memory://bkt/a.jpg", faults.FileChangedError("still changing"))


# --- Every other way a job lost work, hung, leaked or crashed --------------------------------------------------------

def test_relabel_with_a_report_writes_the_page(finished_run, tmp_path):
    page = tmp_path / "page.html"
    assert relabel.main(["--embeddings", str(finished_run), "--labels", "everyday", "--output",
                         str(tmp_path / "relabeled"),
                         "--report", str(page)]) == 0
    assert page.stat().st_size > 1000 and page.read_text().count("data:image/jpeg;base64,") >= 7
    assert read_manifest(str(tmp_path / "relabeled")).embeddings_run == read_manifest(str(finished_run)).run_id
    again = tmp_path / "again.html"
    assert report.main(["--run", str(tmp_path / "relabeled"), "--output", str(again)]) == 0
    assert again.stat().st_size > 1000


def test_the_output_folder_inside_the_input_is_never_an_input(tmp_path, photos, capsys):
    images = tmp_path / "images"
    shutil.copytree(photos, images)
    out = images / "labels"
    for again in ([], ["--overwrite", "--report", str(out / "report.html")], ["--overwrite"]):
        assert classify_images.main(["--input", str(images), "--labels", "everyday", "--output", str(out),
                                     "--max_error_fraction", "0", *again]) == 0
        assert sorted(Path(row["uri"]).name for row in read_run(str(out))) == sorted(p.name for p in
                                                                                      photos.glob("*.jpg"))
    assert f"files in --output {out}: they are left out" in capsys.readouterr().err


def test_secrets_never_reach_what_a_job_prints(tmp_path, photos):
    leaky = "https://user:PASS123@127.0.0.1:9/labels.txt?X-Amz-Signature=SIG456"
    for flags in (["--labels", leaky], ["--labels", "everyday", "--nomic_api_key=nk-SECRET789"]):
        done = subprocess.run([sys.executable, "-m", "pipelines.classify_images", "--input", f"{photos}/*.jpg",
                               "--output", str(tmp_path / "out"), *flags], cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 2 and done.stderr.startswith("error: "), done.stderr
        for secret in ("PASS123", "SIG456", "nk-SECRET789"):
            assert secret not in done.stderr + done.stdout
    assert "unknown option(s): --nomic_api_key (did you mean" in done.stderr


def test_the_report_title_shows_a_labels_url_redacted(finished_run, tmp_path):
    labels = options.LabelChoice("https://user:PASS123@host/labels.txt?X-Amz-Signature=SIG456", {"cat": ["cat"]},
                                 None, rank.Decision())
    page = tmp_path / "page.html"
    classify_images.label_report(str(finished_run), str(page), labels)
    text = page.read_text()
    assert "PASS123" not in text and "SIG456" not in text and "user:&lt;redacted&gt;@host" in text


@pytest.mark.slow
def test_sigterm_ends_the_job_with_one_line_and_a_rerun_continues(tmp_path):
    job, flags, _ = _saving(tmp_path)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGTERM: nothing of run run-"), err[-2000:]
    assert "run the same command again to continue" in err
    rerun = _again(flags)
    assert rerun.returncode == 0 and "resumed" in rerun.stdout, rerun.stderr[-3000:]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_job_is_checked_ends_it_with_one_line(tmp_path, photos, stop):
    """Before the job runs (here: reading a label file that a FIFO holds open; in use, embedding --examples) a stop
    is said the way it is once the job runs, with no traceback."""
    labels = tmp_path / "labels.txt"
    os.mkfifo(labels)
    job = subprocess.Popen([sys.executable, "-m", "pipelines.classify_images", "--input", f"{photos}/*.jpg",
                            "--labels", str(labels), "--output", str(tmp_path / "out")], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:  # opening the FIFO for writing succeeds once the job has it open for reading, and is waiting
        try:
            writer = os.open(labels, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert job.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    job.send_signal(stop)
    _, err = job.communicate(timeout=60)
    os.close(writer)
    assert job.returncode == 128 + stop
    assert err.strip().splitlines() == [f"error: stopped by {stop.name} before the job ran: nothing was committed; "
                                        "run the same command again"], err[-2000:]


def test_a_stopped_job_says_what_a_rerun_starts_from(tmp_path):
    run = Manifest(job="classify", run_id="run-x", started="2026-12-07T00:00:00Z", command=("classify",),
                   format="parquet", model="m")
    out = str(tmp_path / "out")
    assert "no embedded image had been saved yet" in runner.saved_so_far(out, run)
    (tmp_path / "out" / "run-x").mkdir(parents=True)
    for name, rows in (("progress-a.parquet", 3), ("progress-b.parquet", 1)):
        pq.write_table(pa.table({"uri": [f"{name}-{i}" for i in range(rows)]}), tmp_path / "out" / "run-x" / name)
    assert runner.saved_so_far(out, run) == (f"4 embedded images were saved in {out}/run-x: run the same command again "
                                           "to continue from them")
    assert "progress-*.parquet, every few hundred images) are kept" in runner.saved_so_far("s3://bkt/out", run)


def test_a_full_disk_names_the_run_folder_to_free(tmp_path):
    run = tmp_path / "out" / "run-x"
    run.mkdir(parents=True)
    (run / "results-1.parquet").write_bytes(b"\0" * 2_000_000)
    error = OSError(errno.ENOSPC, "No space left on device")
    hint = runner._if_disk_full(str(tmp_path / "out"), "run-x", error)
    assert f"are in {run} (2 MB)" in hint and "run again to continue from them, or delete that folder" in hint
    assert runner._if_disk_full("s3://bkt/out", "run-x", error) == ""


def test_a_damaged_hf_weights_file_stops_the_job_before_it_starts_naming_the_file(tmp_path, photos, capsys):
    from tests.tiny_models import tiny_clip

    folder = tiny_clip(tmp_path / "clip")
    (weights,) = folder.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:-1000])
    capsys.readouterr()  # what saving the model printed
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "general", "--output",
                                 str(tmp_path / "out"), "--backend", "hf", "--hf_model", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"the weights file '{weights}' is damaged" in err and "\n" not in err, err


def test_large_label_sets_are_embedded_in_bounded_batches_with_progress(monkeypatch, caplog):
    class Counting:
        calls: list[int] = []

        def embed_phrases(self, phrases, templates):
            self.calls.append(len(phrases))
            return np.asarray([[len(p), 1.0] for p in phrases], dtype=np.float32)

    monkeypatch.setattr(rank, "PROGRESS_EVERY_S", 0.0)
    caplog.set_level("INFO", logger="zero_shot")
    phrases = [f"label {i}" for i in range(1200)]
    vectors = rank.embed_phrases_in_batches(phrases, ["{}"], Counting())
    assert Counting.calls == [512, 512, 176] and vectors.shape == (1200, 2)
    assert vectors[1199, 0] == len("label 1199")
    assert "embedded 1024 of 1200 label phrases" in caplog.text
    Counting.calls.clear()  # with 80 templates (openai's), 6 phrases make the 480 prompts of a call
    assert rank.embed_phrases_in_batches(phrases[:20], ["{}"] * 80, Counting()).shape == (20, 2)
    assert Counting.calls == [6, 6, 6, 2]


def test_the_started_record_is_the_runs_manifest(tmp_path, photos):
    out = tmp_path / "out"
    run = _unfinished_run(out, photos)
    started = Manifest.from_json((out / run / progress.STARTED).read_bytes())
    assert started.run_id == run and started.settings["backend"] == "local" and started.finished is None


@pytest.mark.slow
def test_a_rerun_counts_the_resumed_images_among_the_inputs_the_error_watch_judges(tmp_path, capsys):
    """After a failed commit, the inputs left to read may be mostly the broken ones: judged on their own they would
    stop the rerun that was told to accept them."""
    images = make_images(tmp_path / "images", 800, max_side=64)
    out = tmp_path / "out"
    flags = ["--input", f"{images}/*", "--labels", "everyday", "--output", str(out), "--max_error_fraction", "0.25"]
    with _claim_taken_once_started(out):  # the commit fails: every vector stays saved
        assert classify_images.main(flags) == 1
    for i in range(220):
        (images / f"broken{i:03d}.jpg").write_bytes(b"\xff\xd8\xff not a photo %d" % i)
    capsys.readouterr()
    assert classify_images.main(flags) == 0, capsys.readouterr().err[-2000:]
    assert "resumed 800 images" in capsys.readouterr().out
    assert len(read_run(str(out), "errors")) == 220


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_store_retry_s_is_a_number_of_seconds(tmp_path, photos, capsys, value):
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "everyday", "--output",
                                 str(tmp_path / "out"), "--store_retry_s", value]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --store_retry_s must be a number of seconds, at least 0, got {value!r}", err


def test_a_store_outage_while_a_run_is_read_is_the_stores_fault_not_a_damaged_run(monkeypatch):
    """Before, a refused connection while checking a shard told the user to delete the run's _SUCCESS."""
    from transforms import run_folder

    def refused(path):
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(run_folder, "_footer_rows", refused)
    use_job_options(PipelineOptions(["--store_retry_s", "0.5"]))
    try:
        with pytest.raises(faults.StoreError, match=r"the store s3://bkt failed"):
            run_folder.check_shard("s3://bkt/out", "s3://bkt/out/run-x/embeddings-1.parquet", 7)
    finally:
        use_job_options(PipelineOptions([]))
