"""Incremental runs: a file whose uri and sha256 already have rows in a finished run keeps them; the rest go on."""
from __future__ import annotations

from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.metrics import NAMESPACE
from transforms.write import read_rows

CARRIED_METRIC = "carried_over"
TO_LABEL = "to_label"


class _KeepOrLabel(beam.DoFn):
    """(uri, {'now': [sha256], TABLE: [previous rows]...}) -> the previous rows of every table if the file is
    unchanged, else (uri, sha256) to label. A uri only in the previous run is a file that is gone: it is dropped."""

    def __init__(self, tables: list[str]):
        self.tables = tables

    def setup(self):
        self.carried = Metrics.counter(NAMESPACE, CARRIED_METRIC)

    def process(self, element: tuple[str, dict[str, Iterable]]):
        uri, found = element
        now = list(found["now"])
        if not now:
            return
        kept = {table: [row for row in found[table] if row["sha256"] == now[0]] for table in self.tables}
        if all(kept.values()):
            self.carried.inc()
            for table, rows in kept.items():
                yield beam.pvalue.TaggedOutput(table, rows[0])
        else:
            yield uri, now[0]


class SkipExisting(beam.PTransform):
    """(uri, sha256) -> {TABLE: rows of unchanged files carried over from the previous run, for each table given
    (results, and embeddings when kept), 'to_label': the other (uri, sha256) pairs}.

    The previous run is joined by uri (CoGroupByKey), so its rows are never looked up per element or held by one
    worker."""

    def __init__(self, previous_shards: dict[str, list[str]]):
        super().__init__()
        self.previous_shards = previous_shards

    def expand(self, hashes):
        joined = {"now": hashes}
        for table, shards in self.previous_shards.items():
            joined[table] = (hashes.pipeline
                             | f"Previous{table.title()}" >> beam.Create(shards)
                             | f"Spread{table.title()}" >> beam.Reshuffle()
                             | f"Read{table.title()}" >> beam.FlatMap(read_rows)
                             | f"{table.title()}ByUri" >> beam.Map(lambda row: (row["uri"], row)))
        tables = list(self.previous_shards)
        split = (joined
                 | "Join" >> beam.CoGroupByKey()
                 | "KeepOrLabel" >> beam.ParDo(_KeepOrLabel(tables)).with_outputs(*tables, main=TO_LABEL))
        return {TO_LABEL: split[TO_LABEL], **{table: split[table] for table in tables}}

