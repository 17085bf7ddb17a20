"""The command line: a full multi-process run to Parquet, and one clear line for every bad configuration."""
import glob
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import classify_images
from tests.conftest import hostile_files
from transforms.records import ERRORS_SCHEMA, RESULTS_SCHEMA
from transforms.run_folder import run_files

REPO = Path(__file__).resolve().parents[1]


def _read(run: str, table: str = "results"):
    return pq.read_table(run_files(run, table))


@pytest.mark.slow
def test_multi_process_run_writes_the_output_contract(tmp_path, photos, hostile_dir):
    """DirectRunner with worker processes: everything must pickle, as on Dataflow, Flink or Spark."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in list(photos.iterdir()) + list(hostile_dir.iterdir()):
        (inputs / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out" / "labels"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.classify_images", "--input", f"{inputs}/*", "--labels", "everyday",
         "--output", str(out), "--top_k", "3", "--batch_size", "4", "--max_error_fraction", "1",
         "--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    bad = {name for name, (_, ok) in hostile_files(photos / "chelsea.jpg").items() if not ok}
    results, errors = _read(str(out)), _read(str(out), "errors")
    assert results.schema.equals(RESULTS_SCHEMA) and errors.schema.equals(ERRORS_SCHEMA)
    labeled = {Path(uri).name for uri in results.column("uri").to_pylist()}
    failed = {Path(uri).name for uri in errors.column("uri").to_pylist()}
    assert failed == bad and labeled == {p.name for p in inputs.iterdir()} - bad
    assert results.num_rows == len(labeled) and errors.num_rows == len(failed)
    assert set(errors.column("stage").to_pylist()) == {"decode"}
    rows = {Path(row["uri"]).name: row for row in results.to_pylist()}
    assert rows["chelsea.jpg"]["labels"][0] == "animal" and len(rows["chelsea.jpg"]["labels"]) == 3
    assert (rows["exif_rotated.jpg"]["width"], rows["exif_rotated.jpg"]["height"]) == (300, 451)
    share = len(bad) / (len(bad) + len(labeled))
    assert f"labeled {len(labeled)} images, {len(bad)} errors ({share:.1%} of inputs; read 0, decode {len(bad)}, " \
           "embed 0)" in done.stdout


@pytest.fixture
def good_args(photos, tmp_path):
    return ["--input", f"{photos}/*.jpg", "--labels", "everyday", "--output", str(tmp_path / "out")]


def _replace(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


@pytest.mark.parametrize("change, message", [
    (lambda a, t: _replace(a, "--labels", str(t / "nope.txt")), "cannot read label set"),
    (lambda a, t: _replace(a, "--labels", str(_write(t / "empty.txt", "# none\n"))), "is empty"),
    (lambda a, t: _replace(a, "--labels", str(_write(t / "dup.txt", "cat\ndog\ncat\n"))), "repeats labels: cat"),
    (lambda a, t: _replace(a, "--input", str(t / "*.tif")), "matches no file"),
    (lambda a, t: _replace(a, "--input", "nosuchprotocol://bucket/*.jpg"), "cannot list --input"),
    (lambda a, t: a + ["--top_k", "0"], "--top_k must be at least 1"),
    (lambda a, t: a + ["--batch_size", "-3"], "--batch_size must be at least 1"),
    (lambda a, t: a + ["--top-k", "3"], "unknown option(s): --top-k"),
    (lambda a, t: a + ["--backend", "clip"], "invalid choice: 'clip'"),
    (lambda a, t: a + ["--threshold", "0.2"], "--multi_label and --threshold go together"),
    (lambda a, t: a + ["--multi_label", "--threshold", "1.5"], "--threshold must be in (0, 1]"),
    (lambda a, t: a + ["--min_prob", "2"], "--min_prob must be between 0 and 1"),
    (lambda a, t: a + ["--templates", "nonexistent"], "cannot read templates 'nonexistent'"),
    (lambda a, t: a[2:], "the following arguments are required: --input"),
    (lambda a, t: a + ["--local_runtime", "onnx-int8"], "needs --local_int8_calibration"),
    (lambda a, t: _replace(a, "--labels", "oci://bucket/labels.txt"), "(ImportError: Install ocifs"),
    (lambda a, t: _replace(a, "--output", "nosuchfs://bucket/out"),
     "cannot read --output 'nosuchfs://bucket/out': ValueError: Protocol not known: nosuchfs"),
    (lambda a, t: _replace(a, "--output", str(_write(t / "a_file", "x") / "out")), "cannot write --output"),
    (lambda a, t: a + ["--local_threads", "-1"], "--local_threads must be at least 0"),
])
def test_bad_configuration_stops_before_the_job_with_one_line(good_args, tmp_path, capsys, change, message):
    with pytest.raises(SystemExit) as exited:
        sys.exit(classify_images.main(change(good_args, tmp_path)))
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not glob.glob(str(tmp_path / "out*"))


def test_multi_label_reports_every_label_above_the_threshold(good_args, tmp_path, capsys):
    assert classify_images.main(good_args + ["--multi_label", "--threshold", "0.02", "--templates", "photo"]) == 0
    rows = _read(str(tmp_path / "out")).to_pylist()
    assert len(rows) == 7
    for row in rows:
        assert all(p >= 0.02 for p in row["probs"]) and row["probs"] == sorted(row["probs"], reverse=True)
        assert row["labels"] == ["unknown"] or len(row["labels"]) == len(row["probs"])
    assert any(len(row["labels"]) > 1 for row in rows)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.slow
def test_bad_configuration_exit_status_from_the_shell(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.classify_images", "--input", str(tmp_path / "none*.jpg"),
         "--labels", "everyday", "--output", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: --input '{tmp_path / 'none*.jpg'}' matches no file"


def test_explain_fills_the_evidence_column_and_only_when_asked(good_args, tmp_path):
    assert classify_images.main(good_args + ["--explain", "2"]) == 0
    rows = {Path(row["uri"]).stem: row for row in _read(str(tmp_path / "out")).to_pylist()}
    assert all(len(row["evidence"]) == 2 for row in rows.values())
    assert rows["chelsea"]["evidence"][0]["class"] in ("tabby cat", "tiger cat", "Egyptian Mau")
    assert rows["chelsea"]["evidence"][0]["label"] == "animal"  # the label whose WordNet concept covers the class
    assert rows["coffee"]["evidence"][0] == {"class": "espresso", "prob": pytest.approx(0.95, abs=0.04),
                                             "label": None}  # no label of `everyday` covers espresso
    assert classify_images.main(_replace(good_args, "--output", str(tmp_path / "plain"))) == 0
    assert all(row["evidence"] == [] for row in _read(str(tmp_path / "plain")).to_pylist())


@pytest.mark.slow
def test_help_leaves_the_research_settings_to_help_all():
    def shown(flag):
        return subprocess.run([sys.executable, "-m", "pipelines.classify_images", flag], cwd=REPO,
                              capture_output=True, text=True, timeout=120).stdout

    research = ["--local_chain_length", "--local_hierarchy_weight", "--local_background_overlap",
                "--local_class_prompt", "--local_centre"]
    short, everything = shown("--help"), shown("--help_all")
    assert "--local_top_t" in short and "--help_all" in short and not [flag for flag in research if flag in short]
    assert all(flag in everything for flag in research)


@pytest.mark.parametrize("job, old, new", [("classify_images", "--embeddings", "--keep_embeddings"),
                                           ("relabel", "--batch_size", "--vectors_per_batch"),
                                           ("search", "--top_k", "--images_per_query")])
def test_the_old_names_of_renamed_flags_are_gone(job, old, new, capsys):
    """0.2.0 removed them: each collided with a live flag of a sibling job. The did-you-mean names the new one."""
    import importlib

    assert importlib.import_module(f"pipelines.{job}").main([old, "--output", "out"]) == 2
    assert capsys.readouterr().err.strip() == f"error: unknown option(s): {old} (did you mean {new}?) (see --help)"


def test_one_command_runs_every_job_and_names_a_misspelled_one():
    """`zero-shot-labels JOB` (here as `python -m pipelines JOB`, what the installed command runs) lists the jobs,
    passes the rest to the job's own command line, and refuses an unknown job with one line."""
    from pipelines import JOBS

    def command(*argv):
        return subprocess.run([sys.executable, "-m", "pipelines", *argv], cwd=REPO, capture_output=True, text=True,
                              timeout=300)

    listed = command("--help")
    assert listed.returncode == 0 and all(f"\n  {job} " in listed.stdout for job in JOBS), listed.stdout
    misspelled = command("clasify", "--input", "x")
    assert misspelled.returncode == 2 and misspelled.stderr.count("\n") == 1
    assert misspelled.stderr.startswith("error: unknown job 'clasify' (did you mean classify?)")
    passed_on = command("relabel", "--lables", "x")
    assert passed_on.returncode == 2 and "unknown option(s): --lables (did you mean --labels?)" in passed_on.stderr
