"""Ranker: label texts embedded once per job, then every batch of image vectors ranked against them in one product."""
from __future__ import annotations

from typing import NamedTuple, Sequence, Union

import apache_beam as beam
import fsspec
import numpy as np
from apache_beam.metrics import Metrics
from PIL import Image

from transforms.backends import Backend, get_backend
from transforms.decode import bound_size, decode_image, to_rgb
from transforms.metrics import NAMESPACE, ProgressLog, StageMetrics
from transforms.records import ImageInfo


class LabelMatrix(NamedTuple):
    """The label names and their unit vectors, row i for label i."""

    names: list[str]
    vectors: np.ndarray


def build_label_matrix(labels: Sequence[str], backend: Backend) -> LabelMatrix:
    """Embeds the label texts with the backend's text encoder: the zero-shot classifier is just this matrix."""
    Metrics.counter(NAMESPACE, "label_sets_embedded").inc()
    return LabelMatrix(list(labels), backend.load().embed_texts(labels))


class EmbedLabels(beam.PTransform):
    """A one-element PCollection holding the LabelMatrix, computed by one worker, once per job."""

    def __init__(self, labels: Sequence[str], backend: Backend):
        super().__init__()
        self.labels = list(labels)
        self.backend = backend

    def expand(self, pbegin):
        return (
            pbegin
            | "LabelSet" >> beam.Create([self.labels])
            | "Embed" >> beam.Map(build_label_matrix, self.backend)
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class RankLabels(beam.DoFn):
    """A batch of (ImageInfo, vector) -> one output row per image: top-k labels, cosine scores, probabilities."""

    def __init__(self, top_k: int, logit_scale: float, model_id: str):
        self.top_k = top_k
        self.logit_scale = logit_scale
        self.model_id = model_id

    def setup(self):
        self.metrics = StageMetrics("rank")
        self.progress = ProgressLog()

    def process(self, batch: list[tuple[ImageInfo, np.ndarray]], labels: LabelMatrix):
        with self.metrics.timed():
            scores = np.stack([vector for _, vector in batch]) @ labels.vectors.T
            probs = softmax(self.logit_scale * scores)
            top = np.argsort(-scores, axis=1, kind="stable")[:, : self.top_k]
        for (info, _), image_scores, image_probs, order in zip(batch, scores, probs, top):
            yield {
                "uri": info.uri,
                "labels": [labels.names[i] for i in order],
                "scores": image_scores[order].tolist(),
                "probs": image_probs[order].tolist(),
                "model": self.model_id,
                "width": info.width,
                "height": info.height,
                "sha256": info.sha256,
            }
        self.metrics.passed.inc(len(batch))
        self.progress.add(len(batch))


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
