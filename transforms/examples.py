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
from transforms.rank import EmbedLabels, LabelMatrix, label_probabilities, logit, none_scores
from transforms.read import read_file
from transforms.records import EmbedFailure
from transforms.write import from_spreadsheet_cell

_LOG = logging.getLogger("zero_shot")
# How far the examples' mean image vector pulls its label's text vector, and how far the probability map fitted to
# the examples may stray from no change: chosen leave-one-source-out by benchmarks/examples.py (docs/ACCURACY.md,
# "Teaching by example").
DEFAULT_WEIGHT = 0.5
CALIBRATION_PRIOR_SD = 2.0


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
    """Confirmed images: each one's label and unit image vector (row i of `vectors`), and `weight`, how far their
    mean pulls their label's text vector."""

    labels: tuple[str, ...]
    vectors: np.ndarray
    weight: float = DEFAULT_WEIGHT
    digest: str = ""  # what identifies them among a run's settings (examples_digest)

    def __post_init__(self):
        if len(self.labels) != len(self.vectors):
            raise ValueError(f"{len(self.labels)} example labels for {len(self.vectors)} vectors")
        if not self.weight >= 0:
            raise ValueError(f"examples_weight must be at least 0, got {self.weight}")


def embed_examples(examples: Sequence[Example], backend: Backend, known: Optional[dict[str, tuple]] = None,
                   weight: float = DEFAULT_WEIGHT, limits: ReadLimits = ReadLimits()) -> Examples:
    """The examples' image vectors: those in `known` (uri -> (sha256, vector), a kept run's) as they are, the others
    read, decoded and embedded here by the job's own stages' code (read_file, decode_image, embed_in_hand), with
    the same bounds and model. Before the job starts, so that an example that cannot be read, decoded or embedded
    stops it with one line (ExamplesError); a store that fails stops it too (StoreError)."""
    known = known or {}
    sha256_of, vectors, images, missing = {}, {}, [], []
    for uri, _ in examples:
        if uri in known:
            sha256_of[uri], vectors[uri] = known[uri]
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
        vectors[uri] = embedded.vector
    return Examples(tuple(label for _, label in examples), np.stack([vectors[uri] for uri, _ in examples]),
                    weight, examples_digest(examples, sha256_of))


def examples_digest(examples: Sequence[Example], sha256_of: dict[str, str]) -> str:
    """sha256 of the examples as a run depends on them: each uri, its label and its image's sha256, in uri order.
    Another examples file with the same rows digests the same; an example image rewritten since does not."""
    lines = "".join(f"{uri}\t{label}\t{sha256_of[uri]}\n" for uri, label in sorted(examples))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def teach(labels: LabelMatrix, examples: Examples, logit_scale: float, none_margin: Optional[float],
          prior_sd: Optional[float] = CALIBRATION_PRIOR_SD) -> LabelMatrix:
    """The label matrix taught by examples: each label with examples gets its text vector + weight x the mean of
    its examples' vectors, normalized; labels without keep their text vector. Then a map of the probabilities
    (fit_calibration) is fitted to the examples, each scored by the labels as they would be without it
    (leave-one-out), so that on the user's kind of image a label's probability means what it says.

    `logit_scale` and `none_margin` are the backend's, as the ranking uses them (rank_rows). `prior_sd`: how far the
    map may stray from no change; None fits none (for the benchmark that chose CALIBRATION_PRIOR_SD)."""
    index = {name: i for i, name in enumerate(labels.names)}
    truth = np.array([index[label] for label in examples.labels])
    vectors = np.asarray(examples.vectors, dtype=np.float32)
    counts = np.bincount(truth, minlength=len(labels.names)).astype(np.float32)
    sums = np.zeros_like(labels.vectors)
    np.add.at(sums, truth, vectors)
    means = sums / np.maximum(counts, 1)[:, None]
    taught = labels._replace(vectors=l2_normalize(labels.vectors + examples.weight * means))
    scores = vectors @ taught.vectors.T
    scores[np.arange(len(truth)), truth] = left_out_scores(labels.vectors, vectors, truth, sums, counts,
                                                           examples.weight)
    probs = label_probabilities(scores, labels.logit_scale or logit_scale, none_scores(vectors, labels, none_margin),
                                labels.logit_bias)
    right = probs.argmax(axis=1) == truth
    calibration = None if prior_sd is None else fit_calibration(probs, truth, prior_sd)
    _LOG.info("taught %d labels by %d examples (weight %g); each example ranked without itself: top-1 %.0f%%, "
              "mean top probability %.2f; probabilities mapped by log-odds x %.3g %+.3g", int((counts > 0).sum()),
              len(truth), examples.weight, 100 * right.mean(), probs.max(axis=1).mean(),
              *(calibration or (1.0, 0.0)))
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


def fit_calibration(probs: np.ndarray, truth: np.ndarray,
                    prior_sd: float = CALIBRATION_PRIOR_SD) -> tuple[float, float]:
    """(slope, intercept) of the map of a probability's log-odds, p -> sigmoid(slope x logit(p) + intercept), that
    best fits the examples' probabilities (`probs`, one row per example, a column per label) as what a probability
    claims: that its label is the right one (`truth`: each example's label). Platt scaling over every (example,
    label) pair, so that each label's probability, not only the best one's, means what it says; under normal priors
    of sd `prior_sd` on the log of the slope and on the intercept, so that a few examples that are all right cannot
    push every probability to 1. One map for every backend: a softmax's, a "none of these" competitor's and SigLIP's
    sigmoids alike. On a grid, then two finer ones; the pairs counted by their log-odds to 0.01, so that a thousand
    labels cost no more than ten."""
    right = np.zeros(probs.shape, dtype=bool)
    right[np.arange(len(truth)), truth] = True
    odds, where = np.unique(np.round(logit(probs).ravel(), 2), return_inverse=True)
    yes = np.bincount(where, weights=right.ravel(), minlength=len(odds))
    no = np.bincount(where, minlength=len(odds)) - yes

    def loss(log_slope: np.ndarray, intercept: np.ndarray) -> np.ndarray:
        z = np.exp(log_slope)[..., None] * odds + intercept[..., None]
        fit = (np.logaddexp(0, -z) * yes + np.logaddexp(0, z) * no).sum(axis=-1)  # -log likelihood
        return fit + 0.5 * (log_slope ** 2 + intercept ** 2) / prior_sd ** 2

    center, width = np.zeros(2), np.array([3.0, 6.0])  # log slope in [-3, 3], intercept in [-6, 6]
    for _ in range(3):
        grid = np.stack(np.meshgrid(*(np.linspace(c - w, c + w, 41) for c, w in zip(center, width)),
                                    indexing="ij"))
        values = loss(grid[0], grid[1])
        center = grid[(slice(None), *np.unravel_index(np.argmin(values), values.shape))]
        width = width / 10
    return float(np.exp(center[0])), float(center[1])
