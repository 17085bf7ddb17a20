"""The seed's direction of the aligned space as a library function: rank texts for one image, on any backend."""
from __future__ import annotations

from typing import Sequence, Union

import fsspec
import numpy as np
from PIL import Image

from transforms.backends import Backend, get_backend
from transforms.decode import bound_size, decode_image, to_rgb


def get_nearest_texts(image: Union[str, bytes, Image.Image], texts: Sequence[str],
                      backend: Union[str, Backend] = "local") -> list[tuple[str, float]]:
    """`texts` ranked by cosine similarity to one image (a path/URL, file bytes or Pillow image), best first."""
    if isinstance(backend, str):
        backend = get_backend(backend)
    if isinstance(image, str):
        with fsspec.open(image, "rb") as f:
            image = f.read()
    if isinstance(image, bytes):
        image = decode_image(image, Image.MAX_IMAGE_PIXELS)[0]
    else:
        image = bound_size(to_rgb(image))
    embedder = backend.load()
    scores = embedder.embed_images([image])[0] @ embedder.embed_texts(list(texts)).T
    order = np.argsort(-scores, kind="stable")
    return [(texts[i], float(scores[i])) for i in order]
