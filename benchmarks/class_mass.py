"""Does the classifier's own probability mass under a label's WordNet concepts make better labels than ConSE alone?
Measured leave-one-source-out on the dev sets, per source: top-1, in-set ECE, open-set ECE (the true label taken out
of the set) and what `--min_prob 0.3` keeps, for today's defaults and for the blend below.

The blend: an image's ImageNet class probabilities (the top T the vector mixes) are handed to the labels. A class
that a label covers (WordNet, `ImageNetHierarchy.concept_classes`) gives its probability to that label, to the most
specific one when several cover it ("fruit" before "food"; the evidence column's `label`); the mass no label
claims is shared out by today's ConSE probabilities, "none of these" included. That is mixed with plain ConSE by
alpha x (the classifier's top class probability) ** power: power 0 trusts the mass alike on every image, power > 0
trusts it where the classifier is sure of what it sees. `temperature` then calibrates the whole distribution
(p ** (1 / temperature), renormalized). All three are chosen on the other sources by the mean negative
log-likelihood of the true label (label in the set) and of "none of these" (label taken out), as
benchmarks.calibrate chooses today's scale and margin.

Then fitted calibration maps of today's probabilities: Platt scaling of the top-1 probability, alone or with the
classifier's own top class probability (how sure it is of what it sees), fitted on the other sources' images as they
are and with their true label taken out (always wrong), each source weighing the same; measured on the held-out
source, beside the same map fitted on that source itself (what no map of these inputs can beat there) and the ECE
that a perfectly calibrated model shows on that many images (ECE of a finite sample is never 0).

python -m benchmarks.class_mass [--devsets devsets]
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.linear_model import LogisticRegression

from benchmarks.calibrate import best_uncovered, nll
from benchmarks.devdata import load_devsets
from transforms.backends.base import softmax
from transforms.backends.local import ConSEEmbedder, LocalBackend, evidence_strengths
from transforms.label_sets import load_templates
from transforms.rank import embed_label_set, label_probabilities
from transforms.reliability import expected_calibration_error

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # 0: today's ConSE probabilities
POWERS = (0.0, 1.0, 2.0)
TEMPERATURES = (0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0)


class Blend(NamedTuple):
    """How the mass and ConSE mix: weight alpha x (classifier's top class probability) ** power, then temperature."""

    alpha: float
    power: float
    temperature: float


TODAY = Blend(0.0, 0.0, 1.0)
MIN_PROB = 0.3
# Inputs of the fitted maps: logits of outcomes' fields. Platt scaling is the first; the second adds how sure the
# ImageNet classifier is of its top class, the one per-image signal of whether a picture looks like its photos.
MAPS = {"Platt": ("top_p",), "Platt + classifier's top class": ("top_p", "class_top")}


@dataclasses.dataclass
class DevScores:
    """One dev set through today's embedder: label cosines, image-to-class cosines, coverage, top-T class probs."""

    source: str
    truth: np.ndarray
    scores: np.ndarray  # (images, labels)
    class_cosines: np.ndarray  # (images, 1000)
    coverage: np.ndarray  # (labels, 1000) bool
    class_probs: np.ndarray  # (images, 1000), zero outside each image's top T
    claims: list[np.ndarray]  # per label taken out (the last: none), (1000, labels) 0/1: which label a class feeds


def score_sets(devsets: Path, backend: LocalBackend) -> list[DevScores]:
    embedder = ConSEEmbedder(backend)
    out = []
    for dev in load_devsets(devsets, backend):
        labels = embed_label_set(dev.label_phrases, load_templates(backend.default_templates), embedder)
        phrases = list(dev.label_phrases.values())
        images = embedder.embed_class_probabilities(dev.class_probs)
        top = np.argpartition(-dev.class_probs, backend.top_t - 1, axis=1)[:, :backend.top_t]
        kept = np.zeros_like(dev.class_probs)
        np.put_along_axis(kept, top, np.take_along_axis(dev.class_probs, top, axis=1), axis=1)
        out.append(DevScores(dev.source, dev.truth, images @ labels.vectors.T,
                             images @ embedder.centred_class_vectors.T, embedder.coverage(phrases, labels.vectors),
                             kept, [claims(embedder, [p for j, p in enumerate(phrases) if j != out_label])
                                    for out_label in range(len(phrases) + 1)]))
    return out


def claims(embedder: ConSEEmbedder, label_phrases: list[list[str]]) -> np.ndarray:
    """(classes, labels) 0/1: the label each class gives its probability to (the evidence column's `label`: the most
    specific label whose WordNet concept covers it); a class no label covers gives nothing."""
    owned = np.zeros((len(embedder.class_names), len(label_phrases)), np.float32)
    index = {name: i for i, name in enumerate(embedder.class_names)}
    for name, label in embedder.concept_labels(label_phrases).items():
        owned[index[name], label] = 1.0
    return owned


def probabilities(s: DevScores, removed: int, rows: np.ndarray, blend: Blend,
                  backend: LocalBackend) -> tuple[np.ndarray, np.ndarray]:
    """(label probabilities, p(none of these)) of the images `rows` against the labels but `removed` (-1: all)."""
    keep = np.arange(s.scores.shape[1]) != removed
    coverage, scores, cosines = s.coverage[keep], s.scores[rows][:, keep], s.class_cosines[rows]
    none = best_uncovered(cosines, np.broadcast_to(~coverage.any(axis=0), cosines.shape)) - backend.none_margin
    conse = label_probabilities(scores, backend.logit_scale, none,
                                strengths=evidence_strengths(s.class_probs[rows], backend))
    conse_none = 1.0 - conse.sum(axis=1)
    claimed = s.class_probs[rows] @ s.claims[removed]
    unclaimed = np.clip(1.0 - claimed.sum(axis=1), 0.0, 1.0)
    mass = np.concatenate([claimed + unclaimed[:, None] * conse, (unclaimed * conse_none)[:, None]], axis=1)
    weight = blend.alpha * s.class_probs[rows].max(axis=1, keepdims=True) ** blend.power
    full = weight * mass + (1 - weight) * np.concatenate([conse, conse_none[:, None]], axis=1)
    full = softmax(np.log(np.maximum(full, 1e-12)) / blend.temperature)
    return full[:, :-1], full[:, -1]


def outcomes(s: DevScores, blend: Blend, backend: LocalBackend) -> dict[str, np.ndarray]:
    """Per image: p(true label), top-1 probability, right or not; and with its true label taken out of the set (its
    classes rejoin the unclaimed mass and the background), p(none of these) and the top-1 probability left."""
    n = len(s.truth)
    probs, _ = probabilities(s, -1, np.arange(n), blend, backend)
    absent_top, p_none = np.zeros(n), np.zeros(n)
    for label in np.unique(s.truth):
        rows = np.flatnonzero(s.truth == label)
        absent, none = probabilities(s, label, rows, blend, backend)
        absent_top[rows], p_none[rows] = absent.max(axis=1), none
    return {"p_true": probs[np.arange(n), s.truth], "top_p": probs.max(axis=1),
            "correct": probs.argmax(axis=1) == s.truth, "absent_top_p": absent_top, "p_none": p_none,
            "class_top": s.class_probs.max(axis=1)}


class Results:
    """Outcomes per (dev set, blend), computed once."""

    def __init__(self, sets: list[DevScores], backend: LocalBackend):
        self.sets, self.backend, self._cache = sets, backend, {}

    def of(self, i: int, setting: Blend) -> dict[str, np.ndarray]:
        if (i, setting) not in self._cache:
            self._cache[i, setting] = outcomes(self.sets[i], setting, self.backend)
        return self._cache[i, setting]

    def loss(self, source: str, setting) -> float:
        """Mean over the source's dev sets, so a big set does not outvote a small one of the same source."""
        return float(np.mean([(nll(self.of(i, setting)["p_true"]) + nll(self.of(i, setting)["p_none"])) / 2
                              for i, s in enumerate(self.sets) if s.source == source]))

    def top1(self, source: str, setting) -> float:
        return float(np.mean([self.of(i, setting)["correct"].mean()
                              for i, s in enumerate(self.sets) if s.source == source]))

    def pooled(self, source: str, setting) -> dict[str, np.ndarray]:
        parts = [self.of(i, setting) for i, s in enumerate(self.sets) if s.source == source]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def calibration(outcome: dict[str, np.ndarray]) -> tuple[float, float, float, float]:
    """In-set ECE, open-set ECE (the images again with their true label removed: always wrong), the share of images
    `--min_prob 0.3` keeps and how many of those are right."""
    ece = expected_calibration_error(outcome["top_p"], outcome["correct"])
    open_set = expected_calibration_error(np.concatenate([outcome["top_p"], outcome["absent_top_p"]]),
                                          np.concatenate([outcome["correct"], np.zeros_like(outcome["correct"])]))
    kept = outcome["top_p"] >= MIN_PROB
    return ece, open_set, float(kept.mean()), float(outcome["correct"][kept].mean()) if kept.any() else float("nan")


def map_inputs(outcome: dict[str, np.ndarray], inputs: tuple[str, ...],
               open_set: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(features, right or not) of a map: the images as they are and, with `open_set`, then again with their true
    label taken out (the top-1 probability is then `absent_top_p`, and always wrong)."""
    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    cases = [outcome] + ([{**outcome, "top_p": outcome["absent_top_p"]}] if open_set else [])
    features = np.concatenate([np.stack([logit(o[name]) for name in inputs], axis=1) for o in cases])
    return features, np.concatenate([outcome["correct"]] + [np.zeros_like(outcome["correct"])] * (len(cases) - 1))


def fit_map(outcomes_by_source: list[dict[str, np.ndarray]], inputs: tuple[str, ...],
            open_set: bool = True) -> LogisticRegression:
    """Unregularized logistic regression (Platt scaling) of rightness on the inputs, each source weighing the same;
    on the images as they are and, with `open_set`, with their true label taken out."""
    parts = [map_inputs(outcome, inputs, open_set) for outcome in outcomes_by_source]
    weights = np.concatenate([np.full(len(y), 1.0 / len(y)) for _, y in parts])
    return LogisticRegression(C=np.inf).fit(np.concatenate([x for x, _ in parts]),
                                            np.concatenate([y for _, y in parts]), sample_weight=weights)


def mapped_eces(fitted: LogisticRegression, outcome: dict[str, np.ndarray],
                inputs: tuple[str, ...]) -> tuple[float, float]:
    """In-set ECE and open-set ECE of the map's probabilities."""
    features, correct = map_inputs(outcome, inputs)
    mapped, n = fitted.predict_proba(features)[:, 1], len(outcome["correct"])
    return expected_calibration_error(mapped[:n], correct[:n]), expected_calibration_error(mapped, correct)


def calibrated_floor(confidence: np.ndarray, draws: int = 500, seed: int = 0) -> float:
    """Mean ECE of a perfectly calibrated model with these confidences: rightness drawn with those probabilities."""
    rng = np.random.default_rng(seed)
    return float(np.mean([expected_calibration_error(confidence, rng.random(len(confidence)) < confidence)
                          for _ in range(draws)]))


def print_fitted_maps(results: Results, sources: list[str]) -> None:
    print("\nFitted calibration maps of today's probabilities, leave-one-source-out (in-set ECE / open-set ECE)\n")
    last_name, last = list(MAPS.items())[-1]
    print("| held-out source | images | today | " + " | ".join(MAPS) + f" | {last_name}, fitted on this source | "
          "in-set ECE of a perfectly calibrated model on this many images |")
    print("| --- | ---: | ---: | " + " | ".join("---:" for _ in MAPS) + " | ---: | ---: |")
    rows, floors = [], []
    for source in sources:
        held_out = results.pooled(source, TODAY)
        others = [results.pooled(other, TODAY) for other in sources if other != source]
        row = [calibration(held_out)[:2]]
        row += [mapped_eces(fit_map(others, inputs), held_out, inputs) for inputs in MAPS.values()]
        itself = fit_map([held_out], last)
        row += [mapped_eces(itself, held_out, last)]
        # The confidences of a map fitted to these very images as they are: as calibrated as these inputs allow.
        in_set = fit_map([held_out], last, open_set=False)
        floor = calibrated_floor(in_set.predict_proba(map_inputs(held_out, last, open_set=False)[0])[:, 1])
        rows.append(row)
        floors.append(floor)
        print(f"| {source} | {len(held_out['correct'])} | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in row)
              + f" | {floor:.3f} |")
    mean = np.mean(rows, axis=0)
    print("| **mean** | | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in mean) + f" | {np.mean(floors):.3f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devsets", default="devsets")
    args = parser.parse_args(argv)
    backend = LocalBackend()
    results = Results(score_sets(Path(args.devsets), backend), backend)
    sources = list(dict.fromkeys(s.source for s in results.sets))
    settings = [Blend(*setting) for setting in itertools.product(ALPHAS, POWERS, TEMPERATURES)
                if setting[0] > 0 or setting[1] == 0]  # alpha 0 is today's probabilities whatever the power

    print("Top-1 by source, temperature 1 (alpha 0 = today's ConSE probabilities; mass weight alpha x (classifier's "
          "top class probability) ** power)\n")
    print("| alpha | power | " + " | ".join(sources) + " | mean |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in sources) + " | ---: |")
    for blend in (setting for setting in settings if setting.temperature == 1.0):
        values = [results.top1(source, blend) for source in sources]
        print(f"| {blend.alpha:g} | {blend.power:g} | " + " | ".join(f"{v:.1%}" for v in values)
              + f" | {np.mean(values):.1%} |")

    print("\nLeave-one-source-out: alpha, power and temperature chosen on the other sources, measured on the held-out "
          "one\n")
    print("| held-out source | chosen (alpha, power, temperature) | top-1 today | top-1 blend | ECE today | "
          "ECE blend | open-set ECE today | open-set ECE blend | --min_prob 0.3 keeps today (right) | blend (right) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for source in sources:
        chosen = min(settings, key=lambda setting: np.mean([results.loss(other, setting)
                                                            for other in sources if other != source]))
        today, blend = calibration(results.pooled(source, TODAY)), calibration(results.pooled(source, chosen))
        rows.append([results.top1(source, TODAY), results.top1(source, chosen), today[0], blend[0], today[1],
                     blend[1]])
        print(f"| {source} | {', '.join(f'{v:g}' for v in chosen)} | {rows[-1][0]:.1%} | {rows[-1][1]:.1%} | "
              f"{today[0]:.3f} | {blend[0]:.3f} | {today[1]:.3f} | {blend[1]:.3f} | {today[2]:.0%} ({today[3]:.0%}) | "
              f"{blend[2]:.0%} ({blend[3]:.0%}) |")
    mean = np.mean(rows, axis=0)
    print(f"| **mean** | | {mean[0]:.1%} | {mean[1]:.1%} | {mean[2]:.3f} | {mean[3]:.3f} | {mean[4]:.3f} | "
          f"{mean[5]:.3f} | | |")
    print_fitted_maps(results, sources)
    return 0


if __name__ == "__main__":
    sys.exit(main())
