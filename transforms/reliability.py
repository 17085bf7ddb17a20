"""The reliability diagram of the top-1 probability, and its expected calibration error (ECE): whether a
probability is right as often as it says, as evaluate, its report and the benchmarks measure it."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def reliability(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> list[dict]:
    """The reliability diagram of the top-1 probability: for each of `bins` equal-width bins that holds an image,
    its range, how many images, their mean top-1 probability and how many of them are right (the accuracy)."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [{"from": b / bins, "to": (b + 1) / bins, "images": int((which == b).sum()),
             "mean_prob": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean())}
            for b in range(bins) if (which == b).any()]


def calibration_error(bins: Sequence[dict]) -> float:
    """ECE of a reliability diagram: the image-weighted mean |accuracy - mean probability| over its bins."""
    images = sum(b["images"] for b in bins)
    return sum(b["images"] * abs(b["accuracy"] - b["mean_prob"]) for b in bins) / images if images else float("nan")


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """ECE (10 equal-width bins of the top-1 probability)."""
    return calibration_error(reliability(confidence, correct, bins))
