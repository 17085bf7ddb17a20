"""A result set is one run, finished or absent: the run folder, `_SUCCESS`, --overwrite, --skip_existing, the README's
readers, and jobs killed mid-labeling and in the finalize window."""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import classify_images
from pipelines.redact import redacted
from testbed.images import make_images
from tests import jobs
from tests.conftest import commit_gate
from transforms.manifest import LAYOUT
from transforms.rank import Decision
from transforms.run_folder import SUCCESS, NoFinishedRun, commit, read_manifest, read_run, remove_runs_before
from transforms.write import Shard

REPO = Path(__file__).resolve().parents[1]


def _run_folders(output: Path) -> list[str]:
    return sorted(p.name for p in output.iterdir() if p.is_dir())


def readme_readers(run: Path) -> dict[str, int]:
    """Runs the README's reader snippet on `run`; the row count each of pandas, pyarrow.dataset and DuckDB got."""
    readme = (REPO / "README.md").read_text()
    (snippet,) = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if SUCCESS in block]
    scope: dict = {}
    exec(snippet.replace('"out/labels"', repr(str(run))), scope)
    return {"pandas": len(scope["df"]), "pyarrow": scope["table"].num_rows,
            "duckdb": scope["top_labels"].aggregate("sum(n)").fetchall()[0][0]}


def test_a_finished_run_is_its_folder_and_a_manifest_written_last(tmp_path, photos):
    out = tmp_path / "out"
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "everyday", "--output", str(out),
                                 "--top_k", "2"]) == 0
    manifest = read_manifest(str(out))
    claim = "_COMMIT-00000001"  # the first commit's claim of generation 1
    assert {p.name for p in out.iterdir()} == {SUCCESS, claim, manifest.run_id} and manifest.generation == 1
    assert manifest.finished >= manifest.started and manifest.format == "parquet"
    assert manifest.model.startswith("conse-") and len(manifest.settings["label_set_sha256"]) == 64
    assert manifest.job == "classify" and manifest.version == LAYOUT
    assert manifest.command[:3] == ("python -m pipelines.classify_images", "--input", f"{photos}/*.jpg")
    assert manifest.rows("results") == 7 and manifest.rows("errors") == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted([SUCCESS, claim] + [s.path for table in ("results", "errors", "review")
                                               for s in manifest.shards[table]])
    assert len(read_run(str(out))) == 7 and read_run(str(out), "errors") == []


