"""The WordNet hierarchy above the 1,000 ImageNet classes (labels/imagenet_hierarchy.json, built by
labels/build_hierarchy.py): each class's chain of broader concepts, and which classes a broad concept covers."""
from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Optional

# The top of WordNet's noun tree ("entity", "physical entity", "object", "whole", "artifact", ...) says nothing a
# label could use; chains stop above this depth (the root is depth 0).
MIN_CHAIN_DEPTH = 5


class ImageNetHierarchy:
    """Class index i is the i-th line of labels/imagenet.txt and the i-th id of the hierarchy file."""

    def __init__(self, class_ids: list[str], synsets: dict[str, dict[str, list[str]]]):
        self.class_ids = class_ids
        self.synsets = synsets
        self._ancestors = [self._all_ancestors(class_id) for class_id in class_ids]
        self._covered: dict[str, list[int]] = {}
        self._by_lemma: dict[str, set[str]] = {}
        for synset_id, synset in synsets.items():
            for lemma in synset["lemmas"]:
                self._by_lemma.setdefault(lemma.casefold(), set()).add(synset_id)

    @classmethod
    def from_json(cls, text: str) -> "ImageNetHierarchy":
        data = json.loads(text)
        return cls(data["classes"], data["synsets"])

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

    def concept_synsets(self, phrase: str) -> set[str]:
        """The synsets a phrase names, trying the phrase as written and then as a singular ("mammals")."""
        key = " ".join(phrase.casefold().replace("_", " ").split())
        for candidate in (key, key[:-3] + "y" if key.endswith("ies") else None,
                          key[:-2] if key.endswith("es") else None, key[:-1] if key.endswith("s") else None):
            if candidate and candidate in self._by_lemma:
                return self._by_lemma[candidate]
        return set()

    def concept_classes(self, phrase: str) -> list[int]:
        """Indices of the ImageNet classes a phrase covers: those at or below any synset it names."""
        if phrase not in self._covered:
            synsets = self.concept_synsets(phrase)
            self._covered[phrase] = [i for i, ancestors in enumerate(self._ancestors) if ancestors & synsets]
        return self._covered[phrase]


@functools.lru_cache(maxsize=1)
def imagenet_hierarchy() -> ImageNetHierarchy:
    """The packaged hierarchy, parsed once per process."""
    return ImageNetHierarchy.from_json((resources.files("labels") / "imagenet_hierarchy.json").read_text("utf-8"))
