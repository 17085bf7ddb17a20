"""Writer: the Parquet schemas of the output contract and the sinks for results and errors."""
from __future__ import annotations

import apache_beam as beam
import pyarrow as pa

RESULTS_SCHEMA = pa.schema([
    ("uri", pa.string()),
    ("labels", pa.list_(pa.string())),  # best first, top_k of them
    ("scores", pa.list_(pa.float32())),  # cosine similarity of each reported label
    ("probs", pa.list_(pa.float32())),  # softmax over all labels of the set
    ("model", pa.string()),
    ("width", pa.int32()),  # upright size of the original image, after EXIF orientation
    ("height", pa.int32()),
    ("sha256", pa.string()),  # of the file's bytes
    # With --explain on `local`: the ImageNet classes (and their probabilities) behind the image's vector.
    ("evidence", pa.list_(pa.struct([("class", pa.string()), ("prob", pa.float32())]))),
])

ERRORS_SCHEMA = pa.schema([
    ("uri", pa.string()),
    ("stage", pa.string()),  # read, decode or embed
    ("error", pa.string()),  # exception type
    ("message", pa.string()),
])


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
