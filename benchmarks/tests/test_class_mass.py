"""The class-mass blend that benchmarks.class_mass measures against today's ConSE probabilities (docs/ACCURACY.md):
a class's probability goes to the label whose concept covers it, the rest is shared out as ConSE shares it; and the
fitted calibration maps it measures."""
import numpy as np
import pytest

from benchmarks.class_mass import (
    TODAY,
    Blend,
    DevScores,
    calibrated_floor,
    calibration,
    fit_map,
    map_inputs,
    mapped_eces,
    probabilities,
)
from transforms.backends.local import LocalBackend, evidence_strengths
from transforms.rank import label_probabilities

BACKEND = LocalBackend()
MASS = Blend(alpha=1.0, power=0.0, temperature=1.0)  # the mass alone, uncalibrated


def two_labels_four_classes() -> DevScores:
    """Label 0 covers classes 0 and 1, label 1 covers class 2, class 3 is nobody's (the background)."""
    coverage = np.array([[1, 1, 0, 0], [0, 0, 1, 0]], dtype=bool)
    owned = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=np.float32)
    without_label_0 = np.array([[0], [0], [1], [0]], dtype=np.float32)
    without_label_1 = np.array([[1], [1], [0], [0]], dtype=np.float32)
    return DevScores(source="synthetic", truth=np.array([0, 1]),
                     scores=np.array([[0.2, 0.1], [0.1, 0.3]], dtype=np.float32),
                     class_cosines=np.array([[0.5, 0.4, 0.1, 0.3], [0.1, 0.1, 0.6, 0.2]], dtype=np.float32),
                     coverage=coverage,
                     class_probs=np.array([[0.6, 0.3, 0.0, 0.1], [0.0, 0.0, 0.2, 0.0]], dtype=np.float32),
                     claims=[without_label_0, without_label_1, owned])


def test_alpha_0_is_todays_conse_probabilities():
    s = two_labels_four_classes()
    probs, none = probabilities(s, -1, np.arange(2), TODAY, BACKEND)
    background_cosine = s.class_cosines[:, 3] - BACKEND.none_margin
    expected = label_probabilities(s.scores, BACKEND.logit_scale, background_cosine,
                                   strengths=evidence_strengths(s.class_probs, BACKEND))
    assert probs == pytest.approx(expected, abs=1e-6)
    assert none == pytest.approx(1 - expected.sum(axis=1), abs=1e-6)


def test_mass_goes_to_the_covering_label_and_the_rest_is_shared_as_conse_shares_it():
    s = two_labels_four_classes()
    probs, none = probabilities(s, -1, np.arange(2), MASS, BACKEND)
    conse, _ = probabilities(s, -1, np.arange(2), TODAY, BACKEND)
    # image 0: 0.9 of its mass is under label 0's classes, the 0.1 on the background is shared out like ConSE
    assert probs[0] == pytest.approx([0.9 + 0.1 * conse[0, 0], 0.1 * conse[0, 1]], abs=1e-5)
    # image 1: only 0.2 is claimed (by label 1); 0.8 (what the top classes leave, too) follows ConSE
    assert probs[1] == pytest.approx([0.8 * conse[1, 0], 0.2 + 0.8 * conse[1, 1]], abs=1e-5)
    assert probs.sum(axis=1) + none == pytest.approx([1.0, 1.0], abs=1e-5)


def test_a_label_taken_out_leaves_its_mass_unclaimed_and_a_temperature_flattens():
    s = two_labels_four_classes()
    absent, none = probabilities(s, 0, np.arange(1), MASS, BACKEND)  # image 0 without its true label
    assert absent[0, 0] < 0.2 and none[0] > 0.8  # its classes rejoined the background: "none of these" wins
    sharp, _ = probabilities(s, -1, np.arange(2), MASS, BACKEND)
    flat, _ = probabilities(s, -1, np.arange(2), Blend(1.0, 0.0, 2.0), BACKEND)
    assert (flat.max(axis=1) < sharp.max(axis=1)).all()


def test_a_power_trusts_the_mass_where_the_classifier_is_sure():
    s = two_labels_four_classes()  # image 0's top class has 0.6, image 1's 0.2
    conse, _ = probabilities(s, -1, np.arange(2), TODAY, BACKEND)
    mass, _ = probabilities(s, -1, np.arange(2), MASS, BACKEND)
    weighed, _ = probabilities(s, -1, np.arange(2), Blend(1.0, 2.0, 1.0), BACKEND)
    assert weighed[0] == pytest.approx(0.36 * mass[0] + 0.64 * conse[0], abs=1e-5)
    assert weighed[1] == pytest.approx(0.04 * mass[1] + 0.96 * conse[1], abs=1e-5)


def test_a_fitted_map_learns_how_often_a_confidence_is_right():
    """Platt scaling recovers an over-confident model's real rightness: images at top-1 0.9 that are right half the
    time are mapped to about 0.5, and their open-set copies (true label taken out) count as wrong."""
    rng = np.random.default_rng(0)
    top_p = rng.choice([0.6, 0.9], size=4000)
    outcome = {"top_p": top_p, "correct": rng.random(4000) < np.where(top_p == 0.9, 0.5, 0.2),
               "absent_top_p": np.full(4000, 0.05), "class_top": np.full(4000, 0.5)}
    fitted = fit_map([outcome], ("top_p",), open_set=False)
    features, _ = map_inputs(outcome, ("top_p",))
    mapped = fitted.predict_proba(features[:4000])[:, 1]
    assert mapped[top_p == 0.9].mean() == pytest.approx(0.5, abs=0.03)
    assert mapped[top_p == 0.6].mean() == pytest.approx(0.2, abs=0.03)
    in_set, open_set = mapped_eces(fit_map([outcome], ("top_p",)), outcome, ("top_p",))
    assert open_set < 0.05 and in_set < calibration(outcome)[0]


def test_even_a_perfectly_calibrated_model_shows_an_ece_on_few_images():
    confidence = np.full(30, 0.6)
    assert calibrated_floor(confidence) > 0.05
    assert calibrated_floor(np.full(3000, 0.6)) < 0.015
