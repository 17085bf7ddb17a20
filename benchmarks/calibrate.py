"""Chooses how the embedded backend turns cosine scores into probabilities, leave-one-source-out, and reports the
expected calibration error (ECE, 10 bins) of top-1 probability per source.

Two steps, each chosen on the other sources for every held-out source:
1. the logit scale, fixed or growing with the number of labels L (k x ln L), by the negative log-likelihood (NLL)
   of each dev image's true label;
2. a "none of these" competitor that scores a fixed cosine for every image, by the NLL of two equally likely
   events: the image's true label is in its set (target: that label), or it was taken out of the set (target:
   "none of these" -- the image then has no right answer, as the astronaut had none in `everyday`).

python -m benchmarks.calibrate [--devsets devsets]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.conse_search import Candidate, set_scores
from benchmarks.devdata import DevSet, load_devsets
from pipelines.evaluate import expected_calibration_error
from transforms.backends.local import LocalBackend
from transforms.rank import label_probabilities

SCALE_RULES = [("fixed", s) for s in (5, 10, 15, 20, 30, 40)] + [("per ln L", k) for k in (2, 4, 6, 8, 10)]
NONE_SCORES = (None, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
PREVIOUS = (("fixed", 15), None)  # the defaults before this search: scale 15, no "none of these"


def scale_for(rule: tuple[str, float], num_labels: int) -> float:
    kind, value = rule
    return value if kind == "fixed" else value * np.log(num_labels)


def without_truth(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each image's scores with its true label's column taken out: the label set then has no right answer."""
    keep = np.ones(scores.shape, dtype=bool)
    keep[np.arange(len(truth)), truth] = False
    return scores[keep].reshape(len(truth), -1)


def outcomes(scores: np.ndarray, truth: np.ndarray, rule, none_score) -> dict[str, np.ndarray]:
    """Per image: p(true label), top-1 probability and correctness; and, with the true label removed from the
    set, p(none of these) and the top-1 probability left on a wrong label."""
    probs = label_probabilities(scores, scale_for(rule, scores.shape[1]), none_score)
    absent = label_probabilities(without_truth(scores, truth), scale_for(rule, scores.shape[1] - 1), none_score)
    return {"p_true": probs[np.arange(len(truth)), truth], "top_p": probs.max(axis=1),
            "correct": probs.argmax(axis=1) == truth, "p_none": 1.0 - absent.sum(axis=1),
            "absent_top_p": absent.max(axis=1)}


def nll(p: np.ndarray) -> float:
    return float(-np.log(np.maximum(p, 1e-6)).mean())


class Table:
    """Outcomes of every (scale rule, none score) on every dev set, summarized per source."""

    def __init__(self, sets: list[DevSet], scores: dict[str, np.ndarray]):
        self.sets, self.scores = sets, scores
        self.sources = list(dict.fromkeys(dev.source for dev in sets))
        self._cache: dict = {}

    def outcomes(self, rule, none_score, source: str) -> dict[str, np.ndarray]:
        key = (rule, none_score, source)
        if key not in self._cache:
            parts = [outcomes(self.scores[d.name], d.truth, rule, none_score) for d in self.sets if d.source == source]
            self._cache[key] = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        return self._cache[key]

    def loss(self, rule, none_score, source: str, with_absent: bool) -> float:
        """Mean over the source's dev sets, so a big set does not outvote a small one of the same source."""
        losses = []
        for dev in (d for d in self.sets if d.source == source):
            o = outcomes(self.scores[dev.name], dev.truth, rule, none_score)
            losses.append((nll(o["p_true"]) + nll(o["p_none"])) / 2 if with_absent else nll(o["p_true"]))
        return float(np.mean(losses))

    def best(self, options, held_out: str | None, with_absent: bool, rule=None):
        """The option with the lowest mean loss over the sources other than `held_out`."""
        others = [s for s in self.sources if s != held_out]
        return min(options, key=lambda o: np.mean([
            self.loss(o if rule is None else rule, None if rule is None else o, s, with_absent) for s in others]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devsets", default="devsets")
    args = parser.parse_args(argv)
    sets = load_devsets(Path(args.devsets))
    table = Table(sets, set_scores(Candidate(LocalBackend(), LocalBackend.default_templates), sets))
    sources = table.sources

    def describe_rule(rule):
        return f"{rule[1]:g}" if rule[0] == "fixed" else f"{rule[1]:g} x ln L"

    print("Step 1, logit scale: NLL of the true label\n")
    print("| logit scale | " + " | ".join(sources) + " | mean |")
    print("| --- | " + " | ".join("---:" for _ in sources) + " | ---: |")
    for rule in SCALE_RULES:
        values = [table.loss(rule, None, s, False) for s in sources]
        print(f"| {describe_rule(rule)} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")
    rule = table.best(SCALE_RULES, None, False)
    print(f"\nStep 2, none-of-these cosine at scale {describe_rule(rule)}: NLL of the true label or, with it removed, "
          "of none\n")
    print("| none cosine | " + " | ".join(sources) + " | mean |")
    print("| --- | " + " | ".join("---:" for _ in sources) + " | ---: |")
    for none_score in NONE_SCORES:
        values = [table.loss(rule, none_score, s, True) for s in sources]
        print(f"| {none_score if none_score is not None else '-'} | " + " | ".join(f"{v:.3f}" for v in values)
              + f" | {np.mean(values):.3f} |")
    none_score = table.best(NONE_SCORES, None, True, rule=rule)

    print("\nLeave-one-source-out: both steps chosen on the other sources, measured on the held-out one\n")
    print("| held-out source | scale, none cosine | top-1 | mean top-1 prob | ECE | top-1 prob, true label removed "
          "| before: ECE | before: top-1 prob, true label removed |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for source in sources:
        fold_rule = table.best(SCALE_RULES, source, False)
        fold_none = table.best(NONE_SCORES, source, True, rule=fold_rule)
        after, before = table.outcomes(fold_rule, fold_none, source), table.outcomes(*PREVIOUS, source)
        print(f"| {source} | {describe_rule(fold_rule)}, {fold_none} | {after['correct'].mean():.1%} | "
              f"{after['top_p'].mean():.2f} | {expected_calibration_error(after['top_p'], after['correct']):.3f} | "
              f"{after['absent_top_p'].mean():.2f} | "
              f"{expected_calibration_error(before['top_p'], before['correct']):.3f} | "
              f"{before['absent_top_p'].mean():.2f} |")
    print(f"\nChosen on all sources: logit scale {describe_rule(rule)}, none-of-these cosine {none_score}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
