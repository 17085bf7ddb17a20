"""Generates labels/imagenet_class_vectors.npz: the embedded backend's vectors of the 1,000 ImageNet class texts with
its default settings ("a photo of a {}." around each class name), made at build time so that no job start embeds
them again. With the vectors it keeps the sha256 of the texts (a job whose settings give other texts embeds those
itself) and of the text model's weights (a file made by another model is refused).

    python -m labels.build_class_vectors     # after changing labels/imagenet.txt, the prompt or the text model
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from transforms.backends.base import l2_normalize
from transforms.backends.imagenet_hierarchy import imagenet_hierarchy
from transforms.backends.local import (
    CLASS_VECTORS_FILE,
    MINILM_FILES,
    LocalBackend,
    _load_minilm,
    class_texts,
    texts_sha256,
)
from transforms.label_sets import load_label_set

OUTPUT = Path(__file__).with_name(CLASS_VECTORS_FILE)


def default_class_texts() -> tuple[str, ...]:
    """The class texts of the default settings, as ConSEEmbedder builds them."""
    settings = LocalBackend()
    names = class_texts(load_label_set("imagenet"), imagenet_hierarchy(), settings.chain_length)
    return tuple(settings.class_prompt.replace("{}", name) for name in names)


def build() -> dict[str, np.ndarray]:
    texts = default_class_texts()
    return {"vectors": l2_normalize(_load_minilm().encode(texts)), "texts_sha256": np.array(texts_sha256(texts)),
            "model_sha256": np.array(MINILM_FILES[0][1])}


def main() -> None:
    np.savez(OUTPUT, **build())
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
