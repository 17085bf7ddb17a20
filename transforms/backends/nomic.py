"""The hosted `nomic` backend: Nomic Embed Vision/Text through the official client, on Beam's RemoteModelHandler."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Optional, Sequence

import fsspec
import numpy as np
import requests
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult, RemoteModelHandler
from PIL import Image

from transforms.backends.base import Backend, Embedder, ImageBatchHandling, l2_normalize, option
from transforms.metrics import BACKEND_NAMESPACE, NAMESPACE
from transforms.records import Embedded, EmbedFailure

KEY_ENV = "NOMIC_API_KEY"
MAX_IMAGES_PER_REQUEST = 512  # the image endpoint's limit; the client splits bigger calls itself


class NomicKeyError(RuntimeError):
    """No usable API key, or the API refused it (HTTP 401/403): every call would fail, so the job stops."""


class ImageRejectedError(ValueError):
    """The API refused a request for its content (HTTP 400/413/415/422)."""


class NomicAPIError(RuntimeError):
    """Any other failed call: 429 or 5xx after the client's own backoff, connection errors, malformed responses."""


class NomicUnavailableError(NomicAPIError):
    """HTTP 429 or 5xx still, after the nomic client's own backoff (5 tries over about 30 s)."""


class EmbeddingCountError(NomicAPIError):
    """The response holds a different number of embeddings than inputs: never guess how they align."""


def read_api_key(key_file: Optional[str]) -> str:
    """The key from `key_file` (a path or any fsspec URL, e.g. a mounted secret) or from NOMIC_API_KEY."""
    if key_file:
        try:
            with fsspec.open(key_file, "rt") as f:
                key = f.read().strip()
        except (OSError, ValueError, ImportError) as e:  # ImportError: the URL's fsspec driver is missing
            raise NomicKeyError(f"cannot read the Nomic API key file {key_file!r} ({type(e).__name__})") from None
    else:
        key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise NomicKeyError(f"no Nomic API key: set {KEY_ENV} or pass --nomic_api_key_file")
    if not key.startswith("nk-"):
        raise NomicKeyError("the Nomic API key does not look like one (API keys start with 'nk-')")
    return key


def _login(key: str) -> None:
    """Gives this process's nomic client `key` in memory, once: no credentials file is written or read anywhere.

    The client otherwise keeps its token in NOMIC_BASE/credentials, a plain file a killed worker would leave
    behind; an AtlasClass whose `credentials` come from memory needs none. ATLAS_API_PATH keeps overriding the
    endpoint, as in the client."""
    import nomic.embed

    client_class = _key_in_memory_client()
    current = nomic.embed.atlas_class
    if not (isinstance(current, client_class) and current.token == key):
        nomic.embed.atlas_class = client_class(key)


@functools.cache
def _key_in_memory_client() -> type:
    """The client class, built on first use so that importing this backend does not import the nomic client."""
    from loguru import logger
    from nomic.dataset import AtlasClass

    class KeyInMemoryClient(AtlasClass):
        """The nomic client with its API key held in memory instead of in a credentials file."""

        def __init__(self, key: str):
            self._credentials = {"token": key, "tenant": "production", "expires": None, "refresh_token": None}
            logger.disable("nomic")  # a refused key is reported once, by NomicBackend.check or the first call
            try:
                super().__init__()
            finally:
                logger.enable("nomic")

        @property
        def credentials(self) -> dict[str, Any]:
            return self._credentials

    return KeyInMemoryClient


def _http_status(error: Exception) -> tuple[Optional[int], str]:
    """(status, body) from the nomic client's `Exception((status, text))`, else (None, '')."""
    detail = error.args[0] if error.args else None
    if isinstance(detail, tuple) and len(detail) == 2 and isinstance(detail[0], int):
        return detail[0], str(detail[1])[:300]
    return None, ""


def _translate(error: Exception) -> Exception:
    status, body = _http_status(error)
    if status in (401, 403):
        return NomicKeyError(f"the Nomic API refused the API key (HTTP {status})")
    if status in (400, 413, 415, 422):
        return ImageRejectedError(f"the Nomic API rejected the request (HTTP {status}): {body}")
    if status == 429 or (status or 0) >= 500:
        return NomicUnavailableError(f"the Nomic API is unavailable (HTTP {status}, after the client's retries): "
                                     f"{body}")
    if status is not None:
        return NomicAPIError(f"the Nomic API failed (HTTP {status}): {body}")
    return NomicAPIError(f"the Nomic API call failed: {type(error).__name__}: {str(error)[:300]}")


