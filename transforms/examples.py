"""Teacher: a few confirmed images per label move its vector toward them and calibrate the label probabilities."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
from typing import Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import fsspec
import numpy as np

from transforms.backends import Backend, l2_normalize
from transforms.decode import ReadLimits, decode_image
from transforms.embed import embed_in_hand
from transforms.faults import StoreError, one_line
from transforms.rank import Calibration, EmbedLabels, LabelMatrix, label_probabilities, none_scores
from transforms.read import read_file
from transforms.records import EmbedFailure
from transforms.write import from_spreadsheet_cell

_LOG = logging.getLogger("zero_shot")
# How far the examples' mean image vector pulls its label's text vector, and how far the probability map fitted to
# the examples may stray from no change: chosen leave-one-source-out by benchmarks/examples.py (docs/ACCURACY.md,
# "Teaching by example").
DEFAULT_WEIGHT = 0.5
CALIBRATION_PRIOR_SD = 2.0
# Fewer examples than this (of labels with two or more), or of fewer labels, fit no map: a handful of points says
# more about the draw than about the images (one example lifted a mean top probability from 0.14 to 0.50).
MIN_CALIBRATION_EXAMPLES = 10
MIN_CALIBRATION_LABELS = 2


class ExamplesError(ValueError):
    """An examples file that cannot teach: unreadable, empty, a label outside the set, a URI given two labels."""


class Example(NamedTuple):
    """One confirmed image: its uri, and the label a person gave it."""

    uri: str
    label: str


def read_uri_labels(path: str, flag: str) -> list[tuple[str, str]]:
    """(uri, label) of every row of a CSV with columns uri,label (others are ignored), as written; ExamplesError
    when it cannot be read or has no such columns."""
    try:
        with fsspec.open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")  # a spreadsheet's CSV may start with a byte order mark
    except (OSError, UnicodeDecodeError, ValueError, ImportError) as e:  # ImportError: the URL's driver is missing
        raise ExamplesError(f"cannot read {flag} {path!r} ({one_line(e)})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not {"uri", "label"} <= set(reader.fieldnames or ()):
        raise ExamplesError(f"{flag} {path!r} needs a header with columns uri,label")
    return [(from_spreadsheet_cell((row["uri"] or "").strip()), from_spreadsheet_cell((row["label"] or "").strip()))
            for row in reader]


def read_examples(path: str, labels: Sequence[str]) -> list[Example]:
    """The confirmed images of an --examples CSV (uri,label; rows whose label is blank are not confirmed and are
    skipped, so a review.csv partly filled in is an examples file), each once; ExamplesError for a label outside
    `labels`, a URI given two labels, or no confirmed row at all."""
    by_uri: dict[str, str] = {}
    labels = set(labels)
    for uri, label in read_uri_labels(path, "--examples"):
        if not label:
            continue
        if not uri:
            raise ExamplesError(f"--examples {path!r} has a row labeled {label!r} with no uri")
        if label not in labels:
            raise ExamplesError(f"--examples {path!r}: label {label!r} (for {uri}) is not in the label set")
        if by_uri.setdefault(uri, label) != label:
            raise ExamplesError(f"--examples {path!r} gives {uri} two labels: {by_uri[uri]!r} and {label!r}")
    if not by_uri:
        raise ExamplesError(f"--examples {path!r} has no row with both a uri and a label")
    return [Example(uri, label) for uri, label in by_uri.items()]


@dataclasses.dataclass(frozen=True, eq=False)
class Examples:
    """Confirmed images: each one's label, unit image vector (row i of `vectors`) and evidence strength
    (Embedded.strength; all 1 where not given), and `weight`, how far their mean pulls their label's text vector."""

    labels: tuple[str, ...]
    vectors: np.ndarray
    weight: float = DEFAULT_WEIGHT
    digest: str = ""  # what identifies them among a run's settings (examples_digest)
    strengths: Optional[np.ndarray] = None

    def __post_init__(self):
        if len(self.labels) != len(self.vectors):
            raise ValueError(f"{len(self.labels)} example labels for {len(self.vectors)} vectors")
        if self.strengths is None:
            object.__setattr__(self, "strengths", np.ones(len(self.labels)))
        if not self.weight >= 0:
            raise ValueError(f"examples_weight must be at least 0, got {self.weight}")


