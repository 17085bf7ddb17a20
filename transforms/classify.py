"""Runner: composes read -> decode -> embed -> rank into one PTransform with a dead-letter output."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.utils import shared

from transforms.backends import Backend
from transforms.decode import DecodeImages, ReadLimits
from transforms.embed import EmbedImages
from transforms.examples import Examples, label_matrix
from transforms.faults import WatchErrors
from transforms.label_sets import check_label_names, load_templates
from transforms.progress import SaveProgress
from transforms.rank import Decision, RankVectors
from transforms.read import ReadFiles
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

    Optional behaviour is chained, as Beam's RunInference adds it: `.with_examples(...)` (labels taught by
    confirmed images), `.with_embeddings()` (an 'embeddings' output too), `.with_progress(...)` (vectors saved as
    they are made, for a rerun to resume from) and `.with_error_budget(...)` (the job stops once too many inputs
    failed). Without them, it labels.

    Example:
        outputs = uris | ZeroShotClassify(["cat", "car"], get_backend("local"), decision=Decision(top_k=1))
        outputs[RESULTS] | WriteRows("out/labels", RESULTS_SCHEMA)
    """

    def __init__(self, labels: Union[Sequence[str], Mapping[str, Sequence[str]]], backend: Backend,
                 templates: Optional[Sequence[str]] = None, decision: Decision = Decision(),
                 batch_size: Optional[int] = None, explain: int = 0, limits: ReadLimits = ReadLimits()):
        """
        Args:
            labels: label names, or label -> the phrases embedded for it.
            backend: the model (transforms.backends.get_backend), configured.
            templates: prompts with one `{}` (default: the backend's own choice).
            decision: top-k, min_prob or multi-label (rank.Decision).
            batch_size: images per model call (default: the backend's).
            explain: evidence items per image in the `evidence` column (local: ImageNet classes).
            limits: the reader's and the decoder's bounds (ReadLimits).
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
        self.limits = limits
        self.examples: Optional[Examples] = None
        self.keep_embeddings = False
        self.progress_folder: Optional[str] = None
        self.resumed: Optional[beam.PCollection] = None
        self.error_budget: Optional[tuple[float, beam.PCollection]] = None

    def with_examples(self, examples: Examples) -> "ZeroShotClassify":
        """Labels taught by confirmed images (transforms.examples.embed_examples)."""
        self.examples = examples
        return self

    def with_embeddings(self) -> "ZeroShotClassify":
        """Also an 'embeddings' output: one EmbeddingRow per labeled image."""
        self.keep_embeddings = True
        return self

    def with_progress(self, run_folder: str, resumed: Optional[beam.PCollection] = None) -> "ZeroShotClassify":
        """The embed stage saves its vectors in `run_folder` as it goes (transforms.progress), for a rerun to resume
        from; `resumed`: (ImageInfo, Embedded) of images a rerun does not embed again, ranked with the others."""
        self.progress_folder, self.resumed = run_folder, resumed
        return self

    def with_error_budget(self, max_error_fraction: float, input_count: beam.PCollection) -> "ZeroShotClassify":
        """The job stops (TooManyErrorsError) as soon as it is sure to end with more error rows than
        `max_error_fraction` of `input_count`, a one-element count of the job's inputs."""
        self.error_budget = (max_error_fraction, input_count)
        return self

    def expand(self, inputs):
        labels = label_matrix(inputs.pipeline, self.label_phrases, self.templates, self.backend, self.examples)
        read = inputs | "Read" >> beam.ParDo(ReadFiles(self.limits.max_bytes)).with_outputs(ERRORS, main="files")
        decoded = read.files | "Decode" >> beam.ParDo(DecodeImages(
            self.limits.max_pixels, self.limits.max_side, self.backend.image_side)).with_outputs(ERRORS, main="images")
        vectors, embed_errors = decoded.images | "Embed" >> EmbedImages(self.backend, self.batch_size, self.explain)
        if self.progress_folder:  # in the embed stage itself: on the DirectRunner nothing after it runs until the end
            vectors = vectors | "SaveProgress" >> beam.ParDo(SaveProgress(self.progress_folder))
        counted = inputs
        if self.resumed is not None:
            vectors = (vectors, self.resumed) | "WithResumed" >> beam.Flatten()
            counted = (inputs, self.resumed) | "AllInputs" >> beam.Flatten()
        results = vectors | "Rank" >> RankVectors(
            labels, self.backend, self.decision, self.batch_size,
            # without_defaults: no count at all for no inputs (Rank then has nothing to rank), and one stage less
            total_inputs=counted | "CountInputs" >> beam.CombineGlobally(beam.combiners.CountCombineFn())
            .without_defaults())
        errors = [read[ERRORS], decoded[ERRORS], embed_errors]
        if self.error_budget is not None:
            # In each stage that makes them, not after the Flatten: its consumer may run only once they all ended.
            limit, input_count = self.error_budget
            watch, count = WatchErrors(shared.Shared(), limit), beam.pvalue.AsSingleton(input_count)
            errors = [rows | f"Watch{stage}Errors" >> beam.ParDo(watch, count)
                      for stage, rows in zip(("Read", "Decode", "Embed"), errors)]
        errors = tuple(errors) | "AllErrors" >> beam.Flatten()
        if not self.keep_embeddings:
            return {RESULTS: results, ERRORS: errors}
        embeddings = vectors | "EmbeddingRows" >> beam.Map(embedding_row, self.backend.model_id)
        return {RESULTS: results, ERRORS: errors, EMBEDDINGS: embeddings}
