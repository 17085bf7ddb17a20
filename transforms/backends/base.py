"""The one interface every embedding backend implements, and the single place vectors are normalized."""
from __future__ import annotations

import abc
import threading
from typing import Any, ClassVar, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler
from PIL import Image

from transforms.metrics import NAMESPACE


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as float32; the only normalization in the project, so cosine = dot product."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class Embedder(abc.ABC):
    """A loaded model that maps texts and decoded RGB images into one space of unit vectors."""

    model_id: str
    dim: int

    @abc.abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalized."""

    @abc.abstractmethod
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(len(images), dim) float32, L2-normalized, in the same space as embed_texts."""


class ImageBatchHandling:
    """What every backend's RunInference handler shares: fixed-size batches, pixel-count sizing, one namespace."""

    _batch_size: int

    def get_num_bytes(self, batch: Sequence[Image.Image]) -> int:
        # The default pickles the whole batch just to measure it; pixels are what matter.
        return sum(image.width * image.height * len(image.getbands()) for image in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}


class Backend(abc.ABC):
    """A picklable description of a backend: cheap to ship to workers, loads its Embedder there, once per process."""

    name: ClassVar[str]
    # Cosine similarities are multiplied by this before the softmax over labels (a CLIP-style logit scale).
    logit_scale: ClassVar[float]
    # Errors that must stop the job instead of sending a batch to the errors output (e.g. a refused API key).
    fatal_errors: ClassVar[tuple[type[Exception], ...]] = ()
    # Seconds one model call may take before its batch goes to the errors output; None waits forever.
    call_timeout_s: ClassVar[Optional[int]] = None
    # Images per model call when the user does not choose.
    default_batch_size: ClassVar[int] = 32
    # Prompt templates (labels/templates/NAME.txt) used when the user does not choose.
    default_templates: ClassVar[str] = "photo"

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """What the output's `model` column says; known without loading anything."""

    @abc.abstractmethod
    def _load(self) -> Embedder:
        """Builds the Embedder; called at most once per process and backend configuration."""

    @abc.abstractmethod
    def model_handler(self, batch_size: int) -> ModelHandler:
        """The RunInference handler that embeds batches of decoded images with this backend."""

    def check(self) -> None:
        """Raises a readable error if this backend cannot run (missing weights, key...) before a job starts."""

    def load(self) -> Embedder:
        """The process-wide Embedder for this configuration: labels and images share one loaded model."""
        key = (type(self), self._cache_key())
        with _LOAD_LOCK:
            if key not in _LOADED:
                _LOADED[key] = self._load()
            return _LOADED[key]

    def _cache_key(self) -> Any:
        return repr(self)


_LOAD_LOCK = threading.RLock()  # reentrant: a backend may build on another one
_LOADED: dict[Any, Embedder] = {}
