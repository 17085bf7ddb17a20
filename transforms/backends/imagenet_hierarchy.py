"""The WordNet hierarchy above the 1,000 ImageNet classes (labels/imagenet_hierarchy.json, built by
labels/build_hierarchy.py): each class's chain of broader concepts, and which classes a broad concept covers."""
from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Optional, Sequence

from transforms.label_sets import load_label_set

# The top of WordNet's noun tree ("entity", "physical entity", "object", "whole", "artifact", ...) says nothing a
# label could use; chains stop above this depth (the root is depth 0).
MIN_CHAIN_DEPTH = 5


class ImageNetHierarchy:
    """Class index i is the i-th line of labels/imagenet.txt and the i-th id of the hierarchy file."""

    def __init__(self, class_ids: list[str], synsets: dict[str, dict[str, list[str]]],
                 class_names: Sequence[str] = ()):
        self.class_ids = class_ids
        self._class_by_name = {" ".join(name.casefold().split()): i for i, name in enumerate(class_names)}
        self.synsets = synsets
        self._ancestors = [self._all_ancestors(class_id) for class_id in class_ids]
        self._covered: dict[str, list[int]] = {}
        self._by_lemma: dict[str, set[str]] = {}
        for synset_id, synset in synsets.items():
            for lemma in synset["lemmas"]:
                self._by_lemma.setdefault(lemma.casefold(), set()).add(synset_id)

    @classmethod
    def from_json(cls, text: str, class_names: Sequence[str] = ()) -> "ImageNetHierarchy":
        data = json.loads(text)
        return cls(data["classes"], data["synsets"], class_names)

    def _all_ancestors(self, synset_id: str) -> frozenset[str]:
        """The synset itself and every synset on any hypernym path above it."""
        seen, todo = set(), [synset_id]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(self.synsets[current]["hypernyms"])
        return frozenset(seen)

    def first_path(self, synset_id: str) -> list[str]:
        path = [synset_id]
        while self.synsets[path[-1]]["hypernyms"]:
            path.append(self.synsets[path[-1]]["hypernyms"][0])
        return path

    def chain(self, class_index: int, length: Optional[int] = None) -> list[str]:
        """Names of the broader concepts above a class, nearest first, along WordNet's first hypernym path,
        without the uninformative top of the tree: tench -> cyprinid, ..., fish, aquatic vertebrate, vertebrate."""
        path = self.first_path(self.class_ids[class_index])[1:]
        informative = path[: max(0, len(path) - MIN_CHAIN_DEPTH)]
        names = [self.synsets[synset_id]["lemmas"][0] for synset_id in informative]
        return names[:length] if length is not None else names

    def _senses(self, name: str) -> set[str]:
        """The synsets a name stands for, as written or with its last word made singular ("musical instruments").
        Every sense counts: the packaged hierarchy only holds senses with ImageNet classes below them, and those of
        one name often complement each other ("food" as nutrient holds pizza, as solid food holds fruit)."""
        words = name.split()
        last = words[-1] if words else ""
        singulars = (last[:-3] + "y" if last.endswith("ies") else None, last[:-2] if last.endswith("es") else None,
                     last[:-1] if last.endswith("s") else None)
        for candidate in (name, *(" ".join(words[:-1] + [s]) for s in singulars if s)):
            if synsets := self._by_lemma.get(candidate):
                return set(synsets)
        return set()

    def _named(self, name: str) -> set[int]:
        """The classes a name covers: the class of that name (labels/imagenet.txt) and every class at or below a
        synset of that name; for "A B" that WordNet does not list, A's, where A is a kind of B ("Granny Smith
        apple")."""
        senses = self._senses(name)
        words = name.split()
        if not senses and len(words) > 1:
            head = self._senses(words[-1])
            senses = {s for s in self._senses(" ".join(words[:-1])) if self._all_ancestors(s) & head}
        named = {i for i, ancestors in enumerate(self._ancestors) if ancestors & senses}
        return named | ({self._class_by_name[name]} if name in self._class_by_name else set())

    def concept_classes(self, phrase: str) -> list[int]:
        """Indices of the ImageNet classes a phrase covers, found for the whole phrase or else for each of its parts
        ("food and drink", "cats or dogs", "shades / sunglasses"): see `_named`."""
        if phrase not in self._covered:
            key = " ".join(phrase.casefold().replace("_", " ").split())
            covered = self._named(key) or {i for part in _PARTS.split(key) if part for i in self._named(part)}
            self._covered[phrase] = sorted(covered)
        return self._covered[phrase]


# What joins the parts of a phrase that each name a concept: "food and drink", "cats or dogs", "shades / glasses".
_PARTS = re.compile(r"\s*(?:,|/|&|\band\b|\bor\b)\s*")


@functools.lru_cache(maxsize=1)
def imagenet_hierarchy() -> ImageNetHierarchy:
    """The packaged hierarchy with the class names of labels/imagenet.txt, parsed once per process."""
    return ImageNetHierarchy.from_json((resources.files("labels") / "imagenet_hierarchy.json").read_text("utf-8"),
                                       load_label_set("imagenet"))
