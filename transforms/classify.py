"""Runner: composes read -> decode -> embed -> rank into one PTransform with a dead-letter output."""
from __future__ import annotations

import uuid
from typing import Mapping, Optional, Sequence, Union

import apache_beam as beam
from PIL import Image

from transforms.backends import Backend
from transforms.decode import DEFAULT_MAX_SIDE, DecodeImages
from transforms.embed import EmbedImages
from transforms.examples import Examples, TeachLabels
from transforms.faults import WatchErrors
from transforms.label_sets import check_label_names, load_templates
from transforms.progress import SaveProgress
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
                 max_pixels: int = Image.MAX_IMAGE_PIXELS, max_side: int = DEFAULT_MAX_SIDE,
                 max_error_fraction: Optional[float] = None, input_count: Optional[beam.PCollection] = None,
                 save_progress_to: Optional[str] = None, resumed: Optional[beam.PCollection] = None,
                 examples: Optional[Examples] = None):
        """
        Args:
            labels: label names, or label -> the phrases embedded for it.
            backend: the model (transforms.backends.get_backend), configured.
            templates: prompts with one `{}` (default: the backend's own choice).
            decision: top-k, min_prob or multi-label (rank.Decision).
            batch_size: images per model call (default: the backend's).
            explain: evidence items per image in the `evidence` column (local: ImageNet classes).
            keep_embeddings: also an 'embeddings' output, one EmbeddingRow per labeled image.
            max_bytes, max_pixels, max_side: the reader's and the decoder's bounds.
            max_error_fraction, input_count: with both (input_count a one-element count of the job's inputs), the
                job stops (TooManyErrorsError) as soon as it is sure to end with more errors than that fraction.
            save_progress_to: a run folder where the embed stage saves its vectors as it goes, for a rerun to resume
                from (transforms.progress).
            resumed: (ImageInfo, Embedded) of images a rerun does not embed again, ranked with the others.
            examples: confirmed images (transforms.examples.embed_examples) that teach the labels.
        """
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
        self.max_error_fraction = max_error_fraction
        self.input_count = input_count
        self.watch_key = uuid.uuid4().hex  # the workers' tallies of this step
        self.save_progress_to = save_progress_to
        self.resumed = resumed
        self.examples = examples

    def expand(self, inputs):
        label_matrix = inputs.pipeline | "EmbedLabels" >> EmbedLabels(self.label_phrases, self.templates, self.backend)
        if self.examples is not None:
            label_matrix = label_matrix | "TeachLabels" >> TeachLabels(self.examples, self.backend)
        read = inputs | "Read" >> beam.ParDo(ReadFiles(self.max_bytes)).with_outputs(ERRORS, main="files")
        decoded = read.files | "Decode" >> beam.ParDo(
            DecodeImages(self.max_pixels, self.max_side, self.backend.image_side)).with_outputs(ERRORS, main="images")
        vectors, embed_errors = decoded.images | "Embed" >> EmbedImages(self.backend, self.batch_size, self.explain)
        if self.save_progress_to:  # in the embed stage itself: on the DirectRunner nothing after it runs until the end
            vectors = vectors | "SaveProgress" >> beam.ParDo(SaveProgress(self.save_progress_to))
        counted = inputs
        if self.resumed is not None:
            vectors = (vectors, self.resumed) | "WithResumed" >> beam.Flatten()
            counted = (inputs, self.resumed) | "AllInputs" >> beam.Flatten()
        results = vectors | "Rank" >> RankVectors(
            label_matrix, self.backend, self.decision, self.batch_size,
            # without_defaults: no count at all for no inputs (Rank then has nothing to rank), and one stage less
            total_inputs=counted | "CountInputs" >> beam.CombineGlobally(beam.combiners.CountCombineFn())
            .without_defaults())
        errors = [read[ERRORS], decoded[ERRORS], embed_errors]
        if self.max_error_fraction is not None and self.input_count is not None:
            # In each stage that makes them, not after the Flatten: its consumer may run only once they all ended.
            watch = WatchErrors(self.watch_key, self.max_error_fraction)
            count = beam.pvalue.AsSingleton(self.input_count)
            errors = [rows | f"Watch{stage}Errors" >> beam.ParDo(watch, count)
                      for stage, rows in zip(("Read", "Decode", "Embed"), errors)]
        errors = tuple(errors) | "AllErrors" >> beam.Flatten()
        if not self.keep_embeddings:
            return {RESULTS: results, ERRORS: errors}
        embeddings = vectors | "EmbeddingRows" >> beam.Map(embedding_row, self.backend.model_id)
        return {RESULTS: results, ERRORS: errors, EMBEDDINGS: embeddings}
