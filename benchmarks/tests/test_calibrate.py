"""The calibration report of benchmarks.calibrate (docs/ACCURACY.md): what it measures on a toy dev set."""
import numpy as np

from benchmarks.calibrate import Scored, outcomes, without_truth
from benchmarks.devdata import DevSet


def test_calibration_report_removes_the_true_label_to_make_images_with_no_right_answer():
    scores = np.array([[0.8, 0.1, 0.3], [0.2, 0.6, 0.1]])
    truth = np.array([0, 1])
    np.testing.assert_allclose(without_truth(scores, truth), [[0.1, 0.3], [0.2, 0.1]])
    # Three labels over four ImageNet classes: label 0 covers class 0, label 1 class 1, label 2 nothing; class 3
    # is the background. Each image looks most like its own label's class.
    coverage = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    class_cosines = np.array([[0.9, 0.1, 0.2, 0.3], [0.1, 0.8, 0.2, 0.3]])
    # The classifier puts 0.95 of its belief in the classes of the first image's vector, 0.3 in the second's.
    class_probs = np.array([[0.95, 0.0, 0.0, 0.0], [0.0, 0.3, 0.0, 0.0]])
    dev = DevSet("toy", "toy", "coarse", {"a": ["a"], "b": ["b"], "c": ["c"]}, truth, ["x", "y"], class_probs)
    scored = Scored(dev, scores, class_cosines, {None: coverage})
    result = outcomes(scored, ("fixed", 10.0), None, 0.1)
    assert result["correct"].all() and (result["p_true"] == result["top_p"]).all()
    # With its label gone, an image's own class joins the background and "none of these" takes over.
    assert (result["p_none"] > 0.5).all() and (result["absent_top_p"] < 0.3).all()
    # At full evidence 0.9, the image whose vector carries only 0.3 of the classifier's belief gets flatter
    # probabilities; the other keeps its own.
    weighed = outcomes(scored, ("fixed", 10.0), None, 0.1, full_evidence=0.9)
    assert weighed["top_p"][0] == result["top_p"][0] and weighed["top_p"][1] < result["top_p"][1] - 0.1
