"""Writer: the sinks for results and errors in Parquet, JSON lines or CSV, and reading a shard back.
The schemas come from the row definitions in records.py; every format has the same columns in the same order."""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import random
import uuid
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional

import apache_beam as beam
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.transforms.window import GlobalWindows

from transforms import files
from transforms.faults import stream_with_retries, with_retries
from transforms.records import ROW_TYPES, embeddings_schema
from transforms.stores import use_worker_options

FORMATS = ("parquet", "jsonl", "csv")


def _json_line(row: dict[str, Any], names: list[str]) -> str:
    return json.dumps({name: row[name] for name in names}, ensure_ascii=False)


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula (OWASP's list)


def spreadsheet_cell(text: str) -> str:
    """`text` as a cell of a CSV made for people's spreadsheets (review.csv, per_class.csv): one that a spreadsheet
    would run as a formula (a label "=HYPERLINK(...)") gets a leading apostrophe, which shows it as text."""
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def from_spreadsheet_cell(text: str) -> str:
    """The text spreadsheet_cell was given: a cell read back from such a CSV (a review.csv given as --examples)."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_STARTS) else text


def _csv_line(values: list[Any]) -> str:
    """One CSV record, quoted as RFC 4180 needs (a cell holding a comma, a quote or a line break is quoted); lists
    and structs as JSON, so a cell never needs a second parser to split. The line break ends the record in the sink.
    """
    buffer = io.StringIO()
    # The csv module quotes a cell holding a character of the line terminator: "\r\n" makes it quote both breaks.
    csv.writer(buffer, lineterminator="\r\n").writerow(
        [json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v for v in values])
    return buffer.getvalue()[:-2]


def _csv_parser(arrow_type: pa.DataType) -> Callable[[str], Any]:
    """How a CSV cell of a column of `arrow_type` becomes the value Parquet would give: lists and structs were
    written as JSON, numbers as text; strings stay as they are, whatever they start with."""
    if pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type) or pa.types.is_struct(arrow_type):
        return json.loads
    if pa.types.is_integer(arrow_type):
        return int
    if pa.types.is_floating(arrow_type):
        return float
    return str


# Column name -> cell parser, from every row definition (a name means one type in every table).
_CSV_PARSERS = {field.name: _csv_parser(field.metadata["arrow"])
                for row_type in ROW_TYPES for field in dataclasses.fields(row_type)}


class Shard(NamedTuple):
    """One shard a sink wrote: its path, and how many rows it holds."""
    path: str
    rows: int


class ShardFile:
    """One shard being written through fsspec (transforms.files), rows appended in batches: a Parquet row group per
    batch, or lines of JSON or CSV."""

    def __init__(self, path: str, schema: pa.Schema, file_format: str):
        self.path, self.schema, self.file_format, self.rows = path, schema, file_format, 0
        self._handle = files.open_write(path)
        self._parquet = pq.ParquetWriter(self._handle, schema) if file_format == "parquet" else None
        if file_format == "csv":
            self._handle.write(f"{_csv_line(schema.names)}\n".encode("utf-8"))

    def write(self, rows: list[dict[str, Any]]) -> None:
        names = self.schema.names
        if self._parquet:
            # from_pylist reads a missing key as null: a row without a column is a bug upstream, not a null.
            if missing := next((name for row in rows for name in names if name not in row), None):
                raise KeyError(f"a row for {self.path} has no {missing!r} column")
            self._parquet.write_table(pa.Table.from_pylist(rows, schema=self.schema))
        else:
            line = _json_line if self.file_format == "jsonl" else _csv_record
            self._handle.write("".join(f"{line(row, names)}\n" for row in rows).encode("utf-8"))
        self.rows += len(rows)

    def write_table(self, rows: pa.Table) -> None:
        """Rows already in Arrow, of this shard's schema (Parquet only): written as they are, no dicts made."""
        self._parquet.write_table(rows)
        self.rows += len(rows)

    def close(self) -> Shard:
        if self._parquet:
            self._parquet.close()
        self._handle.close()
        return Shard(self.path, self.rows)


def _csv_record(row: dict[str, Any], names: list[str]) -> str:
    return _csv_line([row[name] for name in names])


def write_shard(path: str, rows: Iterable[dict[str, Any]], schema: pa.Schema, file_format: str,
                rows_per_write: int = 10_000) -> Shard:
    """Writes `rows` (none: an empty shard) as one shard at `path`, `rows_per_write` at a time."""
    shard = ShardFile(path, schema, file_format)
    iterator = iter(rows)
    while batch := list(itertools.islice(iterator, rows_per_write)):
        shard.write(batch)
    return shard.close()


def _write_numbered(grouped: tuple[int, Iterable[dict[str, Any]]], prefix: str, schema: pa.Schema, file_format: str,
                    num_shards: int, rows_per_write: int) -> Shard:
    """(shard index, its rows) -> shard `index` of `num_shards`, PREFIX-SSSSS-of-NNNNN.FORMAT."""
    index, rows = grouped
    return write_shard(shard_path(prefix, file_format, index, num_shards), rows, schema, file_format, rows_per_write)


class _WriteBundles(beam.DoFn):
    """Rows -> one shard per bundle, PREFIX-<random>.FORMAT, written as the rows come (in batches of
    `rows_per_write`) and closed when the bundle ends; emits its Shard."""

    def __init__(self, prefix: str, schema: pa.Schema, file_format: str, rows_per_write: int):
        self.prefix, self.schema, self.file_format, self.rows_per_write = prefix, schema, file_format, rows_per_write

    def start_bundle(self):
        self._shard: Optional[ShardFile] = None
        self._pending: list[dict[str, Any]] = []

    def process(self, row):
        self._pending.append(row)
        if len(self._pending) >= self.rows_per_write:
            self._flush()

    def _flush(self) -> None:
        if self._shard is None:
            self._shard = ShardFile(shard_path(self.prefix, self.file_format), self.schema, self.file_format)
        self._shard.write(self._pending)
        self._pending = []

    def finish_bundle(self):
        if self._pending:
            self._flush()
        if self._shard is not None:
            yield GlobalWindows.windowed_value(self._shard.close())


def shard_path(prefix: str, file_format: str, index: Optional[int] = None, num_shards: int = 0) -> str:
    """PREFIX-SSSSS-of-NNNNN.FORMAT for shard `index` of a fixed `num_shards`; else PREFIX-<16 hex digits>.FORMAT,
    a name no other bundle, worker or retry picks."""
    name = f"{index:05d}-of-{num_shards:05d}" if num_shards else uuid.uuid4().hex[:16]
    return f"{prefix}-{name}.{file_format}"


class _RoundRobin(beam.DoFn):
    """row -> (shard index, row), the indexes taken in turn from a random start in each bundle: every shard gets
    rows while there are as many rows as shards."""

    def __init__(self, num_shards: int):
        self.num_shards = num_shards

    def start_bundle(self):
        self._next = random.randrange(self.num_shards)

    def process(self, row):
        self._next = (self._next + 1) % self.num_shards
        yield self._next, row


class WriteRows(beam.PTransform):
    """Rows as dicts -> shard files of `prefix` -> one Shard (path, rows) for each: Parquet with the explicit schema,
    one JSON object per line, or CSV with a header row in every shard.

    Each bundle writes its rows into its own shard PREFIX-<random>.FORMAT as they come, where the rows are: no
    shuffle, no temporary copy to rename (a copy of every byte on an object store). Jobs write into a run folder
    that no reader sees until its manifest names the shards (run_folder.py), so a shard never needs a second
    name; a bundle that fails and is retried can leave a partial shard there, which the commit deletes. With
    `num_shards`, rows are shuffled into exactly that many shards PREFIX-SSSSS-of-NNNNN.FORMAT. A table with no
    rows gets one empty shard, so its readers still find its columns.

    Args:
        prefix: where the shards go, any fsspec URL: PREFIX-<16 hex>.FORMAT.
        schema: the table's columns (records.py: RESULTS_SCHEMA, ERRORS_SCHEMA...); every row must have each one.
        file_format: parquet, jsonl or csv.
        num_shards: 0 for a shard per bundle, else exactly that many.
        rows_per_write: rows per Parquet row group (or per write of text lines).
    """

    def __init__(self, prefix: str, schema: pa.Schema, file_format: str = "parquet", num_shards: int = 0,
                 rows_per_write: int = 10_000):
        super().__init__()
        if file_format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {file_format!r}")
        self.prefix, self.schema, self.file_format, self.num_shards = prefix, schema, file_format, num_shards
        self.rows_per_write = rows_per_write

    def expand(self, rows):
        if self.num_shards:
            written = (rows
                       | "RoundRobin" >> beam.ParDo(_RoundRobin(self.num_shards))
                       | "ToShards" >> beam.GroupByKey()
                       | "Write" >> beam.Map(_write_numbered, self.prefix, self.schema, self.file_format,
                                             self.num_shards, self.rows_per_write))
        else:
            written = rows | "Write" >> beam.ParDo(_WriteBundles(self.prefix, self.schema, self.file_format,
                                                                 self.rows_per_write))
        # Once every bundle's shard is written (a side input waits for that), the full list, empty shards added.
        return (rows.pipeline
                | "Once" >> beam.Impulse()
                | "Complete" >> beam.FlatMap(_with_missing, beam.pvalue.AsList(written), self.prefix, self.schema,
                                             self.file_format, self.num_shards))


def _with_missing(_, written: list[Shard], prefix: str, schema: pa.Schema, file_format: str,
                  num_shards: int) -> list[Shard]:
    """The shards written, and an empty one for each shard index no row went to; one if no bundle had a row."""
    if num_shards:
        paths = [shard_path(prefix, file_format, index, num_shards) for index in range(num_shards)]
    else:
        paths = [] if written else [shard_path(prefix, file_format)]
    done = {shard.path for shard in written}
    return written + [write_shard(path, [], schema, file_format, 1) for path in paths if path not in done]


class WriteEmbeddings(beam.PTransform):
    """Embedding rows -> Parquet shards of `prefix` (as WriteRows writes them), vectors as fixed-size lists of
    `dtype` -> one Shard for each."""

    def __init__(self, prefix: str, dim: int, dtype: str = "float32", num_shards: int = 0):
        super().__init__()
        self.prefix, self.dim, self.dtype, self.num_shards = prefix, dim, dtype, num_shards

    def expand(self, rows):
        return (rows
                | "Cast" >> beam.Map(_cast_embedding, self.dim, np.dtype(self.dtype))
                | "Write" >> WriteRows(self.prefix, embeddings_schema(self.dim, self.dtype), "parquet",
                                       self.num_shards))


def _cast_embedding(row: dict[str, Any], dim: int, dtype: np.dtype) -> dict[str, Any]:
    vector = np.asarray(row["embedding"], dtype=dtype)
    if vector.shape != (dim,):
        raise ValueError(f"the backend gave {row['uri']!r} a vector of shape {vector.shape}, not ({dim},)")
    return {**row, "embedding": vector}


def probe_writable(folder: str) -> None:
    """Creates and deletes a small file in `folder`, as the sinks write: a missing filesystem extra or a refused
    write raises here, before any image is read."""
    probe = f"{folder.rstrip('/')}/_probe-{uuid.uuid4().hex}.tmp"
    try:
        files.write(probe, b"probe")
    finally:
        files.delete([probe])


def read_rows(path: str) -> Iterator[dict[str, Any]]:
    """The rows of one shard as dicts, whatever its format (CSV cells holding JSON lists are parsed back), streamed:
    a Parquet shard is read one record batch at a time, so a shard of a million embeddings never sits in memory.
    A store that fails mid-shard is retried as faults.with_retries says, going on from where the read broke off."""
    use_worker_options()
    if path.endswith(".parquet"):
        for batch in parquet_batches(path):
            yield from batch.to_pylist()
    else:
        yield from stream_with_retries(path, lambda given: itertools.islice(_text_rows(path), given, None))


def _text_rows(path: str) -> Iterator[dict[str, Any]]:
    with fsspec.open(path, "rb") as f:
        if path.endswith(".jsonl"):
            for line in io.TextIOWrapper(f, encoding="utf-8"):
                if line.strip():
                    yield json.loads(line)
        else:
            for row in csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline="")):
                yield {name: _CSV_PARSERS.get(name, str)(cell) for name, cell in row.items()}


