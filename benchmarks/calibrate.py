"""Chooses how the embedded backend turns cosine scores into probabilities, leave-one-source-out, and reports the
expected calibration error (ECE, 10 bins) of top-1 probability per source.

Two steps, each chosen on the other sources for every held-out source:
1. the logit scale, fixed or growing with the number of labels L (k x ln L), by the negative log-likelihood (NLL)
   of each dev image's true label;
2. the "none of these" competitor: the background is the ImageNet classes that no label covers (by WordNet, or
   with a class-label cosine of at least the overlap), and "none of these" scores an image's best background
   cosine less a margin. Chosen by the NLL of two equally likely events: the image's true label is in its set
   (target: that label), or it was taken out of the set (target: "none of these" -- the image then has no right
   answer, as the astronaut had none in `everyday`).

python -m benchmarks.calibrate [--devsets devsets]
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np

from benchmarks.devdata import DevSet, load_devsets
from transforms.backends.local import ConSEEmbedder, LocalBackend, evidence_strengths
from transforms.label_sets import load_templates
from transforms.rank import embed_label_set, label_probabilities
from transforms.reliability import expected_calibration_error

SCALE_RULES = [("fixed", s) for s in (5, 10, 15, 20, 30, 40)] + [("per ln L", k) for k in (2, 4, 6, 8, 10)]
OVERLAPS = (None, 0.4, 0.5, 0.6, 0.7)  # None: WordNet alone decides what a label covers
MARGINS = (None, -0.1, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3)  # None: no "none of these"
PREVIOUS = (("fixed", 15), None, None)  # the defaults before this work: scale 15, no "none of these"


@dataclasses.dataclass
class Scored:
    """One dev set through the default embedder: label scores, image-to-class cosines, label coverage by overlap."""

    dev: DevSet
    scores: np.ndarray  # (images, labels)
    class_cosines: np.ndarray  # (images, 1000)
    coverage: dict[float, np.ndarray]  # overlap -> (labels, 1000) bool


def score_sets(sets: list[DevSet], backend: LocalBackend) -> list[Scored]:
    out = []
    embedder = ConSEEmbedder(backend)
    by_overlap = {overlap: ConSEEmbedder(dataclasses.replace(backend, background_overlap=overlap))
                  for overlap in OVERLAPS}  # the overlap changes what a label covers, not the vectors
    for dev in sets:
        labels = embed_label_set(dev.label_phrases, load_templates(backend.default_templates), embedder)
        phrases = list(dev.label_phrases.values())
        coverages = {overlap: e.coverage(phrases, labels.vectors) for overlap, e in by_overlap.items()}
        images = embedder.embed_class_probabilities(dev.class_probs)
        out.append(Scored(dev, images @ labels.vectors.T, images @ embedder.centred_class_vectors.T, coverages))
    return out


def scale_for(rule: tuple[str, float], num_labels: int) -> float:
    kind, value = rule
    return value if kind == "fixed" else value * np.log(num_labels)


def without_truth(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each image's scores with its true label's column taken out: the label set then has no right answer."""
    keep = np.ones(scores.shape, dtype=bool)
    keep[np.arange(len(truth)), truth] = False
    return scores[keep].reshape(len(truth), -1)


def best_uncovered(class_cosines: np.ndarray, uncovered: np.ndarray) -> np.ndarray:
    """Per image, the best cosine over the classes its row of `uncovered` marks (-inf where none is)."""
    return np.where(uncovered, class_cosines, -np.inf).max(axis=1)


def outcomes(s: Scored, rule, overlap, margin, full_evidence: float = 0.0) -> dict[str, np.ndarray]:
    """Per image: p(true label), top-1 probability and correctness; and, with the true label removed from the set
    (its classes rejoin the background), p(none of these) and the top-1 probability left on a wrong label. Each
    image's logits scaled by its evidence strength at `full_evidence` (0: all at full strength)."""
    truth, n = s.dev.truth, len(s.dev.truth)
    none_in = none_absent = None
    if margin is not None:
        coverage = s.coverage[overlap]
        counts = coverage.sum(axis=0)
        none_in = best_uncovered(s.class_cosines, np.broadcast_to(counts == 0, s.class_cosines.shape)) - margin
        none_absent = best_uncovered(s.class_cosines, (counts - coverage[truth]) == 0) - margin
    strengths = evidence_strengths(s.dev.class_probs, dataclasses.replace(LocalBackend(), full_evidence=full_evidence))
    probs = label_probabilities(s.scores, scale_for(rule, s.scores.shape[1]), none_in, strengths=strengths)
    absent = label_probabilities(without_truth(s.scores, truth), scale_for(rule, s.scores.shape[1] - 1), none_absent,
                                 strengths=strengths)
    return {"p_true": probs[np.arange(n), truth], "top_p": probs.max(axis=1), "correct": probs.argmax(axis=1) == truth,
            "p_none": 1.0 - absent.sum(axis=1), "absent_top_p": absent.max(axis=1)}


def nll(p: np.ndarray) -> float:
    return float(-np.log(np.maximum(p, 1e-6)).mean())


