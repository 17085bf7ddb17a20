"""Writer: the sinks for results and errors in Parquet, JSON lines or CSV, and reading a shard back.
The schemas come from the row definitions in records.py; every format has the same columns in the same order."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import uuid
from typing import Any, Callable, Iterator

import apache_beam as beam
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.records import ROW_TYPES, embeddings_schema
from transforms.stores import use_worker_options

FORMATS = ("parquet", "jsonl", "csv")


def _json_line(row: dict[str, Any], names: list[str]) -> str:
    return json.dumps({name: row[name] for name in names}, ensure_ascii=False)


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


class WriteRows(beam.PTransform):
    """Rows as dicts -> shards PREFIX-SSSSS-of-NNNNN.{parquet,jsonl,csv}: Parquet with the explicit schema, one JSON
    object per line, or CSV with a header row in every shard."""

    def __init__(self, prefix: str, schema: pa.Schema, file_format: str = "parquet", num_shards: int = 0):
        super().__init__()
        if file_format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {file_format!r}")
        self.prefix, self.schema, self.file_format, self.num_shards = prefix, schema, file_format, num_shards

    def expand(self, rows):
        suffix = f".{self.file_format}"
        if self.file_format == "parquet":
            return rows | beam.io.WriteToParquet(self.prefix, self.schema, file_name_suffix=suffix,
                                                 num_shards=self.num_shards)
        names = self.schema.names
        if self.file_format == "jsonl":
            lines, header = rows | "ToJson" >> beam.Map(_json_line, names), None
        else:
            lines = rows | "ToCsv" >> beam.Map(lambda row: _csv_line([row[name] for name in names]))
            header = _csv_line(names)
        return lines | beam.io.WriteToText(self.prefix, file_name_suffix=suffix, num_shards=self.num_shards,
                                           header=header)


class WriteEmbeddings(beam.PTransform):
    """Embedding rows -> Parquet shards PREFIX-SSSSS-of-NNNNN.parquet, vectors as fixed-size lists of `dtype`."""

    def __init__(self, prefix: str, dim: int, dtype: str = "float32", num_shards: int = 0):
        super().__init__()
        self.prefix, self.dim, self.dtype, self.num_shards = prefix, dim, dtype, num_shards

    def expand(self, rows):
        return (rows
                | "Cast" >> beam.Map(_cast_embedding, self.dim, np.dtype(self.dtype))
                | beam.io.WriteToParquet(self.prefix, embeddings_schema(self.dim, self.dtype),
                                         file_name_suffix=".parquet", num_shards=self.num_shards))


def _cast_embedding(row: dict[str, Any], dim: int, dtype: np.dtype) -> dict[str, Any]:
    vector = np.asarray(row["embedding"], dtype=dtype)
    if vector.shape != (dim,):
        raise ValueError(f"the backend gave {row['uri']!r} a vector of shape {vector.shape}, not ({dim},)")
    return {**row, "embedding": vector}


def probe_writable(folder: str) -> None:
    """Creates and deletes a small file in `folder` through Beam's FileSystems, the layer the sinks write with:
    a missing filesystem extra or a refused write raises here, before any image is read."""
    probe = f"{folder.rstrip('/')}/_probe-{uuid.uuid4().hex}.tmp"
    handle = FileSystems.create(probe)
    try:
        handle.write(b"probe")
        handle.close()
    finally:
        if FileSystems.exists(probe):
            FileSystems.delete([probe])


def read_rows(path: str) -> Iterator[dict[str, Any]]:
    """The rows of one shard as dicts, whatever its format (CSV cells holding JSON lists are parsed back), streamed:
    a Parquet shard is read one record batch at a time, so a shard of a million embeddings never sits in memory."""
    use_worker_options()
    with fsspec.open(path, "rb") as f:
        if path.endswith(".parquet"):
            for batch in pq.ParquetFile(f).iter_batches():
                yield from batch.to_pylist()
        elif path.endswith(".jsonl"):
            for line in io.TextIOWrapper(f, encoding="utf-8"):
                if line.strip():
                    yield json.loads(line)
        else:
            for row in csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline="")):
                yield {name: _CSV_PARSERS.get(name, str)(cell) for name, cell in row.items()}


def read_vector_batches(path: str, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """(uris, (n, d) float32 vectors) of one embeddings shard (always Parquet), `batch_size` rows at a time, straight
    from Arrow's buffers: no row dicts, no Python floats."""
    use_worker_options()
    with fsspec.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=["uri", "embedding"]):
            vectors = batch.column("embedding")
            matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(batch), vectors.type.list_size)
            yield batch.column("uri").to_pylist(), matrix.astype(np.float32, copy=False)


def count_rows(path: str) -> int:
    """Rows in one shard, from the Parquet footer or by counting lines."""
    use_worker_options()
    with fsspec.open(path, "rb") as f:
        if path.endswith(".parquet"):
            return pq.ParquetFile(f).metadata.num_rows
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        if path.endswith(".csv"):  # a quoted cell may hold a line break: count records, not lines
            return sum(1 for _ in csv.reader(text)) - 1
        return sum(1 for line in text if line.strip())
