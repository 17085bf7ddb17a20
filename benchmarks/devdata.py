"""The dev sets of `make devsets` in memory, with the embedded classifier's ImageNet probabilities of every image
computed once and cached (devsets/.cache/class_probs.npz), so a search over settings recombines them in seconds."""
from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from testbed.devsets import read_index
from transforms.backends.local import ConSEEmbedder, LocalBackend
from transforms.decode import decode_image
from transforms.label_sets import load_label_phrases


@dataclasses.dataclass
class DevSet:
    name: str
    source: str
    kind: str
    label_phrases: dict[str, list[str]]
    truth: np.ndarray  # index into label_phrases of each image's true label
    files: list[str]  # paths relative to the devsets folder
    class_probs: np.ndarray  # (images, 1000)


def load_devsets(devsets: Path, backend: LocalBackend = LocalBackend()) -> list[DevSet]:
    """Every dev set of devsets/index.csv, in index order, with `backend`'s image classifier's probabilities."""
    if not (devsets / "index.csv").is_file():
        raise SystemExit(f"error: {devsets}/index.csv is missing; run `make devsets` first")
    rows = read_index(devsets)
    files_of = {}
    for row in rows:
        with (devsets / row["name"] / "truth.csv").open() as f:
            files_of[row["name"]] = [(f"{row['name']}/{r['uri']}", r["label"]) for r in csv.DictReader(f)]
    probs = class_probabilities(devsets, sorted({file for pairs in files_of.values() for file, _ in pairs}), backend)
    sets = []
    for row in rows:
        phrases = load_label_phrases(str(devsets / row["name"] / "labels.txt"))
        labels = list(phrases)
        pairs = files_of[row["name"]]
        sets.append(DevSet(row["name"], row["source"], row["kind"], phrases,
                           np.array([labels.index(label) for _, label in pairs]), [file for file, _ in pairs],
                           np.stack([probs[file] for file, _ in pairs])))
    return sets


def class_probabilities(devsets: Path, files: list[str], backend: LocalBackend,
                        batch_size: int = 64) -> dict[str, np.ndarray]:
    """file -> (1000,) classifier probabilities, decoded exactly as the pipeline decodes; cached on disk per image
    runtime (onnx and torch agree to ~1e-6, an int8 model does not)."""
    cache = devsets / ".cache" / f"class_probs-{backend.runtime}.npz"
    cached = dict(np.load(cache)) if cache.is_file() and backend.runtime != "onnx-int8" else {}
    missing = [file for file in files if file not in cached]
    if missing:
        embedder = ConSEEmbedder(backend)
        for start in range(0, len(missing), batch_size):
            chunk = missing[start: start + batch_size]
            images = [decode_image((devsets / file).read_bytes(), Image.MAX_IMAGE_PIXELS)[0] for file in chunk]
            cached.update(zip(chunk, embedder.class_probabilities(images)))
            print(f"classified {min(start + batch_size, len(missing))}/{len(missing)} dev images ({backend.runtime})",
                  file=sys.stderr, flush=True)
        if backend.runtime != "onnx-int8":  # an int8 model depends on its calibration images: never reused
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(cache, **cached)
    return {file: cached[file] for file in files}
