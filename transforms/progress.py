"""Resume: the embed stage saves the vectors it made as it goes, so a rerun into the same --output embeds only the rest.

    OUTPUT/run-<id>/_STARTED                       JSON: the run's manifest as it started (its settings)
    OUTPUT/run-<id>/progress-<16 hex>.parquet      the vectors of up to SAVE_EVERY images, each file written whole

On the DirectRunner nothing after the embed stage runs until every image is embedded, so the sinks cannot be what
keeps the work: `SaveProgress` sits in the embed stage itself and writes a file every SAVE_EVERY images or
SAVE_EVERY_S seconds. A file appears whole or not at all (files.write), and a file that still cannot be read is
skipped, never trusted. A bundle
that failed and was retried may have saved some images twice: they are the same vectors. The commit deletes these
files with every other file of the run folder that no shard names.

A rerun finds the run folders no `_SUCCESS` names, keeps the progress of those started with the same settings and
matches it to its inputs by content (the sha256 or the MD5 the store lists), so a file rewritten since is embedded
again.
"""
from __future__ import annotations

import base64
import io
import logging
import time
import uuid
from typing import Any, Iterable, Iterator, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transforms import files
from transforms.faults import StoreError, one_line
from transforms.manifest import VECTOR_SETTINGS, Manifest, differing_setting
from transforms.records import SAVED_VECTORS_SCHEMA, Embedded, ImageInfo, SavedVector, as_dict
from transforms.stores import use_worker_options

STARTED = "_STARTED"
PROGRESS_PREFIX = "progress-"
SAVE_EVERY = 256  # images per progress file: a killed job loses at most this many per worker, or SAVE_EVERY_S
SAVE_EVERY_S = 20.0

_LOG = logging.getLogger("zero_shot")


def write_started(output: str, manifest: Manifest) -> None:
    """Records, in the run's folder, the manifest it started with: what a rerun compares its settings to."""
    files.write(files.join(output, manifest.run_id, STARTED), manifest.to_json())


class SaveProgress(beam.DoFn):
    """(ImageInfo, Embedded) -> the same, passed on; every SAVE_EVERY images or SAVE_EVERY_S seconds, and at the end
    of a bundle, the vectors embedded since are written to one progress file of the run folder."""

    def __init__(self, run_folder: str):
        self.run_folder = run_folder

    def setup(self):
        use_worker_options()
        self.pending: list[tuple[ImageInfo, Embedded]] = []

    def start_bundle(self):
        self.pending = []
        self.last = time.monotonic()

    def process(self, element: tuple[ImageInfo, Embedded]):
        self.pending.append(element)
        if len(self.pending) >= SAVE_EVERY or time.monotonic() - self.last >= SAVE_EVERY_S:
            self._save()
        yield element

    def finish_bundle(self):
        self._save()

    def teardown(self):
        # A bundle that failed (a store's outage, too many errors) still embedded these images: keep them if possible.
        try:
            self._save()
        except Exception as e:  # noqa: BLE001 - the failure that ended the bundle is the one to report
            _LOG.warning("could not save the last %d embedded images: %s: %s", len(self.pending), type(e).__name__, e)

    def _save(self) -> None:
        self.last = time.monotonic()
        if not self.pending:
            return
        table = pa.Table.from_pylist([as_dict(SavedVector.of(image)) for image in self.pending],
                                     schema=SAVED_VECTORS_SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        files.write(files.join(self.run_folder, f"{PROGRESS_PREFIX}{uuid.uuid4().hex[:16]}.parquet"), buffer.getvalue())
        self.pending = []


def content_keys(row: dict[str, Any]) -> Iterator[str]:
    """The content keys (dedupe.ContentKeys) a saved image answers to: its sha256 (local files), its MD5 as S3 lists
    it (hex) and as GCS does (base64). An object listed without an MD5 matches none: it is embedded again."""
    yield f"sha256:{row['sha256']}"
    if row["md5"]:
        yield f"md5:{row['md5']}"
        yield f"md5:{base64.b64encode(bytes.fromhex(row['md5'])).decode('ascii')}"


def read_progress(path: str, dim: int) -> Iterator[tuple[str, tuple[ImageInfo, Embedded]]]:
    """(content key, (ImageInfo, Embedded)) for each image a progress file saved; a file that cannot be read, or
    whose vectors are not of the model's `dim`, is skipped with a warning (its images are embedded again)."""
    use_worker_options()
    try:
        table = pq.read_table(io.BytesIO(files.read(path)), schema=SAVED_VECTORS_SCHEMA)
        lengths = pc.unique(pc.list_value_length(table["vector"])).to_pylist()
        if lengths not in ([], [dim]):
            raise ValueError(f"it holds vectors of length {', '.join(map(str, lengths))}, the model's are {dim}")
        saved = [(row, SavedVector.image(row)) for row in table.to_pylist()]
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged file costs its images, never the run
        _LOG.warning("progress file %s cannot be used (%s): its images are embedded again", path, one_line(e))
        return
    for row, image in saved:
        for key in content_keys(row):
            yield key, image


class ReadProgress(beam.PTransform):
    """Progress files -> (content key, (ImageInfo, Embedded)), files spread over workers; `dim`: the length of the
    model's vectors, which every saved one must have."""

    def __init__(self, paths: Sequence[str], dim: int):
        super().__init__()
        self.paths, self.dim = list(paths), dim

    def expand(self, pbegin):
        return (pbegin
                | "Files" >> beam.Create(self.paths)
                | "Spread" >> beam.Reshuffle()
                | "Vectors" >> beam.FlatMap(read_progress, self.dim))


def _read_started(output: str, run_id: str) -> Optional[Manifest]:
    try:
        return Manifest.from_json(files.read(files.join(output, run_id, STARTED)))
    except StoreError:
        raise
    except Exception:  # noqa: BLE001 - missing, unreadable, another layout: a run folder this run cannot build on
        return None


def resumable(output: str, run_ids: Iterable[str], settings: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(the unfinished runs among `run_ids` whose saved vectors this run can use, their progress files): those
    started with the same model (VECTOR_SETTINGS), whatever their labels or decision; each other one is logged
    with why it is not resumed."""
    kept, saved = [], []
    for run_id in sorted(run_ids):
        started = _read_started(output, run_id)
        if started is None:
            _LOG.info("unfinished run %s under %s: no %s record, so nothing of it is reused", run_id, output, STARTED)
            continue
        if differ := differing_setting(started.settings, settings, VECTOR_SETTINGS):
            _LOG.warning("unfinished run %s under %s was made with another %s: starting afresh, not resuming it",
                         run_id, output, differ)
            continue
        if differ := differing_setting(started.settings, settings):
            _LOG.info("unfinished run %s under %s was made with another %s; its images' vectors are the same, so "
                      "they are reused and labeled as this run says", run_id, output, differ)
        kept.append(run_id)
        saved.extend(files.glob(files.join(output, run_id, f"{PROGRESS_PREFIX}*.parquet")))
    return kept, saved
