"""Content dedupe: files with the same bytes are read, decoded and embedded once, and every uri still gets its own
rows. "The same bytes" comes from the store's listing where it can (its MD5), so an object is fetched once."""
from __future__ import annotations

import hashlib
from typing import Iterable, Optional, Union

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.internals import output_types
from transforms.metrics import NAMESPACE, errors_metric
from transforms.read import DEFAULT_MAX_BYTES, ReadFiles
from transforms.records import ERRORS, RESULTS, Embedded, ImageInfo, ListingFailure
from transforms.stores import is_local

COPIES_METRIC = "duplicates_not_embedded"
COPIES = "copies"
RESUMED = "resumed"  # images whose vector an unfinished run saved (transforms.progress)
RESUMED_METRIC = "resumed_not_embedded"
_TO_HASH = "to_hash"


def _sha256_key(element: tuple[str, bytes]) -> tuple[str, str]:
    uri, data = element
    return uri, f"sha256:{hashlib.sha256(data).hexdigest()}"


@output_types(tuple[str, str], {_TO_HASH: Union[str, ListingFailure]})
class _ListedKey(beam.DoFn):
    """(uri, listing checksum) -> (uri, content key) where the listing settles it; local files (and listing
    failures, which the reader turns into error rows) go to be hashed."""

    def process(self, listed: Union[tuple[str, Optional[str]], ListingFailure]):
        if isinstance(listed, ListingFailure):
            yield beam.pvalue.TaggedOutput(_TO_HASH, listed)
            return
        uri, checksum = listed
        if checksum:
            yield uri, checksum
        elif is_local(uri):
            yield beam.pvalue.TaggedOutput(_TO_HASH, uri)
        else:  # a multipart or composite object lists no MD5: its own key, so it is still fetched once
            yield uri, f"uri:{uri}"


class ContentKeys(beam.PTransform):
    """(uri, listing checksum or None), as MatchFiles(checksums=True) lists them -> {'keys': (uri, content key),
    'errors': read errors}. The key is the store's MD5 where the listing gives one (no request), the sha256 of a
    local file's bytes (a read from disk), or, for an object whose listing has no MD5, its uri (never deduplicated).
    Only keys leave this step: no shuffle carries an image, and no object is fetched to be hashed."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__()
        self.max_bytes = max_bytes

    def expand(self, listed):
        split = listed | "ListedKey" >> beam.ParDo(_ListedKey()).with_outputs(_TO_HASH, main="keys")
        read = split[_TO_HASH] | "ReadToHash" >> beam.ParDo(ReadFiles(self.max_bytes)).with_outputs(ERRORS,
                                                                                                      main="files")
        hashed = read.files | "Hash" >> beam.Map(_sha256_key)
        return {"keys": (split.keys, hashed) | "AllKeys" >> beam.Flatten(), ERRORS: read[ERRORS]}


@output_types(str, {RESUMED: tuple[ImageInfo, Embedded], COPIES: tuple[str, str]})
class _FirstOfEach(beam.DoFn):
    """(content key, {'uris': its uris, 'saved': vectors a rerun's progress holds for it}) -> the first uri, to be
    labeled, or (RESUMED) the saved (ImageInfo, Embedded) of that content, as the first uri's; (COPIES) (first uri,
    other uri) for each other one. Saved vectors of content no longer listed are dropped."""

    def setup(self):
        self.copies = Metrics.counter(NAMESPACE, COPIES_METRIC)
        self.resumed = Metrics.counter(NAMESPACE, RESUMED_METRIC)

    def process(self, element: tuple[str, dict[str, Iterable]]):
        uris = sorted(element[1]["uris"])
        if not uris:
            return
        first, *others = uris
        saved = next(iter(element[1].get("saved", ())), None)
        if saved is None:
            yield first
        else:
            self.resumed.inc()
            info, embedded = saved
            yield beam.pvalue.TaggedOutput(RESUMED, (info._replace(uri=first), embedded))
        for other in others:
            self.copies.inc()
            yield beam.pvalue.TaggedOutput(COPIES, (first, other))


class OnePerContent(beam.PTransform):
    """(uri, content key) -> {'main': one uri per distinct content, 'copies': (that uri, a uri with the same
    bytes)}; given `saved` ((content key, (ImageInfo, Embedded)) from transforms.progress), also 'resumed': the
    saved vector of each listed content that has one, in place of its uri in 'main'."""

    def __init__(self, saved: Optional[beam.PCollection] = None):
        super().__init__()
        self.saved = saved

    def expand(self, keys):
        by_content = keys | "ByContent" >> beam.Map(lambda pair: (pair[1], pair[0]))
        if self.saved is None:
            grouped = (by_content
                       | "Group" >> beam.GroupByKey()
                       | "Uris" >> beam.MapTuple(lambda key, uris: (key, {"uris": uris})))
        else:
            grouped = {"uris": by_content, "saved": self.saved} | "GroupWithSaved" >> beam.CoGroupByKey()
        return grouped | "FirstOfEach" >> beam.ParDo(_FirstOfEach()).with_outputs(COPIES, RESUMED, main="main")


def copied_metric(counted: str) -> str:
    """The counter of rows copied to duplicate files, per result (`results`) or per failed stage (`decode_errors`):
    the end-of-job totals then count files, as the rows do."""
    return f"copied_{counted}"


def _with_copies(element: tuple[str, dict[str, Iterable]], counted_as: str):
    """(uri, {table: its rows, 'copies': the other uris with its bytes}) -> each row tagged with its table, and
    again for each other uri."""
    _, found = element
    copies = list(found[COPIES])
    for table, rows in found.items():
        if table == COPIES:
            continue
        for row in rows:
            yield beam.pvalue.TaggedOutput(table, row)
            if copies and table in (RESULTS, ERRORS):
                counted = counted_as if table == RESULTS else copied_metric(errors_metric(row["stage"]))
                Metrics.counter(NAMESPACE, counted).inc(len(copies))
            for other in copies:
                yield beam.pvalue.TaggedOutput(table, {**row, "uri": other})


class CopyRows(beam.PTransform):
    """{table: rows (dicts with a `uri`)} -> {table: the same rows plus, for each copy (uri, other uri), the row again
    for `other`}, every table in one join with the copies. Copied result rows count under `counted_as` (labeled, by
    default; rows kept from a previous run count as kept), copied error rows per failed stage."""

    def __init__(self, copies, counted_as: str = copied_metric(RESULTS)):
        super().__init__()
        self.copies, self.counted_as = copies, counted_as

    # `tables` (table -> its rows' PCollection) carries no annotation: Beam 2.78 reads one on expand's input as a type
    # hint and warns on every job that a dict is not one it can check.
    def expand(self, tables):
        keyed = {table: rows | f"ByUri{table.title()}" >> beam.Map(lambda row: (row["uri"], row))
                 for table, rows in tables.items()}
        copied = ({**keyed, COPIES: self.copies}
                  | "Join" >> beam.CoGroupByKey()
                  | "Copy" >> beam.FlatMap(_with_copies, self.counted_as).with_outputs(*tables))
        return {table: copied[table] for table in tables}
