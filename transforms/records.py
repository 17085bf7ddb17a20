"""The records that flow between stages and the two output rows, each defined once: the Parquet schemas, the row
dicts and the README's column tables all come from the dataclasses below."""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import numpy as np
import pyarrow as pa

# Tags of the two outputs of ZeroShotClassify; every stage's dead letters go to ERRORS.
RESULTS = "results"
ERRORS = "errors"
REVIEW = "review"  # the images a labeling run was least sure of, to confirm by hand (review.csv)
EMBEDDINGS = "embeddings"  # the image vectors, kept with --keep_embeddings
EMBEDDING_DTYPES = ("float32", "float16")


class ImageInfo(NamedTuple):
    """Facts about one input image that are carried to the output row, and its MD5, by which a rerun finds the
    vector it saved (an object store lists that, not the sha256)."""

    uri: str
    sha256: str
    width: int
    height: int
    md5: str = ""


class Embedded(NamedTuple):
    """What a model handler returns for one image: its unit vector, when asked for what built it (e.g. the
    ImageNet classes behind a `local` vector, as (name, probability) pairs), and how strongly the model's evidence
    backs the vector (EmbeddingRow.strength)."""

    vector: np.ndarray
    evidence: Sequence[tuple[str, float]] = ()
    strength: float = 1.0


class EmbedFailure(NamedTuple):
    """What a model handler returns in place of a vector for one image it could not embed (e.g. rejected)."""

    error: str
    message: str


class ListingFailure(NamedTuple):
    """What the listing yields in place of a URI for an input it cannot hand on to be read (a folder it may not
    list, a file name that is not UTF-8): the reader turns it into that input's `read` error row."""

    uri: str
    error: str
    message: str


def column(arrow_type: pa.DataType, meaning: str, shown_type: str = "") -> Any:
    """An output column: a dataclass field with its Parquet type and the sentence the docs show (and the type they
    show, where the schema settles it per run)."""
    return dataclasses.field(metadata={"arrow": arrow_type, "meaning": meaning, "shown_type": shown_type})


@dataclasses.dataclass(frozen=True)
class ResultRow:
    """One labeled image."""

    uri: str = column(pa.string(), "the input file")
    labels: list = column(pa.list_(pa.string()), "the chosen labels, best first: top_k of them, every label "
                                                 "above --threshold with --multi_label, or [\"unknown\"]")
    scores: list = column(pa.list_(pa.float32()), "cosine similarity of each reported label")
    probs: list = column(pa.list_(pa.float32()), "probability of each reported label: softmax of the backend's "
                                                 "logit scale x cosine over all labels of the set (for `local`, "
                                                 "scaled by the image's evidence strength, and with a \"none of "
                                                 "these\" competitor), so a row sums to at most 1; for a model "
                                                 "that learned a bias (SigLIP), each label's own sigmoid of scale x "
                                                 "cosine + bias, which need not sum to 1; with --examples, with the "
                                                 "temperature and \"none of these\" bias fitted to them")
    model: str = column(pa.string(), "backend model id")
    width: int = column(pa.int32(), "upright width of the original image (after EXIF orientation)")
    height: int = column(pa.int32(), "upright height of the original image")
    sha256: str = column(pa.string(), "of the file's bytes")
    evidence: list = column(pa.list_(pa.struct([("class", pa.string()), ("prob", pa.float32()),
                                                ("label", pa.string())])),
                            "with --explain on `local`: the ImageNet classes (and probabilities) behind the "
                            "image's vector, each with the label whose WordNet concept covers it (null: none "
                            "does); empty otherwise")


@dataclasses.dataclass(frozen=True)
class ReviewRow:
    """One image a labeling run was least sure of, for a person to confirm (review.csv)."""

    uri: str = column(pa.string(), "the image file")
    label: str = column(pa.string(), "empty: type the right label here; rows left empty are skipped, so the file, "
                                     "filled in, is an --examples file")
    top_prob: float = column(pa.float32(), "the probability of the run's best label (0 for `unknown`); the rows "
                                           "go from the least sure up")
    top_labels: str = column(pa.string(), "the run's labels for the image, best first, each with its probability")
    sha256: str = column(pa.string(), "of the file's bytes")


@dataclasses.dataclass(frozen=True)
class ErrorRow:
    """One input that could not be labeled, and why."""

    uri: str = column(pa.string(), "the input file")
    stage: str = column(pa.string(), "where it failed: read, decode or embed")
    error: str = column(pa.string(), "exception type")
    message: str = column(pa.string(), "what went wrong (at most 2,000 characters)")


