"""ZeroShotClassify in real Beam pipelines, on real photos and the real embedded model."""
import dataclasses
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import hostile_files
from transforms.backends import Embedder
from transforms.backends.local import LocalBackend
from transforms.classify import ZeroShotClassify
from transforms.label_sets import load_label_set, load_templates
from transforms.metrics import NAMESPACE
from transforms.rank import Decision, build_label_matrix
from transforms.read import MatchFiles
from transforms.records import EMBEDDINGS, ERRORS, RESULTS

EVERYDAY = load_label_set("everyday")


def _outcomes(outputs):
    """One ('ok', name) or ('error', name, stage) per input, to assert that each input landed exactly once."""
    ok = outputs["results"] | "Ok" >> beam.Map(lambda row: ("ok", Path(row["uri"]).name))
    bad = outputs["errors"] | "Bad" >> beam.Map(lambda row: ("error", Path(row["uri"]).name, row["stage"]))
    return (ok, bad) | "Outcomes" >> beam.Flatten()


def _counter(result, name):
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))
    return sum(c.committed for c in query["counters"])


def test_photos_get_sensible_everyday_labels(photos):
    def check(rows):
        top = {Path(row["uri"]).stem: row for row in rows}
        assert top["chelsea"]["labels"][0] == "animal", top["chelsea"]
        assert top["coffee"]["labels"][0] != "animal", top["coffee"]
        for row in rows:
            assert len(row["labels"]) == len(row["scores"]) == len(row["probs"]) == 5
            assert row["scores"] == sorted(row["scores"], reverse=True) and 0 < sum(row["probs"]) <= 1.0 + 1e-6
            assert row["model"] == LocalBackend().model_id and len(row["sha256"]) == 64

    with TestPipeline() as p:
        outputs = p | MatchFiles(f"{photos}/*.jpg") | ZeroShotClassify(EVERYDAY, LocalBackend(), batch_size=3)
        assert_that(outputs["results"], check)
        assert_that(outputs["errors"], equal_to([]), label="NoErrors")


def test_every_input_lands_exactly_once_and_labels_are_embedded_once(hostile_dir, photos):
    expected = [("error", name, "decode") for name, (_, ok) in hostile_files(photos / "chelsea.jpg").items()
                if not ok]
    expected += [("ok", path.name) for path in hostile_dir.iterdir() if ("error", path.name, "decode") not in expected]
    expected += [("ok", path.name) for path in photos.iterdir()]
    expected += [("error", "missing.jpg", "read")]
    p = TestPipeline()
    uris = (p | "Hostile" >> MatchFiles(f"{hostile_dir}/*"), p | "Photos" >> MatchFiles(f"{photos}/*"),
            p | "Missing" >> beam.Create([str(hostile_dir / "missing.jpg")])) | beam.Flatten()
    outputs = uris | ZeroShotClassify(EVERYDAY, LocalBackend(), batch_size=4)
    assert_that(_outcomes(outputs), equal_to(expected))
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "label_sets_embedded") == 1
    assert _counter(result, "rank_ok") == sum(1 for e in expected if e[0] == "ok")


def test_uri_bytes_pairs_skip_the_read(photos):
    pairs = [(f"mem/{path.name}", path.read_bytes()) for path in sorted(photos.iterdir())]
    with TestPipeline() as p:
        outputs = p | beam.Create(pairs) | ZeroShotClassify(["cat", "car", "cup"], LocalBackend(),
                                                            decision=Decision(top_k=1))
        assert_that(outputs["results"] | beam.Map(lambda row: (row["uri"], row["labels"][0])),
                    lambda got: dict(got)["mem/chelsea.jpg"] == "cat" or (_ for _ in ()).throw(AssertionError(got)))


class _RefusesTinyImages(Embedder):
    def __init__(self, inner: Embedder):
        self.inner, self.model_id, self.dim = inner, inner.model_id, inner.dim

    def embed_texts(self, texts):
        return self.inner.embed_texts(texts)

    def embed_images(self, images):
        if any(min(image.size) < 8 for image in images):
            raise ValueError("image too small for this model")
        return self.inner.embed_images(images)


@dataclasses.dataclass(frozen=True)
class _GuardedLocalBackend(LocalBackend):
    """The real local model behind a guard that refuses tiny images: exercises the embed dead letter."""

    def _load(self):
        return _RefusesTinyImages(LocalBackend().load())


def test_a_model_that_fails_a_batch_fails_the_job_instead_of_writing_error_rows(hostile_dir, photos):
    """Not an image's fault (nothing here says which image it would be): every batch would fail alike."""
    inputs = [str(hostile_dir / "one_pixel.png"), str(photos / "chelsea.jpg"), str(photos / "coffee.jpg")]
    p = TestPipeline()
    _ = p | beam.Create(inputs) | ZeroShotClassify(EVERYDAY, _GuardedLocalBackend(), batch_size=1)
    with pytest.raises(Exception, match=r"ValueError: image too small.*no image was at fault"):
        p.run().wait_until_finish()


def test_scores_are_the_cosine_of_the_embedded_vectors(photos):
    backend = LocalBackend()
    embedder = backend.load()
    from transforms.decode import decode_image
    image = decode_image((photos / "rocket.jpg").read_bytes(), 10**8)[0]
    classifier = build_label_matrix({label: [label] for label in EVERYDAY}, load_templates("photos"), backend)
    expected = embedder.embed_images([image])[0] @ classifier.vectors.T
    with TestPipeline() as p:
        outputs = p | beam.Create([str(photos / "rocket.jpg")]) | ZeroShotClassify(
            EVERYDAY, backend, load_templates("photos"), decision=Decision(top_k=12))

        def check(rows):
            (row,) = rows
            got = dict(zip(row["labels"], row["scores"]))
            np.testing.assert_allclose([got[label] for label in EVERYDAY], expected, atol=1e-5)
        assert_that(outputs["results"], check)


def test_optional_behaviour_is_chained_and_plain_labeling_needs_none(photos):
    """ZeroShotClassify alone labels; `.with_embeddings()` adds the vectors, `.with_error_budget()` stops a job whose
    inputs fail beyond the budget."""
    uris = [str(photos / "chelsea.jpg"), str(photos / "coffee.jpg")]
    with TestPipeline() as p:
        plain = p | "Plain" >> beam.Create(uris) | "Label" >> ZeroShotClassify(["cat", "cup"], LocalBackend())
        kept = (p | "Kept" >> beam.Create(uris)
                | "LabelAndKeep" >> ZeroShotClassify(["cat", "cup"], LocalBackend()).with_embeddings())
        assert sorted(plain) == [ERRORS, RESULTS] and sorted(kept) == [EMBEDDINGS, ERRORS, RESULTS]
        assert_that(kept[EMBEDDINGS] | beam.Map(lambda row: len(row["embedding"])),
                    equal_to([LocalBackend.embedding_dim] * 2))
    with pytest.raises(Exception, match="TooManyErrorsError|2 of the job's 3 inputs failed"):
        with TestPipeline() as p:
            inputs = p | beam.Create([*uris[:1], "/nowhere/a.jpg", "/nowhere/b.jpg"])
            _ = inputs | ZeroShotClassify(["cat"], LocalBackend()).with_error_budget(
                0.5, inputs | beam.combiners.Count.Globally())