class NomicEmbedder(Embedder):
    """Texts through nomic.embed.text, in-memory images through nomic.embed.image; the dimension comes from replies."""

    def __init__(self, key: str, text_model: str, vision_model: str, task_type: str):
        _login(key)
        self.text_model, self.vision_model, self.task_type = text_model, vision_model, task_type
        self.model_id = vision_model
        self.dim: Optional[int] = None  # known after the first response

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import nomic.embed

        response = self._call("text", nomic.embed.text, list(texts), model=self.text_model, task_type=self.task_type)
        return self._vectors(response, len(texts))

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import nomic.embed

        response = self._call("image", nomic.embed.image, images=list(images), model=self.vision_model)
        return self._vectors(response, len(images))

    def _call(self, kind: str, function: Callable[..., dict], *args, **kwargs) -> dict:
        count = len(args[0]) if args else len(kwargs["images"])
        Metrics.counter(BACKEND_NAMESPACE, f"nomic_{kind}_calls").inc()
        Metrics.counter(BACKEND_NAMESPACE, f"nomic_{kind}_inputs").inc(count)
        try:
            response = function(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the client raises bare Exception((status, text)) among others
            raise _translate(e) from None
        for name, value in (response.get("usage") or {}).items():
            if isinstance(value, (int, float)):
                Metrics.counter(BACKEND_NAMESPACE, f"nomic_{kind}_usage_{name}").inc(int(value))
        return response

    def _vectors(self, response: dict, expected: int) -> np.ndarray:
        embeddings = response.get("embeddings")
        if not isinstance(embeddings, list) or len(embeddings) != expected:
            got = len(embeddings) if isinstance(embeddings, list) else "no"
            raise EmbeddingCountError(f"the Nomic API returned {got} embeddings for {expected} inputs")
        vectors = np.asarray(embeddings, dtype=np.float32)
        if vectors.ndim != 2 or (self.dim is not None and vectors.shape[1] != self.dim):
            raise NomicAPIError(f"the Nomic API returned embeddings of shape {vectors.shape}, expected (n, {self.dim})")
        self.dim = vectors.shape[1]
        return l2_normalize(vectors)


def _retriable(error: Exception) -> bool:
    # Connection errors only: the client already backed off from 429 and 5xx, and trying its whole backoff again
    # would keep a job against an API that is down for minutes before it fails.
    return isinstance(error, NomicAPIError) and not isinstance(error, (NomicUnavailableError, EmbeddingCountError))


class NomicModelHandler(ImageBatchHandling, RemoteModelHandler[Image.Image, PredictionResult, NomicEmbedder]):
    """RunInference handler: one client per worker, Beam's retries with backoff and client-side throttling."""

    def __init__(self, backend: "NomicBackend", batch_size: int):
        super().__init__(namespace=NAMESPACE, num_retries=backend.retries, retry_filter=_retriable)
        self._backend = backend
        self._batch_size = min(batch_size, MAX_IMAGES_PER_REQUEST)

    def create_client(self) -> NomicEmbedder:
        return self._backend.load()

    def request(self, batch: Sequence[Image.Image], model: NomicEmbedder,
                inference_args: Optional[dict[str, Any]] = None) -> list[PredictionResult]:
        outcomes = _embed_isolating_rejects(model, list(batch))
        return [PredictionResult(image, outcome if isinstance(outcome, EmbedFailure) else Embedded(outcome),
                                 model.model_id) for image, outcome in zip(batch, outcomes)]


def _embed_isolating_rejects(model: NomicEmbedder, images: list[Image.Image]) -> list:
    """Vectors, or an EmbedFailure for each image the API rejects: a rejected request is split until the
    offending image stands alone, so one bad image never costs its neighbours their labels."""
    try:
        return list(model.embed_images(images))
    except ImageRejectedError as e:
        if len(images) == 1:
            return [EmbedFailure(type(e).__name__, str(e))]
        half = len(images) // 2
        return _embed_isolating_rejects(model, images[:half]) + _embed_isolating_rejects(model, images[half:])


@dataclasses.dataclass(frozen=True)
class NomicBackend(Backend):
    """Nomic Embed Vision v1.5 / Text v1.5 on the hosted API. Holds no secret: workers read the key themselves."""

    api_key_file: Optional[str] = option(None, "file holding the API key: a path or any fsspec URL "
                                               f"(default: the {KEY_ENV} environment variable)",
                                        affects_results=False)
    text_model: str = option("nomic-embed-text-v1.5", "Nomic Embed Text model for the labels")
    vision_model: str = option("nomic-embed-vision-v1.5", "Nomic Embed Vision model for the images")
    # Nomic's guidance for text-to-image retrieval.
    task_type: str = option("search_query", "task type of the label texts",
                            choices=["search_query", "search_document", "classification", "clustering"])
    retries: int = option(3, "times Beam sends a request again after a connection error (429 and 5xx are retried "
                             "by the client itself)", affects_results=False)
    call_timeout_s: int = option(300, "seconds one image request may take: a hung connection fails the job instead "
                                      "of stalling it", affects_results=False)
    name = "nomic"
    logit_scale = 100.0  # CLIP's convention; not calibrated here (the hosted API cannot be reached offline)
    default_batch_size = 256

    embedding_dim = 768  # Nomic Embed Text/Vision v1 and v1.5 at their full dimension, as the API returns them

    @property
    def model_id(self) -> str:
        return self.vision_model

    def check(self, workers_here: bool = True) -> None:
        """Reads the key and asks the API who it belongs to: a refused key stops the job before it starts."""
        import nomic.embed

        key = read_api_key(self.api_key_file)
        try:
            _login(key)  # the process's one login: on DirectRunner the workers in this process reuse it
        except Exception as e:  # noqa: BLE001 - the client raises bare Exceptions for 5xx
            raise NomicAPIError(f"cannot reach the Nomic API ({type(e).__name__})") from None
        client = nomic.embed.atlas_class
        try:
            response = requests.get(f"{client.atlas_api_path}/v1/user", headers=client.header, timeout=30)
        except requests.RequestException as e:
            raise NomicAPIError(f"cannot reach the Nomic API at {client.atlas_api_path} ({type(e).__name__})") from None
        if response.status_code in (401, 403):
            raise NomicKeyError(f"the Nomic API refused the API key (HTTP {response.status_code})")
        if response.status_code != 200:
            raise NomicAPIError(f"the Nomic API answered HTTP {response.status_code} to the key check")

    def _load(self) -> Embedder:
        return NomicEmbedder(read_api_key(self.api_key_file), self.text_model, self.vision_model, self.task_type)

    def model_handler(self, batch_size: int, evidence_size: int = 0) -> NomicModelHandler:
        return NomicModelHandler(self, batch_size)  # the API says nothing about why: evidence stays empty
