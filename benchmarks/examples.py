"""Chooses how examples teach the embedded backend (transforms/examples.py), leave-one-source-out, for 1, 3 and 5
confirmed images per label, and reports top-1 and ECE per source against zero-shot.

For each dev set and each draw (seeded), k images of every label that has more than k are the examples (a label
with n <= k images gets n - 1, so that one stays to be scored); every other image is scored. Two choices, each
made on the other sources for every held-out source, each source counting once:
1. the mix weight (label vector = text + weight x mean of its examples' image vectors), by mean top-1;
2. the calibration at that weight: the probabilities as the backend makes them, or mapped by a temperature and a
   bias of "none of these" fitted to the examples left-one-out (transforms.examples.fit_calibration) under priors of
   several widths, by the log-loss of the true label of every scored image.
Reported: top-1, the expected calibration error (ECE, 10 bins) of the top-1 probability, the ECE over every
(image, label) pair ("label ECE": whether each reported probability means what it says), and the mean top-1
probability, to set against top-1.

python -m benchmarks.examples [--devsets devsets] [--draws 20]
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.devdata import DevSet, load_devsets
from transforms.backends.local import ConSEEmbedder, LocalBackend, evidence_strengths
from transforms.examples import CALIBRATION_PRIOR_SD, DEFAULT_WEIGHT, Examples, teach
from transforms.label_sets import load_templates
from transforms.rank import LabelMatrix, embed_label_set, label_probabilities, none_scores
from transforms.reliability import expected_calibration_error

EXAMPLES_PER_LABEL = (1, 3, 5)
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
# None: probabilities as the backend makes them; else the prior's sd of the map fitted to the examples
# (transforms.examples.fit_calibration; inf: maximum likelihood)
CALIBRATIONS = (None, 2.0, 1.0, 0.5, 0.25)


def draw_examples(truth: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the examples: k images of each label with more than k, n - 1 of a label with n <= k."""
    chosen = []
    for label in np.unique(truth):
        members = np.flatnonzero(truth == label)
        chosen.extend(rng.choice(members, size=min(k, len(members) - 1), replace=False))
    return np.array(sorted(chosen), dtype=int)


def probabilities(labels: LabelMatrix, vectors: np.ndarray, strengths: np.ndarray,
                  backend: LocalBackend) -> np.ndarray:
    """The label probabilities of `vectors` (of evidence `strengths`) as the pipeline ranks them (rank.rank_rows)."""
    return label_probabilities(vectors @ labels.vectors.T, labels.logit_scale or backend.logit_scale,
                               none_scores(vectors, labels, backend.none_margin), labels.logit_bias,
                               labels.calibration, strengths).astype(np.float64)


def scored(labels: LabelMatrix, vectors: np.ndarray, strengths: np.ndarray, truth: np.ndarray,
           backend: LocalBackend) -> dict[str, float]:
    """top-1, the ECE of the top-1 probability, and over every (image, label) pair the ECE and log-loss of the
    probability as a claim that the label is right, of `vectors` ranked against `labels` (probabilities)."""
    probs = probabilities(labels, vectors, strengths, backend)
    right = np.zeros(probs.shape, dtype=bool)
    right[np.arange(len(truth)), truth] = True
    top = probs.argmax(axis=1)
    clipped = np.clip(probs, 1e-12, 1 - 1e-12)
    return {"top1": float((top == truth).mean()),
            "ece": expected_calibration_error(probs.max(axis=1), top == truth),
            "label_ece": expected_calibration_error(probs.ravel(), right.ravel()),
            "mean_top_prob": float(probs.max(axis=1).mean()),
            "loss": float(-np.log(clipped[np.arange(len(truth)), truth]).mean()),
            "label_loss": float(-np.where(right, np.log(clipped), np.log1p(-clipped)).sum(axis=1).mean())}


