"""Incremental runs: a file whose uri and sha256 already have rows in a finished run keeps them; the rest go on. Each
file is read once: the bytes read to compare are the bytes the new and changed files are labeled from."""
from __future__ import annotations

import hashlib
from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.metrics import NAMESPACE
from transforms.read import DEFAULT_MAX_BYTES, ReadFiles
from transforms.records import ERRORS
from transforms.write import read_rows

CARRIED_METRIC = "carried_over"
TO_LABEL = "to_label"


class _ReadUnlessUnchanged(ReadFiles):
    """(uri, {'now': [None], TABLE: [previous rows]...}) -> the previous rows of every table if the file's bytes
    still have that sha256, else (uri, bytes) to label; read failures to `errors`. A uri only in the previous run is
    a file that is gone: it is dropped."""

    def __init__(self, tables: list[str], max_bytes: int):
        super().__init__(max_bytes)
        self.tables = tables

    def setup(self):
        super().setup()
        self.carried = Metrics.counter(NAMESPACE, CARRIED_METRIC)

    def process(self, element: tuple[str, dict[str, Iterable]]):
        uri, found = element
        if not list(found["now"]):
            return
        data = self.read(uri)
        if isinstance(data, dict):
            yield beam.pvalue.TaggedOutput(ERRORS, data)
            return
        sha256 = hashlib.sha256(data).hexdigest()
        kept = {table: [row for row in found[table] if row["sha256"] == sha256] for table in self.tables}
        if all(kept.values()):
            self.carried.inc()
            for table, rows in kept.items():
                yield beam.pvalue.TaggedOutput(table, rows[0])
        else:
            yield uri, data


class SkipExisting(beam.PTransform):
    """URIs -> {TO_LABEL: (uri, bytes) of new and changed files, TABLE: rows of unchanged files carried over from the
    previous run, for each table given (results, and embeddings when kept), 'errors': read errors}.

    The previous run is joined by uri (CoGroupByKey), so its rows are never looked up per element or held by one
    worker; only uris and rows are shuffled, and each file is read once, after the join."""

    def __init__(self, previous_shards: dict[str, list[str]], max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__()
        self.previous_shards, self.max_bytes = previous_shards, max_bytes

    def expand(self, uris):
        joined = {"now": uris | "Now" >> beam.Map(lambda uri: (uri, None))}
        for table, shards in self.previous_shards.items():
            joined[table] = (uris.pipeline
                             | f"Previous{table.title()}" >> beam.Create(shards)
                             | f"Spread{table.title()}" >> beam.Reshuffle()
                             | f"Read{table.title()}" >> beam.FlatMap(read_rows)
                             | f"{table.title()}ByUri" >> beam.Map(lambda row: (row["uri"], row)))
        tables = list(self.previous_shards)
        split = (joined
                 | "Join" >> beam.CoGroupByKey()
                 | "ReadUnlessUnchanged" >> beam.ParDo(_ReadUnlessUnchanged(tables, self.max_bytes)).with_outputs(
                     *tables, ERRORS, main=TO_LABEL))
        return {TO_LABEL: split[TO_LABEL], ERRORS: split[ERRORS], **{table: split[table] for table in tables}}
