"""Ranking: prompt ensembles and phrases build the classifier; unknown and multi-label decisions."""
import dataclasses

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.backends import get_backend, l2_normalize
from transforms.backends.local import LocalBackend
from transforms.classify import ZeroShotClassify
from transforms.label_sets import prompt_texts
from transforms.rank import UNKNOWN, Decision, build_label_matrix, label_probabilities


def test_prompts_cover_every_phrase_in_every_template():
    assert prompt_texts(["cat", "kitten"], ["a photo of a {}.", "{}"]) == [
        "a photo of a cat.", "cat", "a photo of a kitten.", "kitten"]


def test_a_label_vector_is_the_normalized_mean_of_its_phrases_each_the_mean_of_its_prompts():
    backend = LocalBackend(hierarchy_weight=0.0)  # text alone: no WordNet classes mixed into "cat"
    templates = ["a photo of a {}.", "{}"]
    matrix = build_label_matrix({"feline": ["cat", "kitten"], "car": ["car"]}, templates, backend)
    prompts = backend.load().embed_texts(prompt_texts(["cat", "kitten"], templates)).reshape(2, 2, -1)
    phrases = l2_normalize(prompts.mean(axis=1))
    expected = phrases.mean(axis=0) / np.linalg.norm(phrases.mean(axis=0))
    assert matrix.names == ["feline", "car"]
    np.testing.assert_allclose(matrix.vectors[0], expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(matrix.vectors, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("decision, expected", [
    (Decision(), [2, 0]),
    (Decision(min_prob=0.6), [2, 0]),
    (Decision(min_prob=0.8), []),
    (Decision(multi_label_threshold=0.25), [2, 0]),
    (Decision(multi_label_threshold=0.05), [2, 0, 1]),
    (Decision(multi_label_threshold=0.9), []),
])
def test_decisions(decision, expected):
    probs = np.array([0.3, 0.05, 0.65])
    ranked = np.argsort(-probs)
    assert dataclasses.replace(decision, top_k=2).select(ranked, probs).tolist() == expected


def test_phrases_and_unknown_in_a_real_pipeline(photos):
    labels = {"feline": ["cat", "kitten", "tabby"], "vehicle": ["car", "motorcycle", "truck"]}
    inputs = [str(photos / "chelsea.jpg"), str(photos / "motorcycle.jpg")]
    with TestPipeline() as p:
        images = p | beam.Create(inputs)
        ranked = images | "Rank" >> ZeroShotClassify(labels, get_backend("local"), decision=Decision(top_k=1))
        unsure = images | "Unsure" >> ZeroShotClassify(labels, get_backend("local"), decision=Decision(min_prob=1.0))
        assert_that(ranked["results"] | "Top" >> beam.Map(lambda r: (r["uri"].rsplit("/", 1)[1], r["labels"])),
                    equal_to([("chelsea.jpg", ["feline"]), ("motorcycle.jpg", ["vehicle"])]))
        assert_that(unsure["results"] | "Unknown" >> beam.Map(lambda r: (r["labels"], r["scores"], r["probs"])),
                    equal_to([([UNKNOWN], [], [])] * 2), label="AllUnknown")


def test_none_of_these_takes_the_probability_no_label_earns():
    scores = np.array([[0.9, 0.2, 0.1],    # one label clearly fits
                       [0.1, 0.12, 0.08]])  # none does: the image is closer to a concept no label covers
    plain = label_probabilities(scores, 10.0)
    with_none = label_probabilities(scores, 10.0, none=np.array([0.5, 0.5]))
    np.testing.assert_allclose(plain.sum(axis=1), 1.0, rtol=1e-6)
    assert with_none[0, 0] > 0.9 and with_none[1].max() < 0.1 and (with_none.sum(axis=1) < 1).all()
    assert (np.argsort(-with_none, axis=1) == np.argsort(-plain, axis=1)).all()  # the ranking never changes


def test_the_library_refuses_a_label_named_unknown_too():
    with pytest.raises(ValueError, match="has a label 'UNKNOWN'"):
        ZeroShotClassify(["cat", "UNKNOWN"], get_backend("local"))
