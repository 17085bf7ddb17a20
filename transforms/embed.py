"""Embedder stage: decoded images -> what the model reads of each (in every worker process) -> batches -> unit vectors,
through Beam's RunInference and a backend's handler."""
from __future__ import annotations

from typing import Callable, Sequence, Union

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from PIL import Image

from transforms.backends import Backend
from transforms.backends.base import ModelInputs
from transforms.internals import output_types
from transforms.metrics import ProgressLog, StageMetrics
from transforms.records import ERROR_OUTPUT, ERRORS, Embedded, EmbedFailure, ImageInfo, error_row


@output_types(tuple[ImageInfo, Embedded], ERROR_OUTPUT)
class _SplitEmbedded(beam.DoFn):
    """Keeps the image's info and its vector; images the handler reported as failed go to `errors`. Logs progress: the
    model is the slow part, and a runner may rank only once every image is embedded (the DirectRunner does)."""

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


class ModelError(RuntimeError):
    """The model failed on a whole batch: not one image's fault (a per-image refusal comes back as an EmbedFailure),
    so every batch would fail alike and the job stops instead of committing a run of error rows."""


class _FailTheJob(beam.DoFn):
    """A batch the model could not embed (an API down past its retries, a call that timed out, a malformed reply)
    ends the job with one line naming the cause; its images are never split up and sent again one by one. So does
    an image the model's preprocessor failed on: the decoder read it as a valid RGB image, so the fault is the
    preprocessor's, and it would be every image's."""

    def process(self, failed):
        element, (exc_type, exc_repr, formatted) = failed
        # The traceback's last line is "package.module.SomeError: message"; keep "SomeError: message".
        last_line = "".join(formatted).strip().splitlines()[-1] if formatted else exc_repr
        cause = f"{exc_type.__name__}: {last_line.partition(f'{exc_type.__name__}: ')[2] or exc_repr}"
        if isinstance(element, list):
            raise ModelError(f"{cause} (a batch of {len(element)} images; no image was at fault, so the job stops)")
        raise ModelError(f"{cause} (the model's preprocessor, on {element[0].uri}, which decoded as a valid image; "
                         "so the job stops)")
        yield  # a generator, as Beam expects of process()


class _Preprocess:
    """(info, decoded image) -> (info, what the model reads of it): the backend's preprocessor, as RunInference's
    preprocess function, which runs before the images are batched."""

    def __init__(self, preprocessor: Callable[[Image.Image], ModelInputs]):
        self.preprocessor = preprocessor

    def __call__(self, element: tuple[ImageInfo, Image.Image]) -> tuple[ImageInfo, ModelInputs]:
        info, image = element
        return info, self.preprocessor(image)


def embed_in_hand(backend: Backend, images: Sequence[Image.Image]) -> list[Union[Embedded, EmbedFailure]]:
    """The embed stage's own code on images in hand, outside a pipeline (the examples that teach a job's labels,
    before it starts): the backend's preprocessor, then its RunInference handler, a batch at a time. Each image's
    vector, or the handler's refusal of it."""
    handler = backend.model_handler(backend.default_batch_size)
    model = handler.load_model()
    preprocessor = backend.image_preprocessor()
    inputs = [preprocessor(image) for image in images] if preprocessor else list(images)
    return [result.inference for start in range(0, len(inputs), backend.default_batch_size)
            for result in handler.run_inference(inputs[start:start + backend.default_batch_size], model)]


class EmbedImages(beam.PTransform):
    """(ImageInfo, image) -> (ImageInfo, Embedded), plus error rows for the images the model refused one by one.
    A batch that fails as a whole fails the job (ModelError). `evidence_size` > 0 asks the backend for that many
    pieces of evidence per image (--explain)."""

    def __init__(self, backend: Backend, batch_size: int, evidence_size: int = 0):
        super().__init__()
        self.backend = backend
        self.batch_size = batch_size
        self.evidence_size = evidence_size

    def expand(self, images):
        handler = KeyedModelHandler(self.backend.model_handler(self.batch_size, self.evidence_size))
        if (preprocessor := self.backend.image_preprocessor()) is not None:
            handler = handler.with_preprocess_fn(_Preprocess(preprocessor))
        embedded, failed = images | "RunInference" >> RunInference(handler).with_exception_handling(
            timeout=self.backend.call_timeout_s)
        split = embedded | "Vectors" >> beam.ParDo(_SplitEmbedded()).with_outputs(ERRORS, main="vectors")
        # Only the timeout needs Beam's exception handling (it stops a hung call); every failure it catches ends the
        # job, with the model's own exception as the last line.
        _ = ((failed.failed_inferences, *failed.failed_preprocessing) | "AllFailures" >> beam.Flatten()
             | "FailTheJob" >> beam.ParDo(_FailTheJob()))
        return split.vectors, split[ERRORS]
