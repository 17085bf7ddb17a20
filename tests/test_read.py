"""Input patterns: globs, directories, single files and fsspec URLs, expanded inside the pipeline."""
import fsspec
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.read import MatchFiles, expand_pattern, first_match


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
