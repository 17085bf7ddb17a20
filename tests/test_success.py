"""Exit 0 and `_SUCCESS` mean the rows are right and complete: each input that used to give a "successful" run with
missing, wrong or corrupt rows, fed exactly as it came, and what the job does with it now."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import apache_beam as beam
import pandas as pd
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import classify_images, relabel, report, search, topics
from pipelines.redact import RedactingStream, redacted
from tests.conftest import REPO, commit_gate
from transforms import run_folder
from transforms.backends import local
from transforms.manifest import Manifest
from transforms.records import ERRORS_SCHEMA, RESULTS_SCHEMA, SEARCH_SCHEMA, embeddings_schema
from transforms.run_folder import SUCCESS, commit, read_manifest, read_run, utc_now
from transforms.write import FORMATS, Shard, WriteRows, read_rows

HOSTILE_NAMES = ["new\nline.jpg", "carriage\rreturn.jpg", 'quote",comma.jpg', "[Errno 2] looks like a list.jpg",
                 "{brace}.jpg", "tab\there.jpg", "ünïcødé 猫 🍕.jpg", " leading space.jpg", "line\u2028sep.jpg"]


def _photo_folder(photos: Path, folder: Path, names=("chelsea", "coffee", "rocket")) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(photos / f"{name}.jpg", folder / f"{name}.jpg")
    return folder


# --- What users install works ------------------------------------------------------------------------------------

def test_a_model_that_cannot_load_stops_the_job_before_it_starts(tmp_path, photos, capsys, monkeypatch):
    """The plain-install failure: `onnx` missing made every image an `OnnxExporterError` row, and the run a success."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # what `import onnx` meets where it is not installed
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "general",
                                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: backend 'local' cannot run: ") and "onnx" in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_model_that_fails_to_load_on_a_worker_fails_the_job_with_no_rows(tmp_path, photos, capsys, monkeypatch):
    """Where the check passed but the worker cannot load the image model: no error row per image, no `_SUCCESS`."""
    def broken(*args):
        raise RuntimeError("the image model is broken on this worker")

    monkeypatch.setattr(local, "_load_classifier", broken)
    monkeypatch.setattr(local.ConSEEmbedder, "classifier", property(lambda self: broken()))
    out = tmp_path / "out"
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "general", "--output", str(out)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: the job failed: RuntimeError: the image model is broken on this worker"), last
    assert not (out / SUCCESS).exists()


# --- A fault that is not the file's fault ends the job ---------------------------------------------------------------

def test_too_many_errors_fail_the_job_and_the_summary_prints_the_fraction(tmp_path, photos, capsys):
    inputs = _photo_folder(photos, tmp_path / "in")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (inputs / "more_broken.jpg").write_bytes(b"\xff\xd8\xff not one either")
    out = tmp_path / "out"
    assert classify_images.main(["--input", f"{inputs}/*.jpg", "--labels", "general", "--output", str(out)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: the job failed: TooManyErrorsError: 1 of the job's 5 inputs failed, more than "
                           "--max_error_fraction 0.1 of them; commonest: decode UnidentifiedImageError (1)"), last
    assert not (out / SUCCESS).exists()
    assert classify_images.main(["--input", f"{inputs}/*.jpg", "--labels", "general", "--output", str(out),
                     "--max_error_fraction", "0.4"]) == 0
    assert "2 errors (40.0% of inputs; read 0, decode 2, embed 0)" in capsys.readouterr().out
    assert read_manifest(str(out)).error_fraction == pytest.approx(0.4)


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_max_error_fraction_is_a_fraction(tmp_path, photos, capsys, value):
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "general", "--output", str(tmp_path / "out"),
                     "--max_error_fraction", value]) == 2
    assert capsys.readouterr().err.strip() == f"error: --max_error_fraction must be between 0 and 1, got {value}"


# --- Text in, text out, exactly ----------------------------------------------------------------------------------

def test_a_label_file_from_a_windows_editor_reads_as_written(tmp_path, photos):
    labels = tmp_path / "labels.txt"
    labels.write_bytes("\ufeff# made in Notepad\r\nanimal\r\nvehicle\r\nfood and drink\r\n".encode("utf-8"))
    plain = tmp_path / "plain.txt"
    plain.write_text("animal\nvehicle\nfood and drink\n")
    for name, path in (("bom", labels), ("plain", plain)):
        assert classify_images.main(["--input", str(photos / "chelsea.jpg"), "--labels", str(path), "--output",
                         str(tmp_path / name), "--top_k", "3"]) == 0
    bom, plain_rows = read_run(str(tmp_path / "bom")), read_run(str(tmp_path / "plain"))
    assert bom[0]["labels"] == plain_rows[0]["labels"] == ["animal", "food and drink", "vehicle"]
    assert bom[0]["probs"] == pytest.approx(plain_rows[0]["probs"])


