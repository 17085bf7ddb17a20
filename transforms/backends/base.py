"""The one interface every embedding backend implements, and the single place vectors are normalized."""
from __future__ import annotations

import abc
import argparse
import dataclasses
import threading
from typing import Any, Callable, ClassVar, Iterable, Optional, Sequence, Union

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from PIL import Image

from transforms.label_sets import prompt_texts
from transforms.metrics import NAMESPACE
from transforms.records import Embedded

# What an image model reads of one image, by input name (pixel_values; a NaFlex processor's mask and patch grid too),
# each array of the same shape for every image: a batch is these stacked name by name.
ModelInputs = dict[str, np.ndarray]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as float32; the only normalization in the project, so cosine = dot product."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def stack_inputs(inputs: Sequence[ModelInputs]) -> ModelInputs:
    """One batch of model inputs from each image's own."""
    return {name: np.stack([one[name] for one in inputs]) for name in inputs[0]}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by each row's maximum so large logits cannot overflow."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def option(default: Any, help: str, affects_results: bool = True, research: bool = False, **argparse_kwargs) -> Any:
    """A backend setting the command line offers as --BACKEND_SETTING (a dataclass field with its help text).
    `affects_results=False` marks one that cannot change an output row (threads, where a key is read from): a run
    may then reuse the rows of a run that had another value (--skip_existing). `research=True` marks a setting kept
    for the benchmarks that chose the defaults: --help_all lists it, --help does not."""
    return dataclasses.field(default=default, metadata={"help": help, "affects_results": affects_results,
                                                        "research": research, **argparse_kwargs})


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def optional_float(text: str) -> Optional[float]:
    """A number, or `none` to switch a setting off."""
    return None if text.lower() == "none" else float(text)


