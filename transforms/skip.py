"""Incremental runs: a file whose uri and sha256 already have a row in a finished run keeps that row; the rest go on."""
from __future__ import annotations

import hashlib
from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.metrics import NAMESPACE
from transforms.read import DEFAULT_MAX_BYTES, ReadFiles
from transforms.records import ERRORS, RESULTS
from transforms.write import read_rows

CARRIED_METRIC = "carried_over"
TO_LABEL = "to_label"


def _sha256(element: tuple[str, bytes]) -> tuple[str, str]:
    uri, data = element
    return uri, hashlib.sha256(data).hexdigest()


class _KeepOrLabel(beam.DoFn):
    """(uri, {'now': [sha256], 'before': [row]}) -> the previous row if the file is unchanged, else the uri to label.
    A uri only in the previous run is a file that is gone: it is dropped."""

    def setup(self):
        self.carried = Metrics.counter(NAMESPACE, CARRIED_METRIC)

    def process(self, element: tuple[str, dict[str, Iterable]]):
        uri, found = element
        now, before = list(found["now"]), list(found["before"])
        if not now:
            return
        kept = next((row for row in before if row["sha256"] == now[0]), None)
        if kept is not None:
            self.carried.inc()
            yield kept
        else:
            yield beam.pvalue.TaggedOutput(TO_LABEL, uri)


class SkipExisting(beam.PTransform):
    """URIs -> {'results': rows of unchanged files from the previous run, 'to_label': the other URIs, 'errors'}.

    Every file is read once to hash it; only new or changed files are read again, decoded and embedded. The previous
    run is joined by uri (CoGroupByKey), so its rows are never looked up per element or held by one worker."""

    def __init__(self, previous_shards: list[str], max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__()
        self.previous_shards, self.max_bytes = previous_shards, max_bytes

    def expand(self, uris):
        read = uris | "ReadToHash" >> beam.ParDo(ReadFiles(self.max_bytes)).with_outputs(ERRORS, main="files")
        now = read.files | "Hash" >> beam.Map(_sha256)
        before = (uris.pipeline
                  | "PreviousShards" >> beam.Create(self.previous_shards)
                  | "SpreadShards" >> beam.Reshuffle()
                  | "PreviousRows" >> beam.FlatMap(read_rows)
                  | "ByUri" >> beam.Map(lambda row: (row["uri"], row)))
        split = ({"now": now, "before": before}
                 | "Join" >> beam.CoGroupByKey()
                 | "KeepOrLabel" >> beam.ParDo(_KeepOrLabel()).with_outputs(TO_LABEL, main=RESULTS))
        return {RESULTS: split[RESULTS], TO_LABEL: split[TO_LABEL], ERRORS: read[ERRORS]}