def run_set(dev: DevSet, embedder: ConSEEmbedder, backend: LocalBackend, k: int, draws: int,
            weights: tuple[float, ...]) -> dict:
    """(weight, calibration) -> mean metrics over draws on the images not drawn as examples; 'zero-shot' too."""
    base = embed_label_set(dev.label_phrases, load_templates(backend.default_templates), embedder)
    vectors = embedder.embed_class_probabilities(dev.class_probs)
    strengths = evidence_strengths(dev.class_probs, backend)
    names = list(dev.label_phrases)
    totals: dict = defaultdict(lambda: defaultdict(float))
    rng = np.random.default_rng(k)
    for _ in range(draws):
        chosen = draw_examples(dev.truth, k, rng)
        rest = np.setdiff1d(np.arange(len(dev.truth)), chosen)
        for name, value in scored(base, vectors[rest], strengths[rest], dev.truth[rest], backend).items():
            totals["zero-shot"][name] += value / draws
        for weight, calibration in itertools.product(weights, CALIBRATIONS):
            examples = Examples(tuple(names[i] for i in dev.truth[chosen]), vectors[chosen], weight,
                                strengths=strengths[chosen])
            taught = teach(base, examples, backend.logit_scale, backend.none_margin, calibration)
            for name, value in scored(taught, vectors[rest], strengths[rest], dev.truth[rest], backend).items():
                totals[(weight, calibration)][name] += value / draws
    return {"examples": len(chosen), "scored": len(rest), "metrics": totals}


# The probe of one or two examples: label triples of the clip art set, up to 400 drawings each.
PROBE_SET, PROBE_LABELS, PROBE_IMAGES = "openclipart-coarse", (("mammal", "vehicle", "fruit"),
                                                              ("bird", "building", "music"),
                                                              ("tree", "boat", "clothing")), 400