def embed_examples(examples: Sequence[Example], backend: Backend, known: Optional[dict[str, tuple]] = None,
                   weight: float = DEFAULT_WEIGHT, limits: ReadLimits = ReadLimits()) -> Examples:
    """The examples' image vectors: those in `known` (uri -> (sha256, vector, strength), a kept run's) as they are,
    the others read, decoded and embedded here by the job's own stages' code (read_file, decode_image,
    embed_in_hand), with the same bounds and model. Before the job starts, so that an example that cannot be read,
    decoded or embedded stops it with one line (ExamplesError); a store that fails stops it too (StoreError)."""
    known = known or {}
    sha256_of, vectors, strengths, images, missing = {}, {}, {}, [], []
    for uri, _ in examples:
        if uri in known:
            sha256_of[uri], vectors[uri], strengths[uri] = known[uri]
            continue
        try:
            data = read_file(uri, limits.max_bytes)
            if not data:
                raise ValueError("file is empty")
            image = decode_image(data, limits.max_pixels, limits.max_side, backend.image_side)[0]
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the file's fault, the examples cannot teach as given
            raise ExamplesError(f"--examples: cannot use {uri} ({one_line(e)})") from None
        sha256_of[uri] = hashlib.sha256(data).hexdigest()
        images.append(image)
        missing.append(uri)
    for uri, embedded in zip(missing, embed_in_hand(backend, images)):
        if isinstance(embedded, EmbedFailure):
            raise ExamplesError(f"--examples: cannot use {uri} ({embedded.error}: {embedded.message})")
        vectors[uri], strengths[uri] = embedded.vector, embedded.strength
    return Examples(tuple(label for _, label in examples), np.stack([vectors[uri] for uri, _ in examples]),
                    weight, examples_digest(examples, sha256_of), np.array([strengths[uri] for uri, _ in examples]))


def examples_digest(examples: Sequence[Example], sha256_of: dict[str, str]) -> str:
    """sha256 of the examples as a run depends on them: each uri, its label and its image's sha256, in uri order.
    Another examples file with the same rows digests the same; an example image rewritten since does not."""
    lines = "".join(f"{uri}\t{label}\t{sha256_of[uri]}\n" for uri, label in sorted(examples))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def teach(labels: LabelMatrix, examples: Examples, logit_scale: float, none_margin: Optional[float],
          prior_sd: Optional[float] = CALIBRATION_PRIOR_SD) -> LabelMatrix:
    """The label matrix taught by examples: each label with examples gets its text vector + weight x the mean of
    its examples' vectors, normalized. Every other concept the labels compete with (a label without examples, the
    "none of these" background) gets weight x the mean of all the examples: what the user's images share moves every
    competitor alike, so that one or two examples of one label lift no probability (they lifted that label's over
    every image, and every label's over "none of these"). Then a map of the logits (a temperature, and a bias of
    "none of these": fit_calibration) is fitted to the examples, each scored by the labels as they would be without
    it (leave-one-out), so that on the user's kind of image the probabilities mean what they say; too few examples
    (MIN_CALIBRATION_EXAMPLES, MIN_CALIBRATION_LABELS) fit no map.

    `logit_scale` and `none_margin` are the backend's, as the ranking uses them (rank_rows). `prior_sd`: how far the
    map may stray from no change; None fits none (for the benchmark that chose CALIBRATION_PRIOR_SD)."""
    index = {name: i for i, name in enumerate(labels.names)}
    truth = np.array([index[label] for label in examples.labels])
    vectors = np.asarray(examples.vectors, dtype=np.float32)
    counts = np.bincount(truth, minlength=len(labels.names)).astype(np.float32)
    sums = np.zeros_like(labels.vectors)
    np.add.at(sums, truth, vectors)
    shared = vectors.mean(axis=0)
    pulls = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], shared)
    background = labels.background
    taught = labels._replace(
        vectors=l2_normalize(labels.vectors + examples.weight * pulls),
        background=None if background is None else l2_normalize(background + examples.weight * shared))
    summary = f"taught {int((counts > 0).sum())} labels by {len(truth)} examples (weight {examples.weight:g})"
    if prior_sd is None:
        return taught
    # Left out, an example is scored as new images will be only where its label keeps another example to teach it:
    # the only example of a label leaves it its bare text, and the map would learn how text alone scores.
    fitted = counts[truth] >= 2
    if fitted.sum() < MIN_CALIBRATION_EXAMPLES or len(set(truth[fitted])) < MIN_CALIBRATION_LABELS:
        _LOG.info("%s; too few to fit the probabilities to (that needs %d examples of labels with two or more, of at "
                  "least %d labels): the probabilities are the model's own", summary, MIN_CALIBRATION_EXAMPLES,
                  MIN_CALIBRATION_LABELS)
        return taught
    truth, vectors = truth[fitted], vectors[fitted]
    scores = vectors @ taught.vectors.T
    scores[np.arange(len(truth)), truth] = left_out_scores(labels.vectors, vectors, truth, sums, counts,
                                                           examples.weight)
    calibration = fit_calibration(scores, none_scores(vectors, taught, none_margin), labels.logit_scale or logit_scale,
                                  labels.logit_bias, truth, prior_sd, examples.strengths[fitted])
    _LOG.info("%s; the probabilities fitted to the %d examples of labels with two or more, each scored without "
              "itself: logits x %.2f, \"none of these\" %+.2f", summary, len(truth), *calibration)
    return taught._replace(calibration=calibration)


