"""Input patterns: globs, directories, single files and fsspec URLs, expanded inside the pipeline."""
from pathlib import Path

import apache_beam as beam
import fsspec
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.read import MatchFiles, ReadFiles, expand_pattern, first_match
from transforms.records import ERRORS


def _tree(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("x.jpg", "y.png", "a/z.jpg", "a/b/w.jpg"):
        (tmp_path / name).write_bytes(b"data")
    return tmp_path


def test_glob_directory_and_file(tmp_path):
    root = _tree(tmp_path)
    assert list(expand_pattern(f"{root}/*.jpg")) == [f"{root}/x.jpg"]
    assert list(expand_pattern(f"{root}/**/*.jpg")) == [f"{root}/a/b/w.jpg", f"{root}/a/z.jpg", f"{root}/x.jpg"]
    assert list(expand_pattern(f"{root}/a")) == [f"{root}/a/b/w.jpg", f"{root}/a/z.jpg"]
    assert list(expand_pattern(f"{root}/y.png")) == [f"{root}/y.png"]


def test_first_match_agrees_with_expansion(tmp_path):
    root = _tree(tmp_path)
    for pattern in (f"{root}/*.jpg", f"{root}/**/*.jpg", f"{root}/a/*/*.jpg", f"{root}/a", f"{root}/y.png"):
        assert first_match(pattern) in list(expand_pattern(pattern)), pattern
    for pattern in (f"{root}/*.gif", f"{root}/missing", f"{root}/a/*.png"):
        assert first_match(pattern) is None, pattern


def test_fsspec_urls_keep_their_protocol():
    for name in ("one.jpg", "two.jpg", "notes.txt"):
        with fsspec.open(f"memory://bucket/imgs/{name}", "wb") as f:
            f.write(b"data")
    uris = list(expand_pattern("memory://bucket/imgs/*.jpg"))
    assert [uri.rsplit("/", 1)[1] for uri in uris] == ["one.jpg", "two.jpg"]
    assert all(uri.startswith("memory://") and fsspec.open(uri, "rb").open().read() == b"data" for uri in uris)
    assert first_match("memory://bucket/**/*.txt").endswith("/bucket/imgs/notes.txt")


def test_match_files_expands_at_run_time(tmp_path):
    root = _tree(tmp_path)
    with TestPipeline() as p:
        uris = p | MatchFiles(f"{root}/**/*.jpg")
        assert_that(uris, equal_to([f"{root}/a/b/w.jpg", f"{root}/a/z.jpg", f"{root}/x.jpg"]))


def test_broken_symlinks_a_glob_matches_become_read_errors(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"data")
    (tmp_path / "good_link.jpg").symlink_to("photo.jpg")
    (tmp_path / "dangling.jpg").symlink_to("nowhere.jpg")
    (tmp_path / "loop_a.jpg").symlink_to("loop_b.jpg")
    (tmp_path / "loop_b.jpg").symlink_to("loop_a.jpg")
    (tmp_path / "folder.jpg").mkdir()  # a folder the glob matches is no input
    with TestPipeline() as p:
        read = (p | MatchFiles(f"{tmp_path}/*.jpg")
                | beam.ParDo(ReadFiles()).with_outputs(ERRORS, main="files"))
        assert_that(read.files | beam.Map(lambda pair: (Path(pair[0]).name, pair[1])),
                    equal_to([("photo.jpg", b"data"), ("good_link.jpg", b"data")]))
        assert_that(read[ERRORS] | beam.Map(lambda row: (Path(row["uri"]).name, row["stage"], row["error"])),
                    equal_to([("dangling.jpg", "read", "FileNotFoundError"), ("loop_a.jpg", "read", "OSError"),
                              ("loop_b.jpg", "read", "OSError")]), label="Errors")