@dataclasses.dataclass(frozen=True)
class EmbeddingRow:
    """One image's vector, kept so that relabeling and search need no image model."""

    uri: str = column(pa.string(), "the input file")
    sha256: str = column(pa.string(), "of the file's bytes")
    model: str = column(pa.string(), "backend model id; relabel and search refuse vectors of another model")
    embedding: Any = column(pa.list_(pa.float32()), "the image's unit vector in the backend's space (dimension: "
                                                    "local 384, nomic 768); float32, or float16 with "
                                                    "--embeddings_dtype float16",
                            shown_type="fixed_size_list<float or halffloat>[dimension]")
    width: int = column(pa.int32(), "upright width of the original image")
    height: int = column(pa.int32(), "upright height of the original image")
    strength: float = column(pa.float32(), "how strongly the model's evidence backs the vector, at most 1: the "
                                           "image's logits are scaled by it (`local`: the classifier's probability "
                                           "in the classes the vector mixes, over --local_full_evidence; 1 for the "
                                           "other backends)")


@dataclasses.dataclass(frozen=True)
class SearchHit:
    """One image found for a text query."""

    query: str = column(pa.string(), "the text query")
    rank: int = column(pa.int32(), "1 for the best image of the query")
    uri: str = column(pa.string(), "the image file")
    score: float = column(pa.float32(), "cosine similarity of the image and the query")


@dataclasses.dataclass(frozen=True)
class IndexRow:
    """One image of a vector index (pipelines.index): what its run knew of it, and its vector."""

    uri: str = column(pa.string(), "the image file")
    labels: list = column(pa.list_(pa.string()), "the labels its run gave it, best first (empty for vectors brought "
                                                 "with --vectors, or an image the run did not label)")
    top_prob: float = column(pa.float32(), "the probability of its best label (null: none)")
    width: int = column(pa.int32(), "upright width of the original image (null: not known)")
    height: int = column(pa.int32(), "upright height of the original image (null: not known)")
    sha256: str = column(pa.string(), "of the file's bytes (null: not known)")
    embedding: Any = column(pa.list_(pa.float32()), "the image's unit vector", shown_type="fixed_size_list<float>"
                                                                                          "[dimension]")


@dataclasses.dataclass(frozen=True)
class TopicRow:
    """One topic of the images of a run (pipelines.topics)."""

    topic: int = column(pa.int32(), "1 for the largest topic, then by size")
    size: int = column(pa.int64(), "images in the topic")
    name: str = column(pa.string(), "the vocabulary label nearest the topic's centre; no two topics share one")
    words: list = column(pa.list_(pa.string()), "the name, then the other vocabulary labels nearest the centre")
    examples: list = column(pa.list_(pa.string()),
                            "the 12 images nearest the centre (fewer in a smaller topic), nearest first")
    mean_similarity: float = column(pa.float32(), "mean cosine of the topic's images to its centre: how tight it is")


@dataclasses.dataclass(frozen=True)
class ImageTopic:
    """Where one image of a run falls: its topic and its place on the map."""

    uri: str = column(pa.string(), "the image file")
    topic: int = column(pa.int32(), "its topic (the `topic` of a topics row): the one whose centre is nearest")
    similarity: float = column(pa.float32(), "cosine of the image and its topic's centre")
    x: float = column(pa.float32(), "the map: the image's vector on the first principal axis of the run's vectors")
    y: float = column(pa.float32(), "the map: on the second principal axis")


@dataclasses.dataclass(frozen=True)
class SavedVector:
    """One embedded image as a classify job saves it while it runs (transforms.progress): what a rerun needs to rank
    it without reading, decoding or embedding it again. Not an output table: the commit deletes these files."""

    uri: str = column(pa.string(), "the input file")
    sha256: str = column(pa.string(), "of the file's bytes")
    md5: str = column(pa.string(), "as the store lists it (hex), by which a rerun finds the image; empty if unknown")
    width: int = column(pa.int32(), "upright width of the original image")
    height: int = column(pa.int32(), "upright height of the original image")
    vector: Any = column(pa.list_(pa.float32()), "the image's unit vector")
    evidence: list = column(pa.list_(pa.struct([("class", pa.string()), ("prob", pa.float64())])),
                            "what built the vector (--explain), as the handler returned it")
    strength: float = column(pa.float64(), "how strongly the evidence backs the vector (EmbeddingRow.strength)")

    @classmethod
    def of(cls, image: tuple[ImageInfo, Embedded]) -> "SavedVector":
        info, embedded = image
        return cls(info.uri, info.sha256, info.md5, info.width, info.height,
                   np.asarray(embedded.vector, dtype=np.float32),
                   [{"class": name, "prob": prob} for name, prob in embedded.evidence], embedded.strength)

    @staticmethod
    def image(row: dict[str, Any]) -> tuple[ImageInfo, Embedded]:
        """A saved row as the (ImageInfo, Embedded) pair the ranking takes; ValueError for a row saved before
        vectors carried their strength (its image is embedded again)."""
        if row["strength"] is None:
            raise ValueError("it was saved by an earlier version, before vectors carried their strength")
        return (ImageInfo(row["uri"], row["sha256"], row["width"], row["height"], row["md5"]),
                Embedded(np.asarray(row["vector"], dtype=np.float32),
                         [(item["class"], item["prob"]) for item in row["evidence"]], row["strength"]))


