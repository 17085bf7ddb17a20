"""Content dedupe: every file is hashed once; files with the same bytes are decoded and embedded once, and every uri
still gets its own rows."""
from __future__ import annotations

import hashlib
from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.metrics import NAMESPACE, errors_metric
from transforms.read import DEFAULT_MAX_BYTES, ReadFiles
from transforms.records import ERRORS, RESULTS

COPIES_METRIC = "duplicates_not_embedded"
COPIES = "copies"


def _sha256(element: tuple[str, bytes]) -> tuple[str, str]:
    uri, data = element
    return uri, hashlib.sha256(data).hexdigest()


class HashFiles(beam.PTransform):
    """URIs -> {'hashes': (uri, sha256 of its bytes), 'errors': read errors}. Only hashes leave this step: the bytes
    are read again by the files that go on to be decoded, so no shuffle ever carries an image."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__()
        self.max_bytes = max_bytes

    def expand(self, uris):
        read = uris | "ReadToHash" >> beam.ParDo(ReadFiles(self.max_bytes)).with_outputs(ERRORS, main="files")
        return {"hashes": read.files | "Hash" >> beam.Map(_sha256), ERRORS: read[ERRORS]}


class _FirstOfEach(beam.DoFn):
    """(sha256, uris) -> the first uri, to be labeled; ('copies') (first uri, other uri) for each other one."""

    def setup(self):
        self.copies = Metrics.counter(NAMESPACE, COPIES_METRIC)

    def process(self, element: tuple[str, Iterable[str]]):
        first, *others = sorted(element[1])
        yield first
        for other in others:
            self.copies.inc()
            yield beam.pvalue.TaggedOutput(COPIES, (first, other))


class OnePerContent(beam.PTransform):
    """(uri, sha256) -> {'main': one uri per distinct content, 'copies': (that uri, a uri with the same bytes)}."""

    def expand(self, hashes):
        return (hashes
                | "BySha256" >> beam.Map(lambda pair: (pair[1], pair[0]))
                | "Group" >> beam.GroupByKey()
                | "FirstOfEach" >> beam.ParDo(_FirstOfEach()).with_outputs(COPIES, main="main"))


def copied_metric(counted: str) -> str:
    """The counter of rows copied to duplicate files, per result (`results`) or per failed stage (`decode_errors`):
    the end-of-job totals then count files, as the rows do."""
    return f"copied_{counted}"


def _with_copies(element: tuple[str, dict[str, Iterable]], table: str):
    _, found = element
    copies = list(found["copies"])
    for row in found["rows"]:
        yield row
        if copies and table in (RESULTS, ERRORS):
            counted = RESULTS if table == RESULTS else errors_metric(row["stage"])
            Metrics.counter(NAMESPACE, copied_metric(counted)).inc(len(copies))
        for other in copies:
            yield {**row, "uri": other}


class CopyRows(beam.PTransform):
    """Rows of one table (dicts with a `uri`) -> the same rows plus, for each copy (uri, other uri), the row again
    for `other`."""

    def __init__(self, copies, table: str):
        super().__init__()
        self.copies, self.table = copies, table

    def expand(self, rows):
        return ({"rows": rows | "ByUri" >> beam.Map(lambda row: (row["uri"], row)), "copies": self.copies}
                | "Join" >> beam.CoGroupByKey()
                | "Copy" >> beam.FlatMap(_with_copies, self.table))