def test_a_second_run_is_refused_unless_overwrite_and_then_leaves_only_the_new_run(tmp_path, photos, capsys):
    out = tmp_path / "out"
    assert jobs.classify(f"{photos}/*.jpg", out, num_shards=3) == 0
    first = read_manifest(str(out)).run_id
    capsys.readouterr()
    assert jobs.classify(f"{photos}/*.jpg", out, num_shards=2) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --output '{out}' holds a finished run ({first}, finished ") and "\n" not in err
    assert "pass --overwrite" in err
    assert jobs.classify(f"{photos}/*.jpg", out, num_shards=2, overwrite=True) == 0
    manifest = read_manifest(str(out))
    assert manifest.run_id != first and _run_folders(out) == [manifest.run_id]
    assert len(manifest.shards["results"]) == 2 and len(list((out / manifest.run_id).glob("results-*"))) == 2
    # The example: 3 shards, then 2, used to leave 5 and read 14 rows for 7 images.
    assert readme_readers(out) == {"pandas": 7, "pyarrow": 7, "duckdb": 7}


def test_the_manifest_keeps_no_secret_from_the_command_line():
    argv = ["--input", "x", "--s3_secret_access_key", "AKIA-SECRET", "--s3_session_token=tok-SECRET",
            "--nomic_api_key_file", "gs://keys/nomic"]
    assert redacted(argv) == ["--input", "x", "--s3_secret_access_key", "<redacted>",
                                              "--s3_session_token=<redacted>", "--nomic_api_key_file",
                                              "gs://keys/nomic"]


def test_skip_existing_labels_only_new_or_changed_files_and_keeps_the_rest(tmp_path, photos, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in photos.iterdir():
        (inputs / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    assert jobs.classify(f"{inputs}/*.jpg", out, decision=Decision(top_k=3)) == 0
    before = {row["uri"]: row for row in read_run(str(out))}
    (inputs / "chelsea_copy.jpg").write_bytes((inputs / "chelsea.jpg").read_bytes())  # new
    (inputs / "coffee.jpg").write_bytes((inputs / "rocket.jpg").read_bytes())  # changed: same uri, new bytes
    (inputs / "flower.jpg").unlink()  # gone
    capsys.readouterr()
    assert jobs.classify(f"{inputs}/*.jpg", out, decision=Decision(top_k=3), overwrite=True,
                         previous=read_manifest(str(out)), skip_existing=str(out)) == 0
    printed = capsys.readouterr().out
    assert "labeled 2 images" in printed and "kept 5 rows of the previous run" in printed
    after = {row["uri"]: row for row in read_run(str(out))}
    assert set(after) == {str(p) for p in inputs.iterdir()}
    for name in ("astronaut", "chelsea", "china", "motorcycle"):
        assert after[str(inputs / f"{name}.jpg")] == before[str(inputs / f"{name}.jpg")]
    # rocket.jpg now has the bytes of the changed coffee.jpg, which is labeled afresh; rocket gets a copy of that row
    # (read and embedded once), equal to its old row up to the model's batch-size rounding.
    rocket, old_rocket = after[str(inputs / "rocket.jpg")], before[str(inputs / "rocket.jpg")]
    assert rocket["labels"] == old_rocket["labels"]
    assert rocket["scores"] == pytest.approx(old_rocket["scores"], abs=1e-6)
    assert after[str(inputs / "coffee.jpg")]["sha256"] == after[str(inputs / "rocket.jpg")]["sha256"]
    assert after[str(inputs / "coffee.jpg")]["labels"] == after[str(inputs / "rocket.jpg")]["labels"]
    assert after[str(inputs / "chelsea_copy.jpg")]["labels"] == after[str(inputs / "chelsea.jpg")]["labels"]
    assert read_manifest(str(out)).skip_existing != read_manifest(str(out)).run_id


@pytest.mark.parametrize("flags, message", [
    (["--top_k", "2"], "was made with another top_k (3, now 2)"),
    (["--labels", "cifar10"], "was made with another label_set_sha256"),
    (["--local_none_margin", "0.3"], "was made with another backend_settings"),
    (["--format", "jsonl"], "is in parquet; write this run with --format parquet too"),
])
def test_skip_existing_refuses_rows_made_another_way(tmp_path, photos, capsys, flags, message):
    previous = tmp_path / "previous"
    assert jobs.classify(f"{photos}/*.jpg", previous, decision=Decision(top_k=3)) == 0
    capsys.readouterr()
    argv = ["--input", f"{photos}/*.jpg", "--labels", "everyday", "--top_k", "3", "--output", str(tmp_path / "new"),
            "--skip_existing", str(previous)]
    for flag, value in zip(flags[::2], flags[1::2]):
        argv = argv[:argv.index(flag) + 1] + [value] + argv[argv.index(flag) + 2:] if flag in argv else argv + [
            flag, value]
    assert classify_images.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --skip_existing: run ") and message in err and "\n" not in err, err
    assert not (tmp_path / "new").exists()


def test_skip_existing_needs_a_finished_run(tmp_path, photos, capsys):
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "everyday",
                                 "--output", str(tmp_path / "out"), "--skip_existing", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --skip_existing '{tmp_path / 'nothing'}' holds no finished " \
                                              f"run (no {SUCCESS})"


def _start(images: Path, out: Path, *flags: str, **env: str) -> subprocess.Popen:
    """The job in a process group of its own, its output in a file beside `out` (a pipe could fill and stall it)."""
    log = open(out.parent / f"{out.name}-{time.monotonic_ns()}.log", "w+")
    job = subprocess.Popen(
        [sys.executable, "-m", "pipelines.classify_images", "--input", f"{images}/*.jpg", "--labels", "everyday",
         "--output", str(out), *flags], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **env}, start_new_session=True)
    job.log = log
    return job


def _finished(job: subprocess.Popen) -> int:
    status = job.wait(timeout=600)
    job.log.seek(0)
    assert status == 0, job.log.read()[-3000:]
    return status


def _wait_for(job: subprocess.Popen, ready, timeout_s: float = 300) -> None:
    """Returns as soon as `ready()` holds; fails if the job ended first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        _still_running(job)
        assert time.monotonic() < deadline, "the moment to kill never came"
        time.sleep(0.05)


def _still_running(job: subprocess.Popen) -> None:
    if job.poll() is not None:
        job.log.seek(0)
        pytest.fail(f"the job ended before it could be killed: {job.log.read()[-2000:]}")


def _kill_when(job: subprocess.Popen, ready) -> None:
    """SIGKILLs the job (its whole process group) as soon as `ready()` holds."""
    _wait_for(job, ready)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=60)


def _new_run_final(out: Path, finished: str = "") -> bool:
    """Whether a run other than `finished` has its result and error shards (the errors' empty one is written last)."""
    return any(folder.name != finished and any(folder.glob("results-*")) and any(folder.glob("errors-*"))
               for folder in out.glob("run-*"))


def _assert_nothing_to_read(out: Path) -> None:
    assert not (out / SUCCESS).exists()
    with pytest.raises(NoFinishedRun):
        read_run(str(out))
    with pytest.raises(FileNotFoundError):
        readme_readers(out)


@pytest.mark.slow
def test_a_job_killed_mid_labeling_leaves_nothing_to_read_and_a_rerun_leaves_one_run(tmp_path):
    images = make_images(tmp_path / "images", 1000, max_side=96)
    out = tmp_path / "out"
    job = _start(images, out, "--batch_size", "8")
    # Killed once the embed stage has saved its first progress file (256 images): a time-based trigger, such as its
    # 5-second progress line, came after the end once the job labeled 1,000 thumbnails in 6 s.
    _kill_when(job, lambda: any(out.glob("run-*/progress-*.parquet")))
    saved = sum(pq.ParquetFile(path).metadata.num_rows for path in out.glob("run-*/progress-*.parquet"))
    assert 0 < saved < 1000
    assert not any(out.glob("run-*/results-*"))
    _assert_nothing_to_read(out)
    _finished(_start(images, out, "--overwrite"))
    manifest = read_manifest(str(out))
    assert _run_folders(out) == [manifest.run_id]  # the killed run's folder is gone
    rows = read_run(str(out))
    assert len(rows) == len({row["uri"] for row in rows}) == 1000
    assert readme_readers(out) == {"pandas": 1000, "pyarrow": 1000, "duckdb": 1000}


@pytest.mark.slow
def test_a_job_killed_in_the_finalize_window_commits_nothing_and_keeps_the_previous_run(tmp_path, photos):
    out = tmp_path / "out"
    pause = commit_gate(tmp_path / "never")
    first = _start(photos, out, **pause)
    _kill_when(first, lambda: _new_run_final(out))  # every shard final, `_SUCCESS` not yet written
    _assert_nothing_to_read(out)
    _finished(_start(photos, out, "--overwrite"))
    finished = read_manifest(str(out))
    rows = read_run(str(out))
    replacing = _start(photos, out, "--overwrite", "--top_k", "1", **pause)
    _kill_when(replacing, lambda: _new_run_final(out, finished.run_id))
    assert read_manifest(str(out)) == finished and read_run(str(out)) == rows  # the old run, whole
    assert len(_run_folders(out)) == 2  # the killed run's final shards sit in a folder no manifest names
    assert readme_readers(out) == {"pandas": 7, "pyarrow": 7, "duckdb": 7}
    _finished(_start(photos, out, "--overwrite"))
    assert _run_folders(out) == [read_manifest(str(out)).run_id]


def test_a_partial_shard_is_invisible_to_the_readers_and_the_commit_deletes_it(tmp_path, photos):
    """A bundle that fails and is retried leaves the shard it had begun in the run folder, under a name that no
    manifest lists: readers never see it, and the commit deletes it."""
    out = tmp_path / "out"
    assert jobs.classify(f"{photos}/*.jpg", out) == 0
    run_id = read_manifest(str(out)).run_id
    (listed,) = (out / run_id).glob("results-*")
    partial = out / run_id / "results-0123456789abcdef.parquet"
    partial.write_bytes(listed.read_bytes())
    assert readme_readers(out) == {"pandas": 7, "pyarrow": 7, "duckdb": 7} and pq.read_table(partial).num_rows == 7
    manifest = read_manifest(str(out))
    shards = {table: [Shard(str(out / shard.path), shard.rows) for shard in listed]
              for table, listed in manifest.shards.items()}
    (out / SUCCESS).unlink()  # as it was just before this run's commit
    commit(str(out), dataclasses.replace(manifest, shards={}, generation=0), None, shards)
    assert not partial.exists() and listed.exists() and len(read_run(str(out))) == 7


def test_a_commit_removes_the_replaced_and_older_runs_but_never_a_later_one(tmp_path):
    """Run ids sort by start time; the run being replaced goes even when another launcher's clock put it later."""
    for run_id in ("run-1-killed", "run-3-replaced", "run-4-still-running"):
        (tmp_path / run_id).mkdir()
        (tmp_path / run_id / "results-00000-of-00001.parquet").write_bytes(b"x")
    assert remove_runs_before(str(tmp_path), "run-2-new", replaced="run-3-replaced") == ["run-1-killed",
                                                                                       "run-3-replaced"]
    assert _run_folders(tmp_path) == ["run-4-still-running"]
