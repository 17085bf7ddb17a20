"""Looking at a run: the HTML report (also in a real headless Chromium), the output formats, progress, and a command
line that is hard to misuse."""
from __future__ import annotations

import html.parser
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import classify_images, report
from transforms.metrics import ProgressLog
from transforms.run_folder import read_run, run_files
from transforms.write import read_rows

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INJECTED = '<script>console.error("injected script ran")</script>'


class Sections(html.parser.HTMLParser):
    """label section -> the data-uri of every figure in it, from a page's DOM."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self.current = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.current = attrs.get("data-label")
            if self.current is not None:
                self.sections[self.current] = []
        elif tag == "figure" and self.current is not None:
            self.sections[self.current].append(attrs["data-uri"])

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None


@pytest.fixture(scope="module")
def labeled_run(tmp_path_factory, photos):
    """A real run on the sample photos (one renamed with markup), with a label that is a script, and one bad file."""
    folder = tmp_path_factory.mktemp("run")
    inputs = folder / "in"
    inputs.mkdir()
    for path in photos.iterdir():
        shutil.copy(path, inputs / path.name)
    shutil.copy(photos / "coffee.jpg", inputs / "<img src=x onerror=alert(1)>.jpg")
    (inputs / "broken.jpg").write_bytes(b"not an image")
    labels = folder / "labels.txt"
    labels.write_text(f"animal\nbuilding\nvehicle\nplant\n{INJECTED}\n")
    page = folder / "report.html"
    assert classify_images.main(["--input", f"{inputs}/*", "--labels", str(labels), "--output",
                                 str(folder / "out" / "labels"), "--report", str(page), "--top_k", "3",
                                 "--max_error_fraction", "1"]) == 0
    return folder, page


def _expected_sections(folder: Path) -> dict[str, set]:
    """Top label -> the URIs labeled with it, from the run's own result rows."""
    expected: dict[str, set] = {}
    for row in read_run(str(folder / "out" / "labels")):
        expected.setdefault(row["labels"][0], set()).add(row["uri"])
    return expected


def test_report_shows_every_labeled_image_under_its_top_label(labeled_run):
    folder, page = labeled_run
    parser = Sections()
    parser.feed(page.read_text())
    assert {label: set(uris) for label, uris in parser.sections.items()} == _expected_sections(folder)
    text = page.read_text()
    assert "broken.jpg" in text and "decode" in text  # the errors table
    assert INJECTED not in text and "&lt;script&gt;" in text  # data is text, never markup
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;.jpg" in text
    assert text.count("data:image/jpeg;base64,") >= 8  # thumbnails are embedded: the page stands alone


def test_a_thumbnail_that_cannot_be_read_is_a_placeholder(tmp_path):
    assert report.thumbnail(str(tmp_path / "gone.jpg")) is None
    rows = [{"uri": str(tmp_path / "gone.jpg"), "labels": ["cat"], "probs": [0.5], "model": "m"}]
    assert 'class="missing"' in report.render(rows, [], {}, "t")


@pytest.mark.skipif(not CHROMIUM and not os.environ.get("REQUIRE_BROWSER"),
                    reason="no chromium on this machine (apt-get install chromium); .ci/run installs it")
@pytest.mark.slow
def test_report_in_headless_chromium(labeled_run, tmp_path):
    assert CHROMIUM, "REQUIRE_BROWSER is set but chromium is not installed"
    folder, page = labeled_run
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--enable-logging=stderr", "--v=0", "--window-size=1200,2400"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The page runs no script: any console line is an error, an injected script that ran among them.
    assert "CONSOLE" not in dom.stderr, [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    parser = Sections()
    parser.feed(dom.stdout)
    assert {label: set(uris) for label, uris in parser.sections.items()} == _expected_sections(folder)
    assert any(uri.endswith("chelsea.jpg") for uri in parser.sections["animal"])
    screenshot = tmp_path / "report.png"
    shot = subprocess.run([*flags, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert shot.returncode == 0 and screenshot.read_bytes()[:4] == b"\x89PNG", shot.stderr[-2000:]


def test_every_format_has_the_same_rows_and_columns(tmp_path, photos):
    outputs = {}
    for file_format in ("parquet", "jsonl", "csv"):
        prefix = tmp_path / file_format / "labels"
        assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "everyday", "--output", str(prefix),
                                     "--format", file_format, "--explain", "2"]) == 0
        (path,) = run_files(str(prefix))
        assert path.endswith(f".{file_format}")
        outputs[file_format] = sorted(read_rows(path), key=lambda row: row["uri"])
    columns = {fmt: [list(row) for row in rows] for fmt, rows in outputs.items()}
    assert columns["parquet"] == columns["jsonl"] == columns["csv"]
    for parquet, jsonl, csv_row in zip(outputs["parquet"], outputs["jsonl"], outputs["csv"]):
        assert parquet["labels"] == jsonl["labels"] == csv_row["labels"]
        assert jsonl["probs"] == pytest.approx(parquet["probs"], abs=1e-6) and csv_row["evidence"] == jsonl["evidence"]
        assert parquet["width"] == jsonl["width"] == csv_row["width"]  # numbers come back as numbers


def test_the_job_says_where_its_rows_went(tmp_path, photos, capsys):
    run = tmp_path / "out"
    assert classify_images.main(["--input", f"{photos}/*.jpg", "--labels", "everyday", "--output", str(run)]) == 0
    out = capsys.readouterr().out
    (run_id,) = [p.name for p in run.iterdir() if p.is_dir()]
    assert f"run {run_id} in {run} (_SUCCESS written)" in out
    assert re.search(rf"results: 7 rows in {run_id}/results-[0-9a-f]{{16}}\.parquet\n", out)
    assert re.search(rf"errors: 0 rows in {run_id}/errors-[0-9a-f]{{16}}\.parquet\n", out)


def test_progress_has_the_total_the_rate_and_the_time_left(caplog):
    progress = ProgressLog(every_s=0.0)
    with caplog.at_level(logging.INFO, logger="zero_shot"):
        progress.add(10, total=40)
    assert "labeled 10 of 40 inputs" in caplog.text and "left)" in caplog.text


@pytest.mark.parametrize("argv, message", [
    (["--input", "photos/a.jpg", "photos/b.jpg", "--labels", "everyday", "--output", "out"],
     "unexpected argument(s): photos/b.jpg; a glob must be quoted"),
    (["--input", "photos/*.jpg", "--lables", "everyday", "--output", "out"],
     "unknown option(s): --lables (did you mean --labels?)"),
])
def test_shell_mistakes_are_named(argv, message, capsys):
    assert classify_images.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_help_lists_the_builtin_label_sets_and_templates():
    done = subprocess.run([sys.executable, "-m", "pipelines.classify_images", "--help"], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0
    for name in ("general", "everyday", "imagenet", "cifar100", "photos", "openai"):
        assert name in done.stdout
    assert "--local_none_margin" in done.stdout and "--format {parquet,jsonl,csv}" in done.stdout


def test_a_label_file_of_one_comma_separated_line_gets_a_warning(tmp_path, photos, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat, dog, car\n")
    assert classify_images.main(["--input", f"{photos}/chelsea.jpg", "--labels", str(labels), "--output",
                                 str(tmp_path / "out")]) == 0
    assert "has one line, 'cat, dog, car', read as one label: put one label per line" in capsys.readouterr().err
