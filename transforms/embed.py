"""Embedder stage: batches of decoded images -> unit vectors through Beam's RunInference and a backend's handler."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from transforms.backends import Backend
from transforms.metrics import StageMetrics
from transforms.records import error_row


class _CountEmbedded(beam.DoFn):
    """Drops the echoed input image and counts what the model embedded."""

    def setup(self):
        self.metrics = StageMetrics("embed")

    def process(self, keyed_result):
        info, result = keyed_result
        self.metrics.passed.inc()
        yield info, result.inference


class _FailedBatchToErrors(beam.DoFn):
    """A failed batch becomes one `embed` error row per image in it, so no input is lost."""

    def setup(self):
        self.metrics = StageMetrics("embed")

    def process(self, failed):
        batch, (exc_type, exc_repr, _traceback) = failed
        for info, _image in batch:
            self.metrics.failed.inc()
            yield error_row(info.uri, "embed", exc_type.__name__, exc_repr)


class EmbedImages(beam.PTransform):
    """(ImageInfo, image) -> (ImageInfo, vector), plus error rows for batches the model could not embed."""

    def __init__(self, backend: Backend, batch_size: int):
        super().__init__()
        self.backend = backend
        self.batch_size = batch_size

    def expand(self, images):
        handler = KeyedModelHandler(self.backend.model_handler(self.batch_size))
        embedded, failed = images | "RunInference" >> RunInference(handler).with_exception_handling()
        vectors = embedded | "Vectors" >> beam.ParDo(_CountEmbedded())
        errors = failed.failed_inferences | "FailedBatches" >> beam.ParDo(_FailedBatchToErrors())
        return vectors, errors
