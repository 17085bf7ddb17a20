"""Every run is read through one typed manifest: each job kind, the report's page chosen by it, the layouts 0.1.x
wrote, and a newer layout refused with one line."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from pipelines import classify_images, evaluate, relabel, report, search, topics
from transforms.manifest import LAYOUT, Manifest, migrated_from_layout_3
from transforms.records import EMBEDDINGS
from transforms.run_folder import SUCCESS, RunFolderError, read_manifest, read_run


@pytest.fixture(scope="module")
def runs(finished_run, photos, tmp_path_factory) -> dict[str, Path]:
    """One finished run of each job: classify (finished_run), relabel, search and topics over its vectors, and the
    classify run evaluate makes."""
    folder = tmp_path_factory.mktemp("runs")
    kept = ["--embeddings", str(finished_run)]
    assert relabel.main([*kept, "--labels", "everyday", "--output", str(folder / "relabel")]) == 0
    assert search.main([*kept, "--query", "a cat", "--images_per_query", "2", "--output", str(folder / "search")]) == 0
    assert topics.main([*kept, "--topics", "2", "--output", str(folder / "topics")]) == 0
    truth = folder / "truth.csv"
    truth.write_text("uri,label\nchelsea.jpg,cat\ncoffee.jpg,frog\n")
    assert evaluate.main(["--input", f"{photos}/chelsea.jpg", "--truth", str(truth), "--labels", "cifar10",
                          "--output", str(folder / "evaluate")]) == 0
    return {"classify": finished_run, "relabel": folder / "relabel", "search": folder / "search",
            "topics": folder / "topics", "evaluate": folder / "evaluate" / "predictions"}


@pytest.mark.parametrize("kind, job, tables, page", [
    ("classify", "classify", {"results": 7, "errors": 0, EMBEDDINGS: 7, "review": 7}, "Zero-shot labels"),
    ("relabel", "relabel", {"results": 7, "review": 7}, "Zero-shot labels"),
    ("search", "search", {"results": 2}, "Images found by text"),
    ("topics", "topics", {"topics": 2, "images": 7}, "Topics"),
    ("evaluate", "classify", {"results": 1, "errors": 0, "review": 1}, "Zero-shot labels"),
])
def test_every_kind_of_run_is_read_through_its_manifest(runs, tmp_path, kind, job, tables, page):
    manifest = read_manifest(str(runs[kind]))
    assert manifest.job == job and manifest.version == LAYOUT and manifest.finished >= manifest.started
    assert {table: manifest.rows(table) for table in manifest.shards} == tables
    assert all(len(read_run(str(runs[kind]), table)) == rows for table, rows in tables.items())
    if kind in ("relabel", "search", "topics"):  # the run whose vectors they read
        assert manifest.embeddings_run == read_manifest(str(runs["classify"])).run_id
    assert report.main(["--run", str(runs[kind]), "--output", str(tmp_path / "page.html")]) == 0
    assert f"<title>{page}</title>" in (tmp_path / "page.html").read_text()  # the page of the job's kind


def test_a_manifest_round_trips_and_the_started_record_is_one_too(runs):
    manifest = read_manifest(str(runs["search"]))
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.details == {"queries": ["a cat"], "images_per_query": 2}


def _as_layout_3(manifest: Manifest) -> dict:
    """The manifest as 0.1.x wrote it: each table's shards under its own name, the job only in the command."""
    data = json.loads(manifest.to_json())
    shards, details = data.pop("shards"), data.pop("details")
    for field in ("job", "embeddings_run"):
        data.pop(field)
    return {**data, **details, **shards, "tables": list(shards), "version": 3,
            **({"embeddings_run": manifest.embeddings_run} if manifest.embeddings_run else {})}


@pytest.mark.parametrize("kind", ["classify", "relabel", "search", "topics"])
def test_a_run_written_by_0_1_is_read_as_it_was(runs, tmp_path, kind):
    old = tmp_path / "old"
    shutil.copytree(runs[kind], old)
    (old / SUCCESS).write_text(json.dumps(_as_layout_3(read_manifest(str(runs[kind])))))
    # equal but for what 0.1.x lost: the topics job's number of topics, overwritten by the table of that name
    assert dataclasses.replace(read_manifest(str(old)), details={}) == \
        dataclasses.replace(read_manifest(str(runs[kind])), details={})
    assert read_run(str(old)) if kind != "topics" else read_run(str(old), "topics")


def test_layout_2s_relabel_named_the_run_it_read_embeddings():
    """0.1.0's relabel stored its source run as `embeddings`, the name of a table: what crashed `relabel --report`."""
    old = {"version": 2, "run_id": "run-b", "started": "t", "command": ["python -m pipelines.relabel"],
           "format": "parquet", "model": "m", "labels": "everyday", "embeddings": "run-a", "tables": ["results"],
           "results": [{"path": "run-b/results-0.parquet", "rows": 3}], "generation": 1, "finished": "t"}
    manifest = Manifest.from_json(json.dumps(old).encode("utf-8"))
    assert (manifest.job, manifest.embeddings_run, manifest.rows("results")) == ("relabel", "run-a", 3)
    assert migrated_from_layout_3(old)["shards"] == {"results": old["results"]}


def test_a_newer_layout_stops_every_reader_with_one_line_and_is_not_called_damaged(runs, tmp_path, capsys):
    newer = tmp_path / "newer"
    shutil.copytree(runs["classify"], newer)
    data = json.loads((newer / SUCCESS).read_text())
    (newer / SUCCESS).write_text(json.dumps({**data, "version": LAYOUT + 1, "a_later_field": 1}))
    with pytest.raises(RunFolderError, match=f"has manifest layout {LAYOUT + 1}, newer than"):
        read_run(str(newer))
    capsys.readouterr()
    jobs = [(relabel.main, ["--embeddings", str(newer), "--labels", "everyday", "--output", str(tmp_path / "r")]),
            (report.main, ["--run", str(newer), "--output", str(tmp_path / "page.html")])]
    for main, argv in jobs:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "upgrade it" in err and "damaged" not in err, err


@pytest.mark.parametrize("version", [str(LAYOUT + 1), float(LAYOUT + 1)])
def test_a_newer_layout_written_as_text_or_a_float_is_still_newer_not_damaged(runs, tmp_path, version):
    newer = tmp_path / "newer"
    shutil.copytree(runs["classify"], newer)
    data = json.loads((newer / SUCCESS).read_text())
    (newer / SUCCESS).write_text(json.dumps({**data, "version": version}))
    with pytest.raises(RunFolderError, match=f"has manifest layout {LAYOUT + 1}, newer than") as raised:
        read_run(str(newer))
    assert "delete" not in str(raised.value)


def test_a_hand_edited_field_of_the_wrong_type_is_a_damaged_run_in_one_line(runs, tmp_path, photos, capsys):
    edited = tmp_path / "edited"
    shutil.copytree(runs["classify"], edited)
    data = json.loads((edited / SUCCESS).read_text())
    (edited / SUCCESS).write_text(json.dumps({**data, "settings": []}))
    capsys.readouterr()
    assert classify_images.main(["--input", f"{photos}/chelsea.jpg", "--labels", "everyday", "--output",
                                 str(tmp_path / "out"), "--skip_existing", str(edited)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "settings is list, not" in err, err
