"""Runner: composes read -> decode -> embed -> rank into one PTransform with a dead-letter output."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import apache_beam as beam
from PIL import Image

from transforms.backends import Backend
from transforms.decode import DEFAULT_MAX_SIDE, DecodeImages
from transforms.embed import EmbedImages
from transforms.label_sets import check_label_names, load_templates
from transforms.rank import Decision, EmbedLabels, RankVectors
from transforms.read import DEFAULT_MAX_BYTES, ReadFiles
from transforms.records import EMBEDDINGS, ERRORS, RESULTS, embedding_row


def check_settings(batch_size: Optional[int], explain: int) -> None:
    """The value checks ZeroShotClassify and the command line share (Decision checks its own); raises ValueError
    naming the setting."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if explain < 0:
        raise ValueError(f"explain must be at least 0, got {explain}")


class ZeroShotClassify(beam.PTransform):
    """URIs or (uri, bytes) -> {'results': output rows, 'errors': error rows}; every input lands in exactly one.
    With `keep_embeddings`, also 'embeddings': one EmbeddingRow per labeled image.

    Example:
        outputs = uris | ZeroShotClassify(["cat", "car"], get_backend("local"), decision=Decision(top_k=1))
        outputs[RESULTS] | WriteRows("out/labels", RESULTS_SCHEMA)
    """

    def __init__(self, labels: Union[Sequence[str], Mapping[str, Sequence[str]]], backend: Backend,
                 templates: Optional[Sequence[str]] = None, decision: Decision = Decision(),
                 batch_size: Optional[int] = None, explain: int = 0, keep_embeddings: bool = False,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = Image.MAX_IMAGE_PIXELS, max_side: int = DEFAULT_MAX_SIDE):
        """`labels`: label names, or label -> phrases to embed for it; `templates`: prompts with one `{}`
        (default: the backend's own choice); `batch_size`: images per model call (default: the backend's);
        `explain`: evidence items per image in the `evidence` column."""
        super().__init__()
        if not labels:
            raise ValueError("ZeroShotClassify needs at least one label")
        check_settings(batch_size, explain)
        self.label_phrases = dict(labels) if isinstance(labels, Mapping) else {label: [label] for label in labels}
        check_label_names(list(self.label_phrases), "ZeroShotClassify's labels")
        self.templates = list(templates) if templates else load_templates(backend.default_templates)
        self.backend = backend
        self.decision = decision
        self.batch_size = batch_size or backend.default_batch_size
        self.explain = explain
        self.keep_embeddings = keep_embeddings
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_side = max_side

    def expand(self, inputs):
        label_matrix = inputs.pipeline | "EmbedLabels" >> EmbedLabels(self.label_phrases, self.templates, self.backend)
        read = inputs | "Read" >> beam.ParDo(ReadFiles(self.max_bytes)).with_outputs(ERRORS, main="files")
        decoded = read.files | "Decode" >> beam.ParDo(
            DecodeImages(self.max_pixels, self.max_side, self.backend.image_side)).with_outputs(ERRORS, main="images")
        vectors, embed_errors = decoded.images | "Embed" >> EmbedImages(self.backend, self.batch_size, self.explain)
        results = vectors | "Rank" >> RankVectors(
            label_matrix, self.backend, self.decision, self.batch_size,
            # without_defaults: no count at all for no inputs (Rank then has nothing to rank), and one stage less
            total_inputs=inputs | "CountInputs" >> beam.CombineGlobally(beam.combiners.CountCombineFn())
            .without_defaults())
        errors = (read[ERRORS], decoded[ERRORS], embed_errors) | "AllErrors" >> beam.Flatten()
        if not self.keep_embeddings:
            return {RESULTS: results, ERRORS: errors}
        embeddings = vectors | "EmbeddingRows" >> beam.Map(embedding_row, self.backend.model_id)
        return {RESULTS: results, ERRORS: errors, EMBEDDINGS: embeddings}