class TeachLabels(beam.PTransform):
    """The one-element label matrix (rank.EmbedLabels) -> the same labels taught by `examples` (teach)."""

    def __init__(self, examples: Examples, backend: Backend):
        super().__init__()
        self.examples, self.backend = examples, backend

    def expand(self, label_matrix):
        return label_matrix | "Teach" >> beam.Map(teach, self.examples, self.backend.logit_scale,
                                                  self.backend.none_margin)


def label_matrix(pipeline: beam.Pipeline, phrases: Mapping[str, Sequence[str]], templates: Sequence[str],
                 backend: Backend, examples: Optional[Examples] = None) -> beam.PCollection:
    """The label set embedded once (EmbedLabels) and, given examples, taught by them (TeachLabels): the one-element
    side input every ranking of a job reads."""
    labels = pipeline | "EmbedLabels" >> EmbedLabels(phrases, templates, backend)
    return labels if examples is None else labels | "TeachLabels" >> TeachLabels(examples, backend)


def left_out_scores(text: np.ndarray, vectors: np.ndarray, truth: np.ndarray, sums: np.ndarray,
                    counts: np.ndarray, weight: float) -> np.ndarray:
    """Each example's cosine with its own label taught by the label's other examples (its text vector alone where
    it is the only one)."""
    others = counts[truth] - 1
    rest = (sums[truth] - vectors) / np.maximum(others, 1)[:, None]
    own = l2_normalize(text[truth] + weight * np.where(others[:, None] > 0, rest, 0.0))
    return np.einsum("nd,nd->n", vectors, own)


def fit_calibration(scores: np.ndarray, none: Optional[np.ndarray], logit_scale: float,
                    logit_bias: Optional[float], truth: np.ndarray, prior_sd: float = CALIBRATION_PRIOR_SD,
                    strengths: Optional[np.ndarray] = None) -> Calibration:
    """The map of the logits (rank.Calibration: a temperature, and a bias of "none of these") under which the
    examples' cosines (`scores`, one row per example, a column per label; `none`: each one's "none of these" cosine,
    or None; `strengths`: each one's evidence strength) best predict their labels (`truth`), ranked as
    label_probabilities ranks. Multiclass log-loss for a
    softmax, so that the probability a row ranks first, the one users sort and filter by, means what it says and a
    row still sums to at most 1; for sigmoids (a `logit_bias`, SigLIP), the log-loss of every (example, label) pair.
    Under normal priors of sd `prior_sd` on the log of the temperature and on the bias, so that a few examples that
    are all right cannot push every probability to 1 (the examples never hold an image of none of the labels, so the
    likelihood alone would bias "none of these" down without end). On a grid, then two finer ones."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(len(truth))

    def loss(log_temperature: float, bias: float) -> float:
        probs = label_probabilities(scores, logit_scale, none, logit_bias,
                                    Calibration(float(np.exp(log_temperature)), bias), strengths).astype(np.float64)
        if logit_bias is None:
            fit = -np.log(np.maximum(probs[rows, truth], 1e-12)).sum()
        else:
            right = np.zeros(probs.shape, dtype=bool)
            right[rows, truth] = True
            fit = -np.log(np.maximum(np.where(right, probs, 1 - probs), 1e-12)).sum()
        return fit + 0.5 * (log_temperature ** 2 + bias ** 2) / prior_sd ** 2

    # log temperature in [-3, 3], bias in [-6, 6]; a softmax with no "none of these" has no logit to bias
    center, width = np.zeros(2), np.array([3.0, 6.0 if none is not None or logit_bias is not None else 0.0])
    for _ in range(3):
        grid = [(t, b) for t in np.linspace(center[0] - width[0], center[0] + width[0], 21)
                for b in np.linspace(center[1] - width[1], center[1] + width[1], 21)]
        center = np.array(min(grid, key=lambda point: loss(*point)))
        width = width / 10
    return Calibration(float(np.exp(center[0])), float(center[1]))