def few_examples_probe(dev: DevSet, embedder: ConSEEmbedder, backend: LocalBackend) -> None:
    """Whether one or two examples inflate the probabilities: for each label triple, zero-shot against one example
    (the first drawing) and two examples of the first label, scored on the other drawings: top-1, the mean top-1
    probability, how many drawings `--multi_label --threshold 0.5` labels, and the largest sum of a row."""
    print(f"\n### One or two examples ({PROBE_SET}, label triples, up to {PROBE_IMAGES} drawings each)\n")
    print("| labels | drawings | examples | top-1 | mean top-1 prob | labeled at --threshold 0.5 | largest row sum |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    names = list(dev.label_phrases)
    for labels in PROBE_LABELS:
        members = np.flatnonzero(np.isin(dev.truth, [names.index(label) for label in labels]))
        picked = rng.choice(members, size=min(PROBE_IMAGES, len(members)), replace=False)
        truth = np.array([labels.index(names[i]) for i in dev.truth[picked]])
        base = embed_label_set({label: dev.label_phrases[label] for label in labels},
                               load_templates(backend.default_templates), embedder)
        vectors = embedder.embed_class_probabilities(dev.class_probs[picked])
        strengths = evidence_strengths(dev.class_probs[picked], backend)
        first_label = np.flatnonzero(truth == 0)[:2]
        for name, chosen in (("none", []), ("one", [0]), ("two, of one label", list(first_label))):
            matrix = base if not chosen else teach(base, Examples(tuple(labels[truth[i]] for i in chosen),
                                                                  vectors[chosen], strengths=strengths[chosen]),
                                                  backend.logit_scale, backend.none_margin)
            rest = np.setdiff1d(np.arange(len(picked)), chosen)
            probs = probabilities(matrix, vectors[rest], strengths[rest], backend)
            print(f"| {', '.join(labels)} | {len(rest)} | {name} | {(probs.argmax(axis=1) == truth[rest]).mean():.1%} "
                  f"| {probs.max(axis=1).mean():.2f} | {(probs >= 0.5).any(axis=1).sum()} | "
                  f"{probs.sum(axis=1).max():.2f} |")


def teachable(dev: DevSet) -> bool:
    """A set where at least half the images have a label with two or more images: examples can be drawn."""
    counts = np.bincount(dev.truth)
    return (counts[dev.truth] >= 2).mean() >= 0.5


def by_source(results: dict[str, dict], sets: list[DevSet]) -> dict[str, dict]:
    """source -> key -> metric mean over the source's teachable sets."""
    out: dict = {}
    for source in dict.fromkeys(dev.source for dev in sets):
        members = [results[dev.name]["metrics"] for dev in sets if dev.source == source]
        out[source] = {key: {name: float(np.mean([m[key][name] for m in members])) for name in members[0][key]}
                       for key in members[0]}
    return out


def label(calibration) -> str:
    if calibration is None:
        return "none"
    return "fitted LOO, " + ("max. likelihood" if calibration == math.inf else f"prior sd {calibration:g}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devsets", type=Path, default=Path("devsets"))
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--weights", type=float, nargs="+", default=WEIGHTS, help="mix weights to choose among")
    args = parser.parse_args(argv)
    backend = LocalBackend()
    embedder = ConSEEmbedder(backend)
    every_set = load_devsets(args.devsets, backend)
    few_examples_probe(next(dev for dev in every_set if dev.name == PROBE_SET), embedder, backend)
    sets = [dev for dev in every_set if teachable(dev)]
    print("teachable dev sets: " + ", ".join(f"{dev.name} ({len(dev.truth)} images, {len(dev.label_phrases)} labels)"
                                             for dev in sets), file=sys.stderr)
    shipped = (DEFAULT_WEIGHT, CALIBRATION_PRIOR_SD)
    for k in EXAMPLES_PER_LABEL:
        results = {dev.name: run_set(dev, embedder, backend, k, args.draws, tuple(args.weights)) for dev in sets}
        sources = by_source(results, sets)
        print(f"\n### {k} example{'s' * (k > 1)} per label ({args.draws} draws)\n")
        print("| held-out source | examples / scored images | chosen on the others (weight, calibration) | "
              "top-1 zero-shot | top-1 taught | ECE zero-shot | ECE taught | label ECE zero-shot | "
              "label ECE taught | mean top-1 prob zero-shot | mean top-1 prob taught |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        rows = []
        for held in sources:
            others = [s for s in sources if s != held]
            weight = max(args.weights, key=lambda w: (np.mean([sources[s][(w, None)]["top1"] for s in others]), -w))
            calibration = min(CALIBRATIONS, key=lambda c: np.mean([sources[s][(weight, c)]["loss"]
                                                                    for s in others]))
            zero, taught = sources[held]["zero-shot"], sources[held][(weight, calibration)]
            rows.append((zero, taught))
            sizes = ", ".join(f"{results[dev.name]['examples']} / {results[dev.name]['scored']}"
                              for dev in sets if dev.source == held)
            print(f"| {held} | {sizes} | {weight:g}, {label(calibration)} | {zero['top1']:.1%} | "
                  f"{taught['top1']:.1%} | {zero['ece']:.3f} | {taught['ece']:.3f} | {zero['label_ece']:.3f} | "
                  f"{taught['label_ece']:.3f} | {zero['mean_top_prob']:.2f} | {taught['mean_top_prob']:.2f} |")
        mean = {name: (np.mean([z[name] for z, _ in rows]), np.mean([t[name] for _, t in rows]))
                for name in ("top1", "ece", "label_ece", "mean_top_prob")}
        print(f"| **mean** | | | {mean['top1'][0]:.1%} | **{mean['top1'][1]:.1%}** | {mean['ece'][0]:.3f} | "
              f"**{mean['ece'][1]:.3f}** | {mean['label_ece'][0]:.3f} | **{mean['label_ece'][1]:.3f}** | "
              f"{mean['mean_top_prob'][0]:.2f} | **{mean['mean_top_prob'][1]:.2f}** |")
        print(f"\nEvery setting, mean over all sources ({k} per label):\n")
        print("| weight | calibration | top-1 | mean top-1 prob | ECE | label ECE | label log-loss |"
              + "".join(f" {s} top-1 / ECE |" for s in sources))
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(sources))
        for key in [("zero-shot", None)] + list(itertools.product(args.weights, CALIBRATIONS)):
            lookup = "zero-shot" if key[0] == "zero-shot" else key
            means = {name: np.mean([sources[s][lookup][name] for s in sources])
                     for name in ("top1", "mean_top_prob", "ece", "label_ece", "label_loss")}
            mark = "**" if key == shipped else ""
            print(f"| {mark}{key[0] if key[0] == 'zero-shot' else f'{key[0]:g}'}{mark} | "
                  f"{'' if key[0] == 'zero-shot' else label(key[1])} | {means['top1']:.1%} | "
                  f"{means['mean_top_prob']:.2f} | {means['ece']:.3f} | {means['label_ece']:.3f} | "
                  f"{means['label_loss']:.3f} |"
                  + "".join(f" {sources[s][lookup]['top1']:.1%} / {sources[s][lookup]['ece']:.3f} |" for s in sources))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
