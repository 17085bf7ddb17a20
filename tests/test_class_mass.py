"""The class-mass blend that benchmarks.class_mass measures against today's ConSE probabilities (docs/ACCURACY.md):
a class's probability goes to the label whose concept covers it, the rest is shared out as ConSE shares it."""
import numpy as np
import pytest

from benchmarks.class_mass import DevScores, probabilities
from transforms.backends.local import LocalBackend
from transforms.rank import label_probabilities

BACKEND = LocalBackend()


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
    probs, none = probabilities(s, -1, np.arange(2), 0.0, 1.0, BACKEND)
    background_cosine = s.class_cosines[:, 3] - BACKEND.none_margin
    expected = label_probabilities(s.scores, BACKEND.logit_scale, background_cosine)
    assert probs == pytest.approx(expected, abs=1e-6)
    assert none == pytest.approx(1 - expected.sum(axis=1), abs=1e-6)


def test_mass_goes_to_the_covering_label_and_the_rest_is_shared_as_conse_shares_it():
    s = two_labels_four_classes()
    probs, none = probabilities(s, -1, np.arange(2), 1.0, 1.0, BACKEND)
    conse, _ = probabilities(s, -1, np.arange(2), 0.0, 1.0, BACKEND)
    # image 0: 0.9 of its mass is under label 0's classes, the 0.1 on the background is shared out like ConSE
    assert probs[0] == pytest.approx([0.9 + 0.1 * conse[0, 0], 0.1 * conse[0, 1]], abs=1e-5)
    # image 1: only 0.2 is claimed (by label 1); 0.8 (what the top classes leave, too) follows ConSE
    assert probs[1] == pytest.approx([0.8 * conse[1, 0], 0.2 + 0.8 * conse[1, 1]], abs=1e-5)
    assert probs.sum(axis=1) + none == pytest.approx([1.0, 1.0], abs=1e-5)


def test_a_label_taken_out_leaves_its_mass_unclaimed_and_a_temperature_flattens():
    s = two_labels_four_classes()
    absent, none = probabilities(s, 0, np.arange(1), 1.0, 1.0, BACKEND)  # image 0 without its true label
    assert absent[0, 0] < 0.2 and none[0] > 0.8  # its classes rejoined the background: "none of these" wins
    sharp, _ = probabilities(s, -1, np.arange(2), 1.0, 1.0, BACKEND)
    flat, _ = probabilities(s, -1, np.arange(2), 1.0, 2.0, BACKEND)
    assert (flat.max(axis=1) < sharp.max(axis=1)).all()
