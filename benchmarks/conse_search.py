"""How the embedded backend's settings were chosen: dev-set top-1 for every T, prompt set and centering choice.

Runs the classifier once per dev image, then recombines its class probabilities for each setting, so the
whole grid takes minutes. Run `make devsets` first; `python -m benchmarks.conse_search`.
"""
from __future__ import annotations

import csv
import itertools
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from transforms.backends import get_backend, l2_normalize
from transforms.decode import decode_image
from transforms.label_sets import load_label_set, load_templates
from transforms.rank import prompt_texts

DEV_SETS = ("everyday", "cifar10", "cifar100", "imagenet")
TOP_T = (1, 3, 5, 10, 20, 50)
TEMPLATES = ("plain", "photo", "photos", "simple")
CLASS_TEMPLATES = ("plain", "photo")
# Subtract the mean ImageNet class vector (the sentence encoder's common direction) from: nothing, the image
# vectors only (a per-label bias correction), or image and label vectors alike (scores in a centred space).
CENTERING = ("none", "image", "both")


def text_matrix(embedder, names: list[str], templates: list[str]) -> np.ndarray:
    """One unit vector per name: the normalized mean of its prompts' vectors."""
    vectors = embedder.embed_texts([text for name in names for text in prompt_texts([name], templates)])
    return l2_normalize(vectors.reshape(len(names), len(templates), -1).mean(axis=1))


def main(devsets: str = "devsets") -> int:
    embedder = get_backend("local").load()
    sets = {}
    for name in DEV_SETS:
        with open(Path(devsets) / name / "truth.csv") as f:
            rows = list(csv.DictReader(f))
        images = [decode_image((Path(devsets) / name / row["uri"]).read_bytes(), Image.MAX_IMAGE_PIXELS)[0]
                  for row in rows]
        labels = load_label_set(name)
        sets[name] = (embedder.class_probabilities(images), labels, np.array([labels.index(r["label"]) for r in rows]))
    print("| class prompts | label prompts | T | centering | " + " | ".join(DEV_SETS) + " | mean |")
    print("| --- | --- | ---: | --- | " + " | ".join("---:" for _ in DEV_SETS) + " | ---: |")
    # Class-name prompts are embedded 1,000 times at every worker start, so only cheap sets are tried there.
    for class_templates, template_name in itertools.product(CLASS_TEMPLATES, TEMPLATES):
        classes = text_matrix(embedder, embedder.class_names, load_templates(class_templates))
        templates = load_templates(template_name)
        label_vectors = {name: text_matrix(embedder, labels, templates) for name, (_, labels, _) in sets.items()}
        mean = classes.mean(axis=0)
        for top_t, centering in itertools.product(TOP_T, CENTERING):
            accuracies = []
            for name, (probs, _, truth) in sets.items():
                top = np.argsort(-probs, axis=1)[:, :top_t]
                weights = np.take_along_axis(probs, top, axis=1)
                vectors = l2_normalize(np.einsum("nt,ntd->nd", weights, classes[top]))
                labels = label_vectors[name]
                if centering != "none":
                    vectors = vectors - mean
                if centering == "both":
                    labels = l2_normalize(labels - mean)
                scores = vectors @ labels.T
                accuracies.append(float((scores.argmax(axis=1) == truth).mean()))
            print(f"| {class_templates} | {template_name} | {top_t} | {centering} | "
                  + " | ".join(f"{a:.0%}" for a in accuracies) + f" | {np.mean(accuracies):.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