def arrow_schema(row_type: type) -> pa.Schema:
    return pa.schema([(field.name, field.metadata["arrow"]) for field in dataclasses.fields(row_type)])


def as_dict(row) -> dict[str, Any]:
    """The row as the dict Beam's Parquet sink writes (shallow: no deep copy of the lists)."""
    return {field.name: getattr(row, field.name) for field in dataclasses.fields(row)}


def markdown_table(row_type: type) -> str:
    """The column table of the README, from the definition itself."""
    lines = ["| column | type | meaning |", "| --- | --- | --- |"]
    for field in dataclasses.fields(row_type):
        arrow_type = field.metadata["shown_type"] or str(field.metadata["arrow"]).replace("item: ", "")
        lines.append(f"| {field.name} | {arrow_type} | {field.metadata['meaning']} |")
    return "\n".join(lines)


ROW_TYPES = (ResultRow, ReviewRow, ErrorRow, EmbeddingRow, SearchHit, TopicRow, ImageTopic, IndexRow)
RESULTS_SCHEMA = arrow_schema(ResultRow)
ERRORS_SCHEMA = arrow_schema(ErrorRow)
REVIEW_SCHEMA = arrow_schema(ReviewRow)
SEARCH_SCHEMA = arrow_schema(SearchHit)
TOPICS_SCHEMA = arrow_schema(TopicRow)
IMAGE_TOPICS_SCHEMA = arrow_schema(ImageTopic)
SAVED_VECTORS_SCHEMA = arrow_schema(SavedVector)


def embeddings_schema(dim: int, dtype: str = "float32") -> pa.Schema:
    """The embeddings table's schema: a fixed-size list of `dim` floats of `dtype` (float32, or float16 at half the
    bytes with cosines within about 1e-3)."""
    schema = arrow_schema(EmbeddingRow)
    vector_type = pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), dim)
    return schema.set(schema.get_field_index("embedding"), pa.field("embedding", vector_type))


def index_rows_schema(dim: int) -> pa.Schema:
    """The index's rows table's schema: its vectors a fixed-size list of `dim` float32."""
    schema = arrow_schema(IndexRow)
    return schema.set(schema.get_field_index("embedding"), pa.field("embedding", pa.list_(pa.float32(), dim)))


def embedding_row(image: tuple[ImageInfo, Embedded], model_id: str) -> dict[str, Any]:
    """The embeddings-table row of one embedded image (its vector stays a float32 array until it is written)."""
    info, embedded = image
    return as_dict(EmbeddingRow(info.uri, info.sha256, model_id, embedded.vector, info.width, info.height,
                                embedded.strength))


def error_row(uri: str, stage: str, error_type: str, message: str) -> dict[str, str]:
    """A dead-letter row: where the input failed (read/decode/embed), the error's type name and its message."""
    return as_dict(ErrorRow(uri, stage, error_type, message[:2000]))


# The tagged output of a stage whose only dead letters are error rows, as its type hints declare it
# (transforms.internals.output_types).
ERROR_OUTPUT = {ERRORS: dict[str, str]}


def exception_row(uri: str, stage: str, error: BaseException) -> dict[str, str]:
    """The dead-letter row for an exception caught while processing `uri`."""
    return error_row(uri, stage, type(error).__name__, str(error))


if __name__ == "__main__":
    print(f"Results:\n\n{markdown_table(ResultRow)}\n\nReview:\n\n{markdown_table(ReviewRow)}\n\nErrors:\n\n{markdown_table(ErrorRow)}\n\n"
          f"Embeddings:\n\n{markdown_table(EmbeddingRow)}\n\nSearch hits:\n\n{markdown_table(SearchHit)}\n\n"
          f"Topics:\n\n{markdown_table(TopicRow)}\n\nImages of topics:\n\n{markdown_table(ImageTopic)}\n\n"
          f"Index rows:\n\n{markdown_table(IndexRow)}")
