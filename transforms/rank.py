"""Ranker: label texts embedded once per job, then every batch of image vectors ranked against them in one product."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms.backends import Backend, Embedder, l2_normalize
from transforms.backends.base import softmax
from transforms.label_sets import UNKNOWN
from transforms.metrics import NAMESPACE, ProgressLog, StageMetrics
from transforms.records import Embedded, ImageInfo, ResultRow, as_dict

_LOG = logging.getLogger("zero_shot")
# Prompts (phrase x template) per call to the text model: its activations, bounded by this and not by the label set
# or the number of templates, are what a call holds (CLIP ViT-B/32's text tower: about 1 GB at 512 prompts).
PROMPTS_PER_CALL = 512
PROGRESS_EVERY_S = 5.0


class LabelMatrix(NamedTuple):
    """The label names and their unit vectors, row i for label i, and the background: unit vectors of concepts
    that no label covers (None where the backend has none). An image closer to the background than to every
    label fits none of them."""

    names: list[str]
    vectors: np.ndarray
    background: Optional[np.ndarray] = None
    # What the model learned, where it did (Embedder.logit_scale / logit_bias): they replace the backend's scale,
    # and a bias makes each label's probability a sigmoid of its own logit (SigLIP) instead of a softmax.
    logit_scale: Optional[float] = None
    logit_bias: Optional[float] = None
    # The label each of the backend's concepts belongs to (an ImageNet class -> the label whose WordNet concept
    # covers it), for the evidence column; empty where the backend has no such concepts.
    class_labels: Mapping[str, str] = {}
    # Where examples taught the labels (transforms/examples.py): the map of the logits fitted to them.
    calibration: Optional["Calibration"] = None


class Calibration(NamedTuple):
    """A map of the logits, fitted to confirmed images (transforms.examples.fit_calibration): every logit x
    `temperature`, and `bias` added to the logit of "none of these" (a softmax with that competitor) or of every
    label (SigLIP's sigmoids). No bias and a temperature of 1 change nothing; the ranking never changes."""

    temperature: float = 1.0
    bias: float = 0.0


def build_label_matrix(label_phrases: Mapping[str, Sequence[str]], templates: Sequence[str],
                       backend: Backend) -> LabelMatrix:
    """The label set embedded by the backend's process-wide model (once per job, in EmbedLabels). Where the images'
    model is one copy per machine (a GPU's), this process's copy is dropped afterwards."""
    Metrics.counter(NAMESPACE, "label_sets_embedded").inc()
    try:
        return embed_label_set(label_phrases, templates, backend.load())
    finally:
        if backend.share_model_across_processes:
            backend.unload()


def embed_label_set(label_phrases: Mapping[str, Sequence[str]], templates: Sequence[str],
                    embedder: Embedder) -> LabelMatrix:
    """The zero-shot classifier: each label's vector is the normalized mean of its phrases' vectors, every phrase
    embedded in all templates, PROMPTS_PER_CALL prompts per call to the embedder."""
    phrases = [list(label_phrases[label]) for label in label_phrases]
    warn_unreadable(label_phrases, embedder)
    vectors = embed_phrases_in_batches([phrase for group in phrases for phrase in group], templates, embedder)
    owner = np.repeat(np.arange(len(phrases)), [len(group) for group in phrases])
    sums = np.zeros((len(phrases), vectors.shape[1]), dtype=np.float32)
    np.add.at(sums, owner, vectors)
    label_vectors = l2_normalize(sums)  # direction of the sum = direction of the mean
    names = list(label_phrases)
    class_labels = {concept: names[i] for concept, i in embedder.concept_labels(phrases).items()}
    return LabelMatrix(names, label_vectors, embedder.background(phrases, label_vectors), embedder.logit_scale,
                       embedder.logit_bias, class_labels)


def embed_phrases_in_batches(phrases: Sequence[str], templates: Sequence[str], embedder: Embedder) -> np.ndarray:
    """embedder.embed_phrases over as many phrases at a time as make PROMPTS_PER_CALL prompts, so that memory stays
    bounded whatever the size of the label set and of the template set, with a progress line every
    PROGRESS_EVERY_S seconds (20,000 labels take minutes)."""
    parts, last = [], time.monotonic()
    per_call = max(1, PROMPTS_PER_CALL // max(1, len(templates)))
    for start in range(0, len(phrases), per_call):
        parts.append(embedder.embed_phrases(phrases[start:start + per_call], templates))
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            _LOG.info("embedded %d of %d label phrases (x %d templates)", start + len(parts[-1]), len(phrases),
                      len(templates))
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def warn_unreadable(label_phrases: Mapping[str, Sequence[str]], embedder: Embedder) -> None:
    """Logs a warning naming each label whose phrases hold words the text model cannot read: it would score like
    every other label made of such words (MiniLM reads 猫 and 🍕 as the same unknown token)."""
    for label, phrases in label_phrases.items():
        if words := [word for phrase in phrases for word in embedder.unreadable_words(phrase)]:
            _LOG.warning("label %r: the text model of %s cannot read %s (unknown tokens to it); such labels score "
                         "alike whatever they mean: use words it knows, or another backend", label,
                         embedder.model_id, ", ".join(repr(word) for word in dict.fromkeys(words)))


class EmbedLabels(beam.PTransform):
    """A one-element PCollection holding the LabelMatrix, computed by one worker, once per job."""

    def __init__(self, label_phrases: Mapping[str, Sequence[str]], templates: Sequence[str], backend: Backend):
        super().__init__()
        self.label_phrases = {label: list(phrases) for label, phrases in label_phrases.items()}
        self.templates = list(templates)
        self.backend = backend

    def expand(self, pbegin):
        return (
            pbegin
            | "Once" >> beam.Impulse()  # one element; Create would add two more steps to every job
            | "Embed" >> beam.Map(lambda _, *args: build_label_matrix(*args), self.label_phrases, self.templates,
                                  self.backend)
        )


def none_scores(image_vectors: np.ndarray, labels: LabelMatrix, margin: Optional[float]) -> Optional[np.ndarray]:
    """Per image, the cosine that "none of these" scores: its best background concept's, less `margin`.
    None (no such competitor) without a margin or a background."""
    if margin is None or labels.background is None or not len(labels.background):
        return None
    return (image_vectors @ labels.background.T).max(axis=1) - margin


def label_probabilities(scores: np.ndarray, logit_scale: float, none: Optional[np.ndarray] = None,
                        logit_bias: Optional[float] = None, calibration: Optional[Calibration] = None,
                        strengths: Optional[np.ndarray] = None) -> np.ndarray:
    """Softmax of logit_scale x cosine over the labels and, given each image's `none` cosine, a "none of these"
    competitor: an image that no label fits then gets low probabilities for all of them. The ranking never
    changes; with the competitor, an image's probabilities add up to less than 1. With a `logit_bias` (SigLIP), each
    label's own sigmoid(logit_scale x cosine + bias) instead, as the model was trained: no label competes. Each
    image's logits are scaled by its evidence strength (`strengths`, Embedded.strength; 1 where not given): an image
    the model saw little in gets flat probabilities. A `calibration` fitted to examples multiplies every logit by
    its temperature and adds its bias to the competitor's (to every label's, for sigmoids)."""
    temperature, bias = calibration or Calibration()
    scale = temperature * logit_scale * (1.0 if strengths is None else np.asarray(strengths, np.float64)[:, None])
    logits = scale * np.asarray(scores, dtype=np.float64)
    if logit_bias is not None:
        return (1.0 / (1.0 + np.exp(-(logits + temperature * logit_bias + bias)))).astype(np.float32)
    if none is not None:
        logits = np.concatenate([logits, scale * np.asarray(none, dtype=np.float64)[:, None] + bias], axis=1)
    probs = softmax(logits)
    return (probs[:, :-1] if none is not None else probs).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Decision:
    """Which labels an image gets: the `top_k` best, `unknown` when the best probability is below `min_prob`,
    or, with `multi_label_threshold`, every label whose probability reaches it (best first). The one place these
    settings are checked, for the library and every job."""

    top_k: int = 5
    min_prob: float = 0.0
    multi_label_threshold: Optional[float] = None

    def __post_init__(self):
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if not 0.0 <= self.min_prob <= 1.0:
            raise ValueError(f"min_prob must be between 0 and 1, got {self.min_prob}")
        if self.multi_label_threshold is not None and not 0.0 < self.multi_label_threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.multi_label_threshold}")

    def select(self, ranked: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Indices of the labels to report, best first; empty means `unknown`."""
        if self.multi_label_threshold is not None:
            return ranked[probs[ranked] >= self.multi_label_threshold]
        return ranked[:self.top_k] if probs[ranked[0]] >= self.min_prob else ranked[:0]


class RankLabels(beam.DoFn):
    """A batch of (ImageInfo, Embedded) -> one output row per image: chosen labels, cosine scores, probabilities."""

    def __init__(self, logit_scale: float, model_id: str, decision: Decision = Decision(),
                 none_margin: Optional[float] = None):
        self.logit_scale = logit_scale
        self.none_margin = none_margin
        self.model_id = model_id
        self.decision = decision

    def setup(self):
        self.metrics = StageMetrics("rank")
        self.progress = ProgressLog()

    def process(self, batch: list[tuple[ImageInfo, Embedded]], labels: LabelMatrix, total_inputs: Optional[int] = None):
        with self.metrics.timed():
            rows = rank_rows(batch, labels, self.logit_scale, self.model_id, self.decision, self.none_margin)
        yield from rows
        self.metrics.passed.inc(len(batch))
        self.progress.add(len(batch), total_inputs)


class RankVectors(beam.PTransform):
    """(ImageInfo, Embedded) -> result rows: the vectors in batches of `batch_size`, each batch ranked against the
    label matrix (a one-element PCollection, read as a side input) in one product. `total_inputs`, a one-element
    count of the job's inputs, puts the total in the progress lines. Classify and relabel both rank here."""

    def __init__(self, label_matrix, backend: Backend, decision: Decision, batch_size: int, total_inputs=None):
        super().__init__()
        self.label_matrix, self.backend = label_matrix, backend
        self.decision, self.batch_size, self.total_inputs = decision, batch_size, total_inputs

    def expand(self, vectors):
        side_inputs = {"labels": beam.pvalue.AsSingleton(self.label_matrix)}
        if self.total_inputs is not None:
            side_inputs["total_inputs"] = beam.pvalue.AsSingleton(self.total_inputs, default_value=None)
        return (vectors
                | "Batch" >> beam.BatchElements(min_batch_size=self.batch_size, max_batch_size=self.batch_size)
                | "Rank" >> beam.ParDo(RankLabels(self.backend.logit_scale, self.backend.model_id, self.decision,
                                                  self.backend.none_margin), **side_inputs))


def rank_rows(batch: Sequence[tuple[ImageInfo, Embedded]], labels: LabelMatrix, logit_scale: float, model_id: str,
              decision: Decision = Decision(), none_margin: Optional[float] = None) -> list[dict]:
    """One result row per image of the batch, its vectors ranked against the labels in one product: the ranking
    of every job (classify, relabel) and of the library's `relabel`."""
    vectors = np.stack([embedded.vector for _, embedded in batch])
    scores = vectors @ labels.vectors.T
    probs = label_probabilities(scores, labels.logit_scale or logit_scale, none_scores(vectors, labels, none_margin),
                                labels.logit_bias, labels.calibration, [embedded.strength for _, embedded in batch])
    ranked = np.argsort(-scores, axis=1, kind="stable")
    rows = []
    for (info, embedded), image_scores, image_probs, image_ranked in zip(batch, scores, probs, ranked):
        order = decision.select(image_ranked, image_probs)
        rows.append(as_dict(ResultRow(
            uri=info.uri,
            labels=[labels.names[i] for i in order] if len(order) else [UNKNOWN],
            scores=image_scores[order].tolist(),
            probs=image_probs[order].tolist(),
            model=model_id,
            width=info.width,
            height=info.height,
            sha256=info.sha256,
            evidence=[{"class": name, "prob": prob, "label": labels.class_labels.get(name)}
                      for name, prob in embedded.evidence],
        )))
    return rows
