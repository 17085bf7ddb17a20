"""The records that flow between stages: what travels beside the pixels, and the dead-letter error row."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

# Tag of every stage's dead-letter output; one schema for all stages keeps the errors sink simple.
ERRORS = "errors"


class ImageInfo(NamedTuple):
    """Facts about one input image that are carried to the output row."""

    uri: str
    sha256: str
    width: int
    height: int


def error_row(uri: str, stage: str, error_type: str, message: str) -> dict[str, str]:
    """A dead-letter row: where the input failed (read/decode/embed), the error's type name and its message."""
    return {"uri": uri, "stage": stage, "error": error_type, "message": message[:2000]}


def exception_row(uri: str, stage: str, error: BaseException) -> dict[str, str]:
    """The dead-letter row for an exception caught while processing `uri`."""
    return error_row(uri, stage, type(error).__name__, str(error))


class Embedded(NamedTuple):
    """What a model handler returns for one image: its unit vector and, when asked for, what built it
    (e.g. the ImageNet classes behind a `local` vector, as (name, probability) pairs)."""

    vector: np.ndarray
    evidence: Sequence[tuple[str, float]] = ()


class EmbedFailure(NamedTuple):
    """What a model handler returns in place of a vector for one image it could not embed (e.g. rejected)."""

    error: str
    message: str
