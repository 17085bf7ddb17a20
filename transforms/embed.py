"""Embedder stage: batches of decoded images -> unit vectors through Beam's RunInference and a backend's handler."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from transforms.backends import Backend
from transforms.metrics import ProgressLog, StageMetrics
from transforms.records import ERRORS, EmbedFailure, error_row


class _SplitEmbedded(beam.DoFn):
    """Drops the echoed input image; images the handler reported as failed go to `errors`. Logs progress: the model
    is the slow part, and a runner may rank only once every image is embedded (the DirectRunner does)."""

    def setup(self):
        self.metrics = StageMetrics("embed")
        self.progress = ProgressLog(verb="embedded")

    def process(self, keyed_result):
        info, result = keyed_result
        if isinstance(result.inference, EmbedFailure):
            self.metrics.failed.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, error_row(info.uri, "embed", *result.inference))
            return
        self.metrics.passed.inc()
        self.progress.add(1)
        yield info, result.inference


class _FailedBatchToErrors(beam.DoFn):
    """A failed batch becomes one `embed` error row per image in it, so no input is lost.

    Errors the backend declares fatal (a refused API key) are raised again: every batch would fail the same way.
    """

    def __init__(self, fatal_errors: tuple[type[Exception], ...]):
        self.fatal_errors = fatal_errors

    def setup(self):
        self.metrics = StageMetrics("embed")

    def process(self, failed):
        batch, (exc_type, exc_repr, _traceback) = failed
        if issubclass(exc_type, self.fatal_errors):
            raise exc_type(exc_repr)
        for info, _image in batch:
            self.metrics.failed.inc()
            yield error_row(info.uri, "embed", exc_type.__name__, exc_repr)


class EmbedImages(beam.PTransform):
    """(ImageInfo, image) -> (ImageInfo, Embedded), plus error rows for batches the model could not embed.
    `evidence_size` > 0 asks the backend for that many pieces of evidence per image (--explain)."""

    def __init__(self, backend: Backend, batch_size: int, evidence_size: int = 0):
        super().__init__()
        self.backend = backend
        self.batch_size = batch_size
        self.evidence_size = evidence_size

    def expand(self, images):
        handler = KeyedModelHandler(self.backend.model_handler(self.batch_size, self.evidence_size))
        embedded, failed = images | "RunInference" >> RunInference(handler).with_exception_handling(
            timeout=self.backend.call_timeout_s)
        split = embedded | "Vectors" >> beam.ParDo(_SplitEmbedded()).with_outputs(ERRORS, main="vectors")
        failed_batches = failed.failed_inferences | "FailedBatches" >> beam.ParDo(
            _FailedBatchToErrors(self.backend.fatal_errors))
        return split.vectors, (split[ERRORS], failed_batches) | "EmbedErrors" >> beam.Flatten()