class Embedder(abc.ABC):
    """A loaded model that maps texts and decoded RGB images into one space of unit vectors."""

    model_id: str
    dim: int
    # Set where the model learned them (CLIP's logit scale, SigLIP's scale and bias): they replace the Backend's
    # logit_scale, and a bias makes label probabilities independent sigmoids (transforms/rank.py).
    logit_scale: Optional[float] = None
    logit_bias: Optional[float] = None

    @abc.abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalized."""

    @abc.abstractmethod
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(len(images), dim) float32, L2-normalized, in the same space as embed_texts."""

    def embed_phrases(self, phrases: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """One unit vector per label phrase: the normalized mean of the phrase in every prompt template
        (open_clip's zero-shot classifier). A backend may know more about a phrase than its text."""
        vectors = self.embed_texts(prompt_texts(phrases, templates))
        return l2_normalize(vectors.reshape(len(phrases), len(templates), -1).mean(axis=1))

    def background(self, label_phrases: Sequence[Sequence[str]], label_vectors: np.ndarray) -> Optional[np.ndarray]:
        """Unit vectors of concepts that none of the labels (given as their phrases and vectors) covers: what
        "none of these" looks like for this label set. None where the backend knows no such concepts."""
        return None

    def concept_labels(self, label_phrases: Sequence[Sequence[str]]) -> dict[str, int]:
        """For the evidence: the label (its index) each of the backend's concepts (the names in its evidence)
        belongs to; {} where the backend has none."""
        return {}

    def unreadable_words(self, text: str) -> list[str]:
        """The words of `text` the text model cannot read (its tokenizer makes them unknown tokens): labels made of
        such words all get the same vector. A backend that cannot tell returns []."""
        return []

    def embed_inputs(self, inputs: ModelInputs) -> np.ndarray:
        """(n, dim) unit vectors for a batch of what the Backend's image_preprocessor made of n images (stack_inputs);
        only backends that have a preprocessor implement it."""
        raise NotImplementedError(f"{type(self).__name__} reads decoded images (embed_images)")

    def prepare_images(self) -> None:
        """Loads whatever embed_images needs beyond the text side, so that a model that cannot load fails the job
        when a worker starts, not as one error row per image. Relabeling and search never call it."""

    def embed_images_explained(self, images: Sequence[Image.Image], evidence_size: int = 0) -> list[Embedded]:
        """embed_images as the pipeline keeps them: each vector with up to `evidence_size` (name, weight) pairs that
        built it and the strength of that evidence (records.Embedded). A backend with nothing to show gives no
        pairs and strength 1: its vector is all it says."""
        return [Embedded(vector) for vector in self.embed_images(images)]


class ImageBatchHandling:
    """What every backend's RunInference handler shares: fixed-size batches, pixel-count sizing, one namespace."""

    _batch_size: int

    def get_num_bytes(self, batch: Sequence[Union[Image.Image, ModelInputs]]) -> int:
        # The default pickles the whole batch just to measure it; pixels are what matter.
        return sum(sum(array.nbytes for array in one.values()) if isinstance(one, dict) else
                   one.width * one.height * len(one.getbands()) for one in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}


class Backend(abc.ABC):
    """A picklable description of a backend: cheap to ship to workers, loads its Embedder there, once per process."""

    name: ClassVar[str]
    # Cosine similarities are multiplied by this before the softmax over labels (a CLIP-style logit scale).
    logit_scale: ClassVar[float]
    # With a background (Embedder.background), a "none of these" competitor takes part in that softmax, scoring
    # an image's best background cosine less this margin; None leaves it out.
    none_margin: ClassVar[Optional[float]] = None
    # Seconds one model call may take before the job fails (a hung connection); None waits forever.
    call_timeout_s: ClassVar[Optional[int]] = None
    # Images per model call when the user does not choose.
    default_batch_size: ClassVar[int] = 32
    # The shorter side, in pixels, the image model reads: the decoder never makes an image smaller than this.
    image_side: ClassVar[int] = 256
    # One copy of the model per machine, shared by its SDK processes (a GPU's memory holds one), instead of one per
    # process.
    share_model_across_processes: ClassVar[bool] = False
    # Prompt templates (labels/templates/NAME.txt) used when the user does not choose.
    default_templates: ClassVar[str] = "photo"

    @property
    @abc.abstractmethod
    def model_id(self) -> str:
        """What the output's `model` column says; known without loading anything."""

    @property
    @abc.abstractmethod
    def embedding_dim(self) -> int:
        """The length of its vectors, known without loading anything (the embeddings table's schema needs it)."""

    @abc.abstractmethod
    def _load(self) -> Embedder:
        """Builds the Embedder; called at most once per process and backend configuration."""

    def model_handler(self, batch_size: int, evidence_size: int = 0) -> ModelHandler:
        """The RunInference handler that embeds batches of decoded images with this backend: by default in this
        process, with the loaded Embedder. Remote backends return a RemoteModelHandler."""
        return EmbedderModelHandler(self, batch_size, evidence_size)

    def image_preprocessor(self) -> Optional[Callable[[Image.Image], ModelInputs]]:
        """A picklable function from one decoded image to what the image model reads of it, or None where the
        Embedder reads decoded images (embed_images). The embed stage runs it in each worker process before the
        images are batched, so that a model shared by a machine's processes (a GPU) spends its time on forward
        passes, not on resizing, while the other processes prepare the next batches."""
        return None

    def check(self, workers_here: bool = True) -> None:
        """Raises a readable error if this backend cannot run (missing weights, key...) before a job starts.
        `workers_here`: the job runs on this machine (DirectRunner), so its hardware can be checked too."""

    def warm_up(self) -> None:
        """Starts loading what embedding images needs, in the background: the classify job calls it when its workers
        are this process, so that the model loads while Beam builds and starts the pipeline. By default nothing."""

    @classmethod
    def _options(cls) -> list[dataclasses.Field]:
        return [field for field in dataclasses.fields(cls) if "help" in field.metadata]

    @classmethod
    def add_options(cls, parser: argparse.ArgumentParser) -> list[argparse.Action]:
        """Declares this backend's settings (fields made with `option`) as --NAME_SETTING in their own group;
        returns those of research settings, whose help only --help_all shows."""
        research = []
        group = parser.add_argument_group(f"{cls.name} backend", (cls.__doc__ or "").splitlines()[0])
        for field in cls._options():
            kwargs = {k: v for k, v in field.metadata.items() if k not in ("affects_results", "research")}
            kwargs.setdefault("type", _parse_bool if isinstance(field.default, bool) else
                              type(field.default) if field.default is not None else str)
            if field.default is not None:
                kwargs["help"] += f" (default: {field.default})"
            action = group.add_argument(f"--{cls.name}_{field.name}", default=field.default, **kwargs)
            if field.metadata["research"]:
                action.research_help, action.help = action.help, argparse.SUPPRESS
                research.append(action)
        return research

    @classmethod
    def from_options(cls, args: argparse.Namespace) -> "Backend":
        """This backend configured from the parsed command line."""
        return cls(**{field.name: getattr(args, f"{cls.name}_{field.name}") for field in cls._options()})

    def result_settings(self) -> dict[str, Any]:
        """The settings an output row depends on, by name: two runs with equal ones label an image alike."""
        return {field.name: getattr(self, field.name) for field in self._options()
                if field.metadata["affects_results"]}

    def load(self) -> Embedder:
        """The process-wide Embedder for this configuration: labels and images share one loaded model."""
        key = (type(self), self._cache_key())
        with _LOAD_LOCK:
            if key not in _LOADED:
                _LOADED[key] = self._load()
            return _LOADED[key]

    def unload(self) -> None:
        """Drops this process's Embedder (the next load() builds another): where one copy of the model per machine
        embeds the images, the copy that embedded the label set must not stay beside it."""
        with _LOAD_LOCK:
            _LOADED.pop((type(self), self._cache_key()), None)

    def _cache_key(self) -> Any:
        return repr(self)


_LOAD_LOCK = threading.RLock()  # reentrant: a backend may build on another one
_LOADED: dict[Any, Embedder] = {}


class EmbedderModelHandler(ImageBatchHandling, ModelHandler[Image.Image, PredictionResult, Embedder]):
    """RunInference handler for in-process backends: load the backend once per worker, embed fixed-size batches."""

    def __init__(self, backend: Backend, batch_size: int, evidence_size: int = 0):
        super().__init__()
        self._backend = backend
        self._batch_size = batch_size
        self._evidence_size = evidence_size
        # Here, not asked of the model: a model shared across processes is a proxy that passes on method calls only.
        self._model_id = backend.model_id

    def share_model_across_processes(self) -> bool:
        return self._backend.share_model_across_processes

    def load_model(self) -> Embedder:
        embedder = self._backend.load()
        embedder.prepare_images()
        return embedder

    def run_inference(self, batch: Sequence[Union[Image.Image, ModelInputs]], model: Embedder,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        if isinstance(batch[0], dict):  # already preprocessed (Backend.image_preprocessor)
            embedded = [Embedded(vector) for vector in model.embed_inputs(stack_inputs(batch))]
        else:
            embedded = model.embed_images_explained(batch, self._evidence_size)
        # The input is not echoed back: nothing downstream reads it, and it may be megabytes of pixels.
        return [PredictionResult(None, one, self._model_id) for one in embedded]