def loss(scored: list[Scored], source: str, rule, overlap, margin, with_absent: bool) -> float:
    """Mean over the source's dev sets, so a big set does not outvote a small one of the same source."""
    values = []
    for s in (s for s in scored if s.dev.source == source):
        o = outcomes(s, rule, overlap, margin)
        values.append((nll(o["p_true"]) + nll(o["p_none"])) / 2 if with_absent else nll(o["p_true"]))
    return float(np.mean(values))


def pooled(scored: list[Scored], source: str, rule, overlap, margin, full_evidence: float = 0.0
           ) -> dict[str, np.ndarray]:
    parts = [outcomes(s, rule, overlap, margin, full_evidence) for s in scored if s.dev.source == source]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def choose(scored: list[Scored], sources: list[str], held_out: str | None):
    """(scale rule, overlap, margin) chosen on the sources other than `held_out`, step by step."""
    others = [s for s in sources if s != held_out]
    rule = min(SCALE_RULES, key=lambda r: np.mean([loss(scored, s, r, None, None, False) for s in others]))
    overlap, margin = min(itertools.product(OVERLAPS, MARGINS), key=lambda om: np.mean(
        [loss(scored, s, rule, *om, True) for s in others]))
    return rule, overlap, margin


def describe(rule, overlap=None, margin=None) -> str:
    scale = f"{rule[1]:g}" if rule[0] == "fixed" else f"{rule[1]:g} x ln L"
    if margin is None:
        return f"scale {scale}, no none-of-these"
    return f"scale {scale}, overlap {'WordNet only' if overlap is None else overlap}, margin {margin:g}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devsets", default="devsets")
    args = parser.parse_args(argv)
    sets = load_devsets(Path(args.devsets))
    scored = score_sets(sets, LocalBackend())
    sources = list(dict.fromkeys(dev.source for dev in sets))

    print("Step 1, logit scale: NLL of the true label\n")
    print("| logit scale | " + " | ".join(sources) + " | mean |")
    print("| --- | " + " | ".join("---:" for _ in sources) + " | ---: |")
    for rule in SCALE_RULES:
        values = [loss(scored, s, rule, None, None, False) for s in sources]
        print(f"| {describe(rule)[6:].split(',')[0]} | " + " | ".join(f"{v:.3f}" for v in values)
              + f" | {np.mean(values):.3f} |")
    rule, overlap, margin = choose(scored, sources, None)
    print(f"\nStep 2, none of these (at {describe(rule).split(',')[0]}): mean NLL of the true label and, with it "
          "removed, of none\n")
    print("| overlap | margin | " + " | ".join(sources) + " | mean |")
    print("| --- | --- | " + " | ".join("---:" for _ in sources) + " | ---: |")
    for om in sorted(itertools.product(OVERLAPS, MARGINS),
                     key=lambda om: np.mean([loss(scored, s, rule, *om, True) for s in sources]))[:12]:
        values = [loss(scored, s, rule, *om, True) for s in sources]
        print(f"| {'WordNet only' if om[0] is None else om[0]} | {om[1]} | " + " | ".join(f"{v:.3f}" for v in values)
              + f" | {np.mean(values):.3f} |")

    print("\nLeave-one-source-out: both steps chosen on the other sources, measured on the held-out one\n")
    print("ECE: on the dev images as they are. Open-set ECE: on those and, as many again, the same images with their "
          "true label removed (whose top-1 is always wrong).\n")
    print("| held-out source | chosen on the others | top-1 | mean top-1 prob | top-1 prob, true label removed | ECE | "
          "open-set ECE | before: mean top-1 prob | before: top-1 prob, true label removed | before: ECE | "
          "before: open-set ECE |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    eces: dict[str, list[float]] = {}
    for source in sources:
        fold = choose(scored, sources, source)
        line = [source, describe(*fold)]
        for name, outcome in (("after", pooled(scored, source, *fold)), ("before", pooled(scored, source, *PREVIOUS))):
            ece = expected_calibration_error(outcome["top_p"], outcome["correct"])
            # The images with their true label removed are always wrong.
            confidence = np.concatenate([outcome["top_p"], outcome["absent_top_p"]])
            correct = np.concatenate([outcome["correct"], np.zeros_like(outcome["correct"])])
            open_set = expected_calibration_error(confidence, correct)
            eces.setdefault(name, []).append(ece)
            eces.setdefault(f"{name} open", []).append(open_set)
            line += ([f"{outcome['correct'].mean():.1%}"] if name == "after" else []) + [
                f"{outcome['top_p'].mean():.2f}", f"{outcome['absent_top_p'].mean():.2f}", f"{ece:.3f}",
                f"{open_set:.3f}"]
        print("| " + " | ".join(line) + " |")
    means = {name: f"{np.mean(values):.3f}" for name, values in eces.items()}
    print(f"| **mean** | | | | | {means['after']} | {means['after open']} | | | {means['before']} | "
          f"{means['before open']} |\n\nChosen on all sources: {describe(rule, overlap, margin)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
