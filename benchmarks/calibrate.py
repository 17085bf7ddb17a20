"""Chooses a backend's logit scale (inverse temperature) on the dev sets: the one with the lowest mean negative
log-likelihood of the true label, pooled over every dev image. `python -m benchmarks.calibrate [backend]`."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from transforms.backends import get_backend
from transforms.decode import decode_image
from transforms.label_sets import load_label_phrases, load_templates
from transforms.rank import build_label_matrix, softmax

DEV_SETS = ("everyday", "cifar10", "cifar100", "imagenet")
SCALES = (5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150)


def dev_scores(backend, devsets: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(cosine scores, true label indices) per dev set, as the pipeline computes them."""
    embedder = backend.load()
    templates = load_templates(backend.default_templates)
    out = []
    for name in DEV_SETS:
        with open(devsets / name / "truth.csv") as f:
            rows = list(csv.DictReader(f))
        labels = build_label_matrix(load_label_phrases(name), templates, backend)
        images = [decode_image((devsets / name / r["uri"]).read_bytes(), Image.MAX_IMAGE_PIXELS)[0] for r in rows]
        scores = embedder.embed_images(images) @ labels.vectors.T
        out.append((scores, np.array([labels.names.index(r["label"]) for r in rows])))
    return out


def main(backend_name: str = "local", devsets: str = "devsets") -> int:
    backend = get_backend(backend_name)
    sets = dev_scores(backend, Path(devsets))
    print(f"| logit scale | mean NLL | mean p(true) | mean p(top-1) | top-1 |  ({backend_name}, current "
          f"{backend.logit_scale:g})")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for scale in SCALES:
        probs = [softmax(scale * scores) for scores, _ in sets]
        p_true = np.concatenate([p[np.arange(len(t)), t] for p, (_, t) in zip(probs, sets)])
        p_top = np.concatenate([p.max(axis=1) for p in probs])
        top1 = np.concatenate([p.argmax(axis=1) == t for p, (_, t) in zip(probs, sets)])
        print(f"| {scale} | {-np.log(np.maximum(p_true, 1e-12)).mean():.3f} | {p_true.mean():.3f} | "
              f"{p_top.mean():.3f} | {top1.mean():.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