def test_labels_of_only_punctuation_are_refused_and_unreadable_ones_named(tmp_path, photos, capsys):
    dashes = tmp_path / "dashes.txt"
    dashes.write_text("cat\n---\ndog\n")
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", str(dashes),
                                 "--output", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: label set '{dashes}' has a label '---' with nothing but "
                                               "punctuation; remove that line")
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("cat\n猫\n🍕\npizza\n")
    assert classify_images.main(["--input", str(photos / "chelsea.jpg"), "--labels", str(foreign), "--output",
                     str(tmp_path / "b"), "--top_k", "4"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "cannot read" in line]
    assert len(warned) == 2 and warned[0].startswith("WARNING zero_shot: label '猫': the text model of conse-")
    assert "label '🍕'" in warned[1] and "such labels score alike whatever they mean" in warned[1]
    (row,) = read_run(str(tmp_path / "b"))
    scores = dict(zip(row["labels"], row["scores"]))
    assert scores["猫"] == pytest.approx(scores["🍕"])  # why the warning: MiniLM reads both as [UNK]


def _hostile_rows():
    results = [{"uri": f"/in/{name}", "labels": ["a, \"b\"", "c\nd"], "scores": [0.5, 0.25], "probs": [0.75, 0.125],
                "model": "m", "width": 3, "height": 4, "sha256": "00ff",
                "evidence": [{"class": "tabby, tabby cat", "prob": 0.5, "label": "a, \"b\""},
                             {"class": "espresso", "prob": 0.25, "label": None}]} for name in HOSTILE_NAMES]
    errors = [{"uri": f"/in/{name}", "stage": "read", "error": "FileNotFoundError",
               "message": f"[Errno 2] No such file or directory: '/in/{name}'"} for name in HOSTILE_NAMES]
    errors.append({"uri": "/in/x.jpg", "stage": "decode", "error": "ValueError", "message": '{"looks": "like json"}'})
    return results, errors


@pytest.mark.parametrize("file_format", FORMATS)
def test_every_format_gives_back_exactly_the_rows_it_was_given(tmp_path, file_format):
    results, errors = _hostile_rows()
    with TestPipeline() as p:
        written = p | "Results" >> beam.Create(results) | "WriteResults" >> WriteRows(
            str(tmp_path / "results"), RESULTS_SCHEMA, file_format)
        assert_that(written | "Counts" >> beam.Map(lambda shard: shard.rows), equal_to([len(results)]))
        p | "Errors" >> beam.Create(errors) | "WriteErrors" >> WriteRows(
            str(tmp_path / "errors"), ERRORS_SCHEMA, file_format)
    for table, rows in (("results", results), ("errors", errors)):
        (shard,) = tmp_path.glob(f"{table}-*")
        assert sorted(read_rows(str(shard)), key=lambda r: r["uri"] + r.get("message", "")) == \
            sorted(rows, key=lambda r: r["uri"] + r.get("message", ""))
    if file_format == "csv":  # what a pandas user gets, following RFC 4180
        (shard,) = tmp_path.glob("results-*")
        assert sorted(pd.read_csv(shard)["uri"]) == sorted(row["uri"] for row in results)


def test_a_csv_run_with_hostile_names_and_read_errors_reads_back_and_reports(tmp_path, photos):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in HOSTILE_NAMES[:4]:
        shutil.copy(photos / "chelsea.jpg", inputs / name)
    (inputs / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a read error: "[Errno 2] No such file ..."
    out = tmp_path / "out"
    assert classify_images.main(["--input", f"{inputs}/*.jpg", "--labels", "general", "--output", str(out),
                                 "--format", "csv", "--max_error_fraction", "1",
                                 "--report", str(tmp_path / "report.html")]) == 0
    manifest = read_manifest(str(out))
    assert [shard.rows for shard in manifest.shards["results"]] == [4]
    assert {row["uri"] for row in read_run(str(out))} == {str(inputs / name) for name in HOSTILE_NAMES[:4]}
    (error,) = read_run(str(out), "errors")
    assert error["message"].startswith("[Errno 2]") and error["uri"] == str(inputs / "gone.jpg")
    assert report.main(["--run", str(out), "--output", str(tmp_path / "again.html")]) == 0


# --- Inputs the listing meets ------------------------------------------------------------------------------------

def _drop_root_privileges() -> list[str]:
    """As root, permission bits bind only without the capabilities that bypass them: setpriv drops those."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]


@pytest.mark.slow
def test_fifos_undecodable_names_and_unreadable_folders_are_error_rows(tmp_path, photos):
    inputs = _photo_folder(photos, tmp_path / "in" / "ok")
    os.mkfifo(inputs / "pipe.jpg")  # reading it would block forever
    (inputs / os.fsdecode(b"caf\xe9.jpg")).write_bytes((photos / "china.jpg").read_bytes())
    locked = tmp_path / "in" / "locked"
    _photo_folder(photos, locked, names=("flower",))
    locked.chmod(0)
    out = tmp_path / "out"
    try:
        done = subprocess.run([*_drop_root_privileges(), sys.executable, "-m", "pipelines.classify_images", "--input",
                               f"{tmp_path / 'in'}/**/*.jpg", "--labels", "general", "--output", str(out),
                               "--max_error_fraction", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {Path(row["uri"]).name for row in read_run(str(out))} == {"chelsea.jpg", "coffee.jpg", "rocket.jpg"}
    errors = {row["uri"]: (row["error"], row["message"]) for row in read_run(str(out), "errors")}
    assert errors[str(inputs / "pipe.jpg")] == ("NotAFileError", "a FIFO, not a regular file: only files are read")
    assert errors[str(inputs / "caf\\xe9.jpg")][0] == "FileNameError"
    assert errors[str(locked)][0] == "PermissionError" and "files in it are not labeled" in errors[str(locked)][1]
    assert len(errors) == 3


# --- One run per folder, for real -------------------------------------------------------------------------------

def test_of_two_commits_racing_into_one_folder_exactly_one_wins(tmp_path, monkeypatch):
    """Both jobs read "no run here" and counted their rows before either claims: the exclusive claim of the next
    generation lets exactly one through."""
    out = tmp_path / "out"
    out.mkdir()
    both_ready = threading.Barrier(2)
    claim = run_folder._claim

    def wait_then_claim(*args):
        both_ready.wait(timeout=30)
        return claim(*args)

    monkeypatch.setattr(run_folder, "_claim", wait_then_claim)
    outcomes = {}

    def job(run_id):
        shard = out / run_id / "results-00000-of-00001.jsonl"
        shard.parent.mkdir()
        shard.write_text('{"uri": "x"}\n')
        try:
            commit(str(out), Manifest("classify", run_id, utc_now(), ("test",), "jsonl", "model"), None,
                   {"results": [Shard(str(shard), 1)]})
            outcomes[run_id] = "committed"
        except Exception as e:  # noqa: BLE001 - the assertions below say which kind is right
            outcomes[run_id] = f"{type(e).__name__}: {e}"

    threads = [threading.Thread(target=job, args=(f"run-{n}",), name=f"job-{n}") for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winner = [run_id for run_id, outcome in outcomes.items() if outcome == "committed"]
    assert len(winner) == 1, outcomes
    (loser,) = set(outcomes) - set(winner)
    assert outcomes[loser].startswith(f"ConcurrentRunError: another job (run {winner[0]}) is committing to ")
    assert f"stays uncommitted in {loser}/" in outcomes[loser]
    assert read_manifest(str(out)).run_id == winner[0] and read_run(str(out)) == [{"uri": "x"}]


@pytest.mark.slow
def test_a_job_that_another_committed_under_fails_and_never_reports_its_rows(tmp_path, photos):
    out = tmp_path / "out"
    gate = tmp_path / "gate"
    first = subprocess.Popen([sys.executable, "-m", "pipelines.classify_images", "--input", f"{photos}/*.jpg",
                              "--labels", "general", "--output", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, **commit_gate(gate)})
    deadline = time.monotonic() + 300
    while not list(out.glob("run-*/errors-*")):  # its (empty) errors shard is written last: it waits at the gate
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    assert classify_images.main(["--input", str(photos / "chelsea.jpg"), "--labels", "general",
                                 "--output", str(out)]) == 0
    second = read_manifest(str(out))
    gate.touch()
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 1, stdout + stderr
    assert stderr.strip().splitlines()[-1].startswith(
        f"error: the job failed: ConcurrentRunError: another job committed run {second.run_id} to ")
    assert f"({SUCCESS} written)" not in stdout
    assert read_manifest(str(out)) == second and len(read_run(str(out))) == 1


# --- No secret in the manifest -----------------------------------------------------------------------------------

def test_no_secret_reaches_the_manifest(tmp_path, photos):
    secrets = {"--s3_access_key_id": "AKIAEXAMPLEKEYID", "--s3_secret_access_key": "wJalrXUtnFEMI-secret",
               "--s3_session_token": "FwoGZXIvYXdzEXAMPLETOKEN",
               "--azure_connection_string": "DefaultEndpointsProtocol=https;AccountName=acct;"
                                            "AccountKey=c2VjcmV0LWF6dXJlLWtleQ==;EndpointSuffix=core.windows.net",
               "--s3_endpoint_url": "https://minio-user:Pa55w0rd-in-url@127.0.0.1:9000"}
    argv = ["--input", f"{photos}/chelsea.jpg", "--labels", "general", "--output", str(tmp_path / "out")]
    for flag, value in secrets.items():
        argv += [f"{flag}={value}"] if "session" in flag else [flag, value]
    assert classify_images.main(argv) == 0
    manifest = (tmp_path / "out" / SUCCESS).read_text()
    for secret in ("AKIAEXAMPLEKEYID", "wJalrXUtnFEMI-secret", "FwoGZXIvYXdzEXAMPLETOKEN", "c2VjcmV0LWF6dXJlLWtleQ",
                   "Pa55w0rd-in-url"):
        assert secret not in manifest
        assert [p for p in (tmp_path / "out").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()] == []
    command = json.loads(manifest)["command"]
    assert "https://minio-user:<redacted>@127.0.0.1:9000" in command and "--s3_session_token=<redacted>" in command


@pytest.mark.parametrize("argv, expected", [
    (["--input", "gs://b/*.jpg?X-Goog-Signature=abc123&X-Goog-Date=1"],
     ["--input", "gs://b/*.jpg?X-Goog-Signature=<redacted>&X-Goog-Date=1"]),
    (["--hf_token=hf_abc", "--nomic_api_key_file", "gs://keys/nomic", "--db_password", "hunter2"],
     ["--hf_token=<redacted>", "--nomic_api_key_file", "gs://keys/nomic", "--db_password", "<redacted>"]),
    (["--blob_service_endpoint", "https://acct.blob.core.windows.net/?sv=2022&sig=SIGNATURE"],
     ["--blob_service_endpoint", "https://acct.blob.core.windows.net/?sv=2022&sig=<redacted>"]),
    (["--output", "s3://user:pw@bucket/out"], ["--output", "s3://user:<redacted>@bucket/out"]),
])
def test_redaction_knows_urls_signatures_and_secret_flags(argv, expected):
    assert redacted(argv) == expected



def test_a_short_secret_is_redacted_where_it_stands_whole_and_nowhere_else():
    out = io.StringIO()
    RedactingStream(out, ["y"]).write("Classify: --store_retry_s 60 --s3_secret_access_key y, key=y\n")
    assert out.getvalue() == "Classify: --store_retry_s 60 --s3_secret_access_key <redacted>, key=<redacted>\n"


def test_a_job_with_a_one_letter_secret_prints_its_lines_unmangled(tmp_path, photos):
    done = subprocess.run([sys.executable, "-m", "pipelines.classify_images", "--input", f"{photos}/chelsea.jpg",
                           "--labels", "general", "--output", str(tmp_path / "out"), "--s3_secret_access_key", "t"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "redacted" not in done.stdout + done.stderr and "labeled 1 image" in done.stdout

# --- Readers and the report on a damaged run --------------------------------------------------------------------

def _damage(run: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    manifest = json.loads((copy / SUCCESS).read_text())
    if how == "truncated":
        (copy / SUCCESS).write_text((run / SUCCESS).read_text()[:100])
    elif how == "missing shard":
        (copy / manifest["shards"]["results"][0]["path"]).unlink()
    elif how == "foreign shard":
        manifest["shards"]["results"][0]["path"] = f"{manifest['run_id']}/../../elsewhere/results.parquet"
        (copy / SUCCESS).write_text(json.dumps(manifest))
    elif how == "wrong row count":
        manifest["shards"]["results"][0]["rows"] += 1
        (copy / SUCCESS).write_text(json.dumps(manifest))
    else:  # "<table> missing" or "<table> cut short": a shard deleted, or cut in half, behind the manifest's back
        table, damage = how.split(" ", 1)
        shard = copy / manifest["shards"][table][0]["path"]
        if damage == "missing":
            shard.unlink()
        else:
            shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return copy


@pytest.mark.parametrize("how, says", [("truncated", "not a manifest: JSONDecodeError"),
                                       ("missing shard", "is missing"),
                                       ("foreign shard", "outside its run folder"),
                                       ("wrong row count", "holds 7 rows, the manifest says 8"),
                                       ("results cut short", "cannot be read (ArrowInvalid")])
def test_a_damaged_run_is_one_line_and_exit_2_for_every_reader(finished_run, tmp_path, capsys, how, says):
    damaged = _damage(finished_run, tmp_path, how)
    assert report.main(["--run", str(damaged), "--output", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {damaged / SUCCESS} is damaged (") and says in err and "\n" not in err, err
    if how in ("truncated", "foreign shard"):
        assert relabel.main(["--embeddings", str(damaged), "--labels", "everyday",
                             "--output", str(tmp_path / "relabeled")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --embeddings: ") and says in err and "\n" not in err, err


@pytest.mark.parametrize("how, says", [("embeddings missing", "is missing"),
                                       ("embeddings cut short", "cannot be read (ArrowInvalid")])
def test_a_damaged_embeddings_shard_stops_relabel_search_and_topics_before_the_job(finished_run, tmp_path, capsys,
                                                                                    how, says):
    damaged = _damage(finished_run, tmp_path, how)
    for main, flags in ((relabel.main, ["--labels", "everyday"]), (search.main, ["--query", "a cat"]),
                        (topics.main, ["--topics", "2"])):
        assert main(["--embeddings", str(damaged), "--output", str(tmp_path / "out"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --embeddings: ") and says in err and "\n" not in err, err


def test_overwrite_over_a_damaged_manifest_says_how_to_recover(finished_run, tmp_path, photos, capsys):
    damaged = _damage(finished_run, tmp_path, "truncated")
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "general", "--output", str(damaged),
                     "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is damaged (not a manifest: JSONDecodeError); delete it and the _COMMIT-* files beside it to start over" \
        in err and "\n" not in err
    for path in [damaged / SUCCESS, *damaged.glob("_COMMIT-*")]:
        path.unlink()
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "general", "--output", str(damaged)]) == 0
    assert [p.name for p in damaged.iterdir() if p.name.startswith("run-")] == [read_manifest(str(damaged)).run_id]


def test_every_schema_has_a_csv_parser_for_every_column():
    from transforms.write import _CSV_PARSERS  # noqa: PLC0415 - the one private table this test is about

    for schema in (RESULTS_SCHEMA, ERRORS_SCHEMA, SEARCH_SCHEMA, embeddings_schema(4)):
        assert set(schema.names) <= set(_CSV_PARSERS)


def test_num_shards_gives_exactly_that_many_and_a_table_without_rows_one_empty_shard(tmp_path):
    errors = [{"uri": f"/in/{i}.jpg", "stage": "decode", "error": "ValueError", "message": "bad"} for i in range(2)]
    with TestPipeline() as p:
        p | "Two" >> beam.Create(errors) | "InThree" >> WriteRows(str(tmp_path / "three"), ERRORS_SCHEMA,
                                                                   num_shards=3)
        p | "None" >> beam.Create([]) | "Empty" >> WriteRows(str(tmp_path / "empty"), ERRORS_SCHEMA, "csv")
    shards = sorted(tmp_path.glob("three-*"))
    assert [shard.name for shard in shards] == [f"three-0000{i}-of-00003.parquet" for i in range(3)]
    assert sorted(len(list(read_rows(str(shard)))) for shard in shards) == [0, 1, 1]
    assert all(pq.read_schema(shard) == ERRORS_SCHEMA for shard in shards)
    (empty,) = tmp_path.glob("empty-*.csv")
    assert empty.read_text().splitlines() == [",".join(ERRORS_SCHEMA.names)] and list(read_rows(str(empty))) == []


def test_a_row_without_a_column_fails_the_write_instead_of_becoming_null(tmp_path):
    with pytest.raises(Exception, match="has no 'message' column"):
        with TestPipeline() as p:
            p | beam.Create([{"uri": "/in/a.jpg", "stage": "decode", "error": "ValueError"}]) | WriteRows(
                str(tmp_path / "errors"), ERRORS_SCHEMA)
