"""Writer: the sinks for results and errors (their schemas are defined with the rows, in records.py)."""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa


class WriteParquet(beam.PTransform):
    """Rows as dicts -> Parquet shards PREFIX-SSSSS-of-NNNNN.parquet with an explicit schema."""

    def __init__(self, prefix: str, schema: pa.Schema, num_shards: int = 0):
        super().__init__()
        self.prefix = prefix
        self.schema = schema
        self.num_shards = num_shards

    def expand(self, rows):
        return rows | beam.io.WriteToParquet(
            self.prefix, self.schema, file_name_suffix=".parquet", num_shards=self.num_shards
        )
