"""Embed once, use forever: keep the image vectors, relabel them without the image model, search them by text."""
from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import classify_images, relabel, search
from tests import jobs
from transforms.backends import base, local
from transforms.backends.local import ConSEEmbedder, LocalBackend
from transforms.label_sets import load_label_phrases
from transforms.rank import Decision
from transforms.run_folder import read_manifest, read_run, run_files
from transforms.stored import relabel as relabel_rows
from transforms.stored import search_images


@pytest.fixture(scope="module")
def kept(tmp_path_factory, photos):
    """The sample photos classified with `general`, their vectors kept in float32 and in float16; and a fresh
    classification of the same photos with `everyday`, which relabeling must reproduce."""
    folder = tmp_path_factory.mktemp("kept")
    for dtype in ("float32", "float16"):
        assert jobs.classify(f"{photos}/*.jpg", folder / dtype, "general", keep_embeddings=True,
                             embeddings_dtype=dtype) == 0
    assert jobs.classify(f"{photos}/*.jpg", folder / "fresh", "everyday", Decision(top_k=3)) == 0
    return folder


def _by_uri(rows):
    return {row["uri"]: row for row in rows}


@pytest.fixture
def no_image_model(monkeypatch):
    """A fresh process-wide model cache in which loading the image model fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the image model was loaded")

    monkeypatch.setattr(base, "_LOADED", {})
    monkeypatch.setattr(local, "_load_classifier", refuse)
    monkeypatch.setattr(local, "_load_torch_classifier", refuse)


def test_the_embeddings_table_has_one_fixed_size_vector_per_image(kept):
    for dtype, arrow_type in (("float32", pa.float32()), ("float16", pa.float16())):
        table = pq.read_table(run_files(str(kept / dtype), "embeddings"))
        assert table.schema.field("embedding").type == pa.list_(arrow_type, LocalBackend.embedding_dim)
        assert table.num_rows == 7 and table.column_names == ["uri", "sha256", "model", "embedding", "width", "height",
                                                                "strength"]
    assert read_manifest(str(kept / "float16")).embeddings_dtype == "float16"


def test_vectors_kept_before_they_carried_their_strength_are_ranked_at_full_strength_and_said_so(kept, tmp_path,
                                                                                                  caplog):
    old = tmp_path / "old"
    shutil.copytree(kept / "float32", old)
    (shard,) = run_files(str(old), "embeddings")
    pq.write_table(pq.read_table(shard).drop_columns(["strength"]), shard)  # as an earlier version kept them
    with caplog.at_level("WARNING", logger="zero_shot"):
        rows = relabel_rows(str(old), load_label_phrases("everyday"), decision=Decision(top_k=1))
    assert "before vectors carried their evidence strength: they are ranked at full strength" in caplog.text
    assert len(rows) == 7
    strong = relabel_rows(str(kept / "float32"), load_label_phrases("everyday"), decision=Decision(top_k=1))
    assert [row["labels"] for row in rows] == [row["labels"] for row in strong]  # the ranking is the same
    # the weakest image of the kept run is surer at full strength than at its own
    stored = pq.read_table(run_files(str(kept / "float32"), "embeddings")[0]).to_pylist()
    weakest = min(stored, key=lambda row: row["strength"])
    assert weakest["strength"] < 0.9
    by_uri = {row["uri"]: row["probs"][0] for row in rows}
    assert by_uri[weakest["uri"]] > {row["uri"]: row["probs"][0] for row in strong}[weakest["uri"]]


def test_relabel_gives_the_rows_of_a_fresh_classify_without_the_image_model(kept, tmp_path, no_image_model):
    assert jobs.relabel(kept / "float32", tmp_path / "relabeled", "everyday", Decision(top_k=3)) == 0
    fresh = _by_uri(read_run(str(kept / "fresh")))
    everyday = load_label_phrases("everyday")
    runs = {"job": _by_uri(read_run(str(tmp_path / "relabeled"))),
            "library": _by_uri(relabel_rows(str(kept / "float32"), everyday, decision=Decision(top_k=3)))}
    for name, rows in runs.items():
        assert rows.keys() == fresh.keys(), name
        for uri, row in fresh.items():
            assert rows[uri]["labels"] == row["labels"], (name, uri)
            assert rows[uri]["scores"] == pytest.approx(row["scores"], abs=1e-5)
            assert rows[uri]["probs"] == pytest.approx(row["probs"], abs=1e-5)
            assert (rows[uri]["sha256"], rows[uri]["width"], rows[uri]["model"]) == (
                row["sha256"], row["width"], row["model"])
    half = _by_uri(relabel_rows(str(kept / "float16"), everyday, decision=Decision(top_k=3)))
    for uri, row in fresh.items():
        assert half[uri]["scores"][0] == pytest.approx(row["scores"][0], abs=2e-3)
    (embedder,) = base._LOADED.values()
    assert isinstance(embedder, ConSEEmbedder) and "classifier" not in vars(embedder)


def test_search_finds_the_cat_first(kept, tmp_path, no_image_model):
    page = tmp_path / "hits.html"
    assert search.main(["--embeddings", str(kept / "float32"), "--query", "a cat", "--query", "a cup of coffee",
                        "--images_per_query", "3", "--output", str(tmp_path / "found"), "--report", str(page)]) == 0
    hits = read_run(str(tmp_path / "found"))
    assert sorted(hits, key=lambda h: (h["query"], h["rank"])) == search_images(
        str(kept / "float32"), ["a cat", "a cup of coffee"], images_per_query=3)
    best = {hit["query"]: hit["uri"].rsplit("/", 1)[1] for hit in hits if hit["rank"] == 1}
    assert best == {"a cat": "chelsea.jpg", "a cup of coffee": "coffee.jpg"}
    assert [hit["rank"] for hit in hits if hit["query"] == "a cat"] == [1, 2, 3]
    assert page.read_text().count('<section class="query"') == 2


def test_identical_files_are_embedded_once_and_every_uri_gets_its_rows(photos, tmp_path, monkeypatch, capsys):
    inputs = tmp_path / "in"
    shutil.copytree(photos, inputs)
    for copy in ("cat_a.jpg", "cat_b.jpg"):
        shutil.copy(inputs / "chelsea.jpg", inputs / copy)
    embedded, original = [], ConSEEmbedder.class_probabilities

    def counting(self, images):
        embedded.extend(images)
        return original(self, images)

    monkeypatch.setattr(ConSEEmbedder, "class_probabilities", counting)
    assert classify_images.main(["--input", f"{inputs}/*.jpg", "--labels", "general", "--output",
                                 str(tmp_path / "out"), "--keep_embeddings"]) == 0
    assert len(embedded) == 7  # the model saw 7 images for 9 files
    printed = capsys.readouterr().out
    assert "labeled 9 images, 0 errors" in printed and "2 files had the same bytes as another file" in printed
    results = _by_uri(read_run(str(tmp_path / "out")))
    vectors = _by_uri(read_run(str(tmp_path / "out"), "embeddings"))
    assert results.keys() == vectors.keys() == {str(p) for p in inputs.iterdir()}
    cats = [str(inputs / name) for name in ("chelsea.jpg", "cat_a.jpg", "cat_b.jpg")]
    assert len({(results[c]["sha256"], tuple(results[c]["labels"]), tuple(vectors[c]["embedding"])) for c in cats}) == 1


@pytest.mark.parametrize("flags, message", [
    (["--local_top_t", "10"], "were made by model 'conse-t20-"),
    (["--backend", "nomic"], "backend 'nomic' cannot run"),
])
def test_vectors_of_another_model_are_refused_before_the_job(kept, tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.delenv("NOMIC_API_KEY", raising=False)
    for job, extra in ((relabel, ["--labels", "everyday"]), (search, ["--query", "a cat"])):
        assert job.main(["--embeddings", str(kept / "float32"), *extra, "--output", str(tmp_path / "out"),
                         *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_run_without_embeddings_is_refused(kept, tmp_path, capsys):
    assert relabel.main(["--embeddings", str(kept / "fresh"), "--labels", "cifar10", "--output",
                         str(tmp_path / "out")]) == 2
    assert "kept no embeddings (classify_images --keep_embeddings keeps them)" in capsys.readouterr().err


def test_an_incremental_run_carries_the_vectors_of_unchanged_files(kept, photos, tmp_path, capsys):
    inputs = tmp_path / "in"
    shutil.copytree(photos, inputs)
    out = tmp_path / "out"
    argv = ["--input", f"{inputs}/*.jpg", "--labels", "general", "--output", str(out), "--keep_embeddings"]
    assert classify_images.main(argv) == 0
    before = _by_uri(read_run(str(out), "embeddings"))
    shutil.copy(inputs / "rocket.jpg", inputs / "rocket_again.jpg")
    capsys.readouterr()
    assert classify_images.main(argv + ["--overwrite", "--skip_existing", str(out)]) == 0
    printed = capsys.readouterr().out  # the new file has the bytes of a kept one: its rows are copies, no model runs
    assert "labeled 0 images" in printed and "kept 8 rows of the previous run" in printed
    after = _by_uri(read_run(str(out), "embeddings"))
    assert after.keys() == before.keys() | {str(inputs / "rocket_again.jpg")}
    assert all(after[uri]["embedding"] == row["embedding"] for uri, row in before.items())
    assert classify_images.main(argv + ["--overwrite", "--skip_existing", str(out), "--embeddings_dtype",
                                        "float16"]) == 2
    assert "kept its embeddings as float32; pass --embeddings_dtype float32" in capsys.readouterr().err
