"""How the embedded backend's settings are chosen: leave-one-source-out over the dev sources of `make devsets`.

Every candidate setting is scored on every dev set (top-1); a source's score is the mean over its sets. For each
source, the setting that does best on the *other* sources is picked and scored on the held-out one: the mean of
those held-out scores is what the selection procedure is worth on data it never saw. The shipped default is the
procedure's pick on all sources. The classifier runs once per dev image (benchmarks/devdata.py); settings only
recombine its outputs through the backend's own code, so the grid takes minutes.

python -m benchmarks.conse_search [--devsets devsets] [--top 15]
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np

from benchmarks.devdata import DevSet, load_devsets
from transforms.backends.local import ConSEEmbedder, LocalBackend
from transforms.label_sets import load_templates
from transforms.rank import embed_label_set

CLASS_PROMPTS = ("{}", "a photo of a {}.")
CHAIN_LENGTHS = (0, 1, 2, 3, 5, 99)
TOP_T = (5, 10, 20, 50)
CENTRE = (True, False)
HIERARCHY_WEIGHTS = (0.0, 0.25, 0.5, 0.75)
TEMPLATES = ("plain", "photo", "photos")


@dataclasses.dataclass(frozen=True)
class Candidate:
    backend: LocalBackend
    templates: str

    def describe(self) -> str:
        b = self.backend
        prompt = "plain" if b.class_prompt == "{}" else "photo"
        return (f"{prompt} | {b.chain_length} | {b.top_t} | {'yes' if b.centre else 'no'} | {b.hierarchy_weight:g} | "
                f"{self.templates}")


HEADER = "class prompt | chain | T | centred | WordNet weight | label prompts"
# The defaults before this search, and ConSE as published (class names in a photo prompt, bare label names).
BEFORE = Candidate(LocalBackend(top_t=20, class_prompt="{}", chain_length=0, centre=True, hierarchy_weight=0.0),
                   "photo")
PLAIN_CONSE = Candidate(LocalBackend(top_t=10, class_prompt="a photo of a {}.", chain_length=0, centre=False,
                                     hierarchy_weight=0.0), "plain")


def candidates() -> list[Candidate]:
    grid = itertools.product(CLASS_PROMPTS, CHAIN_LENGTHS, TOP_T, CENTRE, HIERARCHY_WEIGHTS, TEMPLATES)
    return [Candidate(LocalBackend(top_t=t, class_prompt=prompt, chain_length=chain, centre=centre,
                                   hierarchy_weight=weight), templates)
            for prompt, chain, t, centre, weight, templates in grid]


def set_scores(candidate: Candidate, sets: list[DevSet]) -> dict[str, np.ndarray]:
    """dev set -> (images, labels) cosine scores, computed by the backend's own embedder and label matrix."""
    embedder = ConSEEmbedder(candidate.backend)
    templates = load_templates(candidate.templates)
    scores = {}
    for dev in sets:
        labels = embed_label_set(dev.label_phrases, templates, embedder)
        scores[dev.name] = embedder.embed_class_probabilities(dev.class_probs) @ labels.vectors.T
    return scores


def top1_by_source(scores: dict[str, np.ndarray], sets: list[DevSet]) -> dict[str, float]:
    """Mean top-1 over each source's dev sets."""
    by_source: dict[str, list[float]] = {}
    for dev in sets:
        by_source.setdefault(dev.source, []).append(float((scores[dev.name].argmax(axis=1) == dev.truth).mean()))
    return {source: float(np.mean(values)) for source, values in by_source.items()}


def leave_one_source_out(table: dict[Candidate, dict[str, float]], sources: list[str]) -> dict[str, Candidate]:
    """held-out source -> the candidate with the best mean over the other sources (ties: first in grid order)."""
    return {held_out: max(table, key=lambda c: np.mean([table[c][s] for s in sources if s != held_out]))
            for held_out in sources}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devsets", default="devsets")
    parser.add_argument("--top", type=int, default=15, help="rows of the best candidates to print")
    args = parser.parse_args(argv)
    sets = load_devsets(Path(args.devsets))
    sources = list(dict.fromkeys(dev.source for dev in sets))
    grid = candidates()
    table = {}
    for i, candidate in enumerate(grid + [BEFORE, PLAIN_CONSE]):
        table[candidate] = top1_by_source(set_scores(candidate, sets), sets)
        if i % 100 == 99:
            print(f"scored {i + 1}/{len(grid) + 2} candidates", file=sys.stderr, flush=True)

    def row(candidate: Candidate, note: str = "") -> str:
        values = [table[candidate][s] for s in sources]
        return (f"| {candidate.describe()} | " + " | ".join(f"{v:.1%}" for v in values)
                + f" | {np.mean(values):.1%} |{note}")

    members = ", ".join(f"{s}: " + "+".join(d.name for d in sets if d.source == s) for s in sources)
    print(f"\nTop-1 by source ({members})\n")
    print(f"| {HEADER} | " + " | ".join(sources) + " | mean |")
    print("| --- " * (6 + len(sources) + 1) + "|")
    ranked = sorted(grid, key=lambda c: -np.mean(list(table[c].values())))
    for candidate in ranked[: args.top]:
        print(row(candidate))
    print(row(BEFORE, " before (previous defaults)"))
    print(row(PLAIN_CONSE, " plain ConSE"))

    picks = leave_one_source_out({c: table[c] for c in grid}, sources)
    print("\nLeave-one-source-out: each source scored with the setting chosen on the other sources\n")
    print(f"| held-out source | chosen on the others: {HEADER} | held-out top-1 | before | plain ConSE |")
    print("| --- | --- | ---: | ---: | ---: |")
    for source, pick in picks.items():
        print(f"| {source} | {pick.describe()} | {table[pick][source]:.1%} | {table[BEFORE][source]:.1%} | "
              f"{table[PLAIN_CONSE][source]:.1%} |")
    held_out = np.mean([table[pick][source] for source, pick in picks.items()])
    print(f"| **mean** | | **{held_out:.1%}** | {np.mean(list(table[BEFORE].values())):.1%} | "
          f"{np.mean(list(table[PLAIN_CONSE].values())):.1%} |")
    print(f"\nChosen on all sources (the shipped default): {HEADER}\n{ranked[0].describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