def parquet_batches(path: str, **read: Any) -> Iterator[pa.RecordBatch]:
    """The record batches of one Parquet shard (`read`: ParquetFile.iter_batches's arguments), read again from the
    batch it broke off at while the store fails. One row group is read at a time: pyarrow's pre-buffering, its
    default, fetches every row group the iteration will reach before the first batch (a 1.5 GB shard of vectors took
    2.1 GB of memory to stream, 0.9 GB without it)."""
    def batches(given: int) -> Iterator[pa.RecordBatch]:
        with fsspec.open(path, "rb") as f:
            yield from itertools.islice(pq.ParquetFile(f, pre_buffer=False).iter_batches(**read), given, None)

    return stream_with_retries(path, batches)


def parquet_schema(path: str) -> pa.Schema:
    """The schema of a Parquet file, from its footer only, read again while the store fails."""
    def read() -> pa.Schema:
        with fsspec.open(path, "rb") as f:
            return pq.read_schema(f)
    return with_retries(path, read)


def vector_matrix(vectors: pa.Array, dimension: int) -> np.ndarray:
    """The (n, dimension) float32 matrix of a column of n vectors of `dimension` numbers each, straight from Arrow's
    buffer: no Python floats."""
    matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(vectors), dimension)
    return matrix.astype(np.float32, copy=False)


def read_vector_batches(path: str, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """(uris, (n, d) float32 vectors) of one embeddings shard (always Parquet), `batch_size` rows at a time, straight
    from Arrow's buffers: no row dicts, no Python floats."""
    use_worker_options()
    for batch in parquet_batches(path, batch_size=batch_size, columns=["uri", "embedding"]):
        vectors = batch.column("embedding")
        yield batch.column("uri").to_pylist(), vector_matrix(vectors, vectors.type.list_size)
