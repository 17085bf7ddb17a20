"""Stored embeddings: image vectors kept by a run, relabeled or searched by text without reading an image or loading
an image model. Each has a Beam transform for buckets and a library function for notebooks; both rank with the
same code as classify (rank.rank_rows, and one top-k per query)."""
from __future__ import annotations

import heapq
import logging
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import apache_beam as beam
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transforms.backends import Backend, get_backend, l2_normalize
from transforms.examples import Examples, teach
from transforms.faults import with_retries
from transforms.label_sets import check_label_names, load_templates
from transforms.manifest import Manifest, differing_setting
from transforms.rank import Decision, LabelMatrix, embed_label_set, rank_rows
from transforms.records import EMBEDDINGS, Embedded, ImageInfo, SearchHit, as_dict
from transforms.run_folder import check_shard, finished_manifest, manifest_files
from transforms.stores import use_worker_options
from transforms.write import parquet_schema, read_rows

_LOG = logging.getLogger("zero_shot")
DEFAULT_BATCH = 1024  # stored vectors per matrix product


class EmbeddingsMismatch(ValueError):
    """The stored vectors come from another model than the backend asked for: their cosines would mean nothing."""


def embeddings_of(run: str, backend: Backend) -> tuple[Manifest, list[str]]:
    """(manifest, embeddings shards) of the finished run in folder `run`, checked against `backend`'s model."""
    manifest = finished_manifest(run)
    if not manifest.shards.get(EMBEDDINGS):
        raise EmbeddingsMismatch(f"run {manifest.run_id} in {run!r} kept no embeddings "
                                 "(classify_images --keep_embeddings keeps them)")
    if differing_setting({"model": manifest.model}, {"model": backend.model_id}):  # the one comparison of settings
        raise EmbeddingsMismatch(f"the embeddings in {run!r} were made by model {manifest.model!r}; "
                                 f"backend {backend.name!r} as configured is {backend.model_id!r}")
    shards = manifest_files(run, manifest, EMBEDDINGS)
    for path, listed in zip(shards, manifest.shards[EMBEDDINGS]):
        check_shard(run, path, listed.rows)
    if shards and "strength" not in parquet_schema(shards[0]).names:
        _LOG.warning("the embeddings in %r were kept by an earlier version, before vectors carried their evidence "
                     "strength: they are ranked at full strength, as they were then (an image the model saw little "
                     "in may get a high probability); classify with --keep_embeddings again to rank them as new "
                     "runs do", run)
    return manifest, shards


def stored_vector(row: Mapping[str, Any]) -> tuple[ImageInfo, Embedded]:
    """An embeddings row as the (ImageInfo, Embedded) pair the ranking takes; float16 vectors come back float32."""
    vector = np.asarray(row["embedding"], dtype=np.float32)
    return ImageInfo(row["uri"], row["sha256"], row["width"], row["height"]), Embedded(vector, (), _strength(row))


def _strength(row: Mapping[str, Any]) -> float:
    """A stored vector's evidence strength; 1 for a row kept before vectors carried one (ranked as it was then)."""
    strength = row.get("strength")
    return 1.0 if strength is None else float(strength)


def stored_vectors_of(shards: Sequence[str], uris: Sequence[str]) -> dict[str, tuple[str, np.ndarray, float]]:
    """uri -> (sha256, float32 vector, strength) of the stored images among `uris`: only the row groups that hold
    one of them are read past their uri column, so a few examples cost little in a run of millions."""
    use_worker_options()
    wanted, found = pa.array(list(uris), type=pa.string()), {}
    for path in shards:
        def read(path: str = path) -> None:
            with fsspec.open(path, "rb") as f:
                shard = pq.ParquetFile(f)
                columns = [name for name in ("uri", "sha256", "embedding", "strength")
                           if name in shard.schema_arrow.names]  # no strength: kept by an earlier version
                for group in range(shard.num_row_groups):
                    hits = pc.is_in(shard.read_row_group(group, columns=["uri"]).column("uri"), value_set=wanted)
                    if pc.any(hits).as_py():
                        rows = shard.read_row_group(group, columns=columns).filter(hits)
                        for row in rows.to_pylist():
                            found[row["uri"]] = (row["sha256"], np.asarray(row["embedding"], dtype=np.float32),
                                                 _strength(row))
        with_retries(path, read)
    return found


class ReadEmbeddings(beam.PTransform):
    """Embeddings shards -> (ImageInfo, Embedded) per stored image, shards spread over workers, rows streamed."""

    def __init__(self, shards: Sequence[str]):
        super().__init__()
        self.shards = list(shards)

    def expand(self, pbegin):
        return (pbegin
                | "Shards" >> beam.Create(self.shards)
                | "Spread" >> beam.Reshuffle()
                | "Rows" >> beam.FlatMap(read_rows)
                | "Vectors" >> beam.Map(stored_vector))


# Text-to-image search.

def embed_queries(queries: Sequence[str], backend: Backend) -> np.ndarray:
    """One unit vector per query, as the backend embeds a text (no prompt template: a query is already a text)."""
    return l2_normalize(backend.load().embed_texts(list(queries)))


def top_hits(batch: Sequence[tuple[ImageInfo, Embedded]], query_vectors: np.ndarray,
             images_per_query: int) -> Iterator[tuple[int, tuple[float, str]]]:
    """(query index, (cosine, uri)) for the `images_per_query` best images of the batch per query: one matrix
    product and one partial sort per batch, so only that many candidates per query and batch leave it."""
    vectors = np.stack([embedded.vector for _, embedded in batch])
    scores = vectors @ query_vectors.T  # (images, queries)
    k = min(images_per_query, len(batch))
    best = np.argpartition(-scores, k - 1, axis=0)[:k]
    for q in range(query_vectors.shape[0]):
        for i in best[:, q]:
            yield q, (float(scores[i, q]), batch[i][0].uri)


def hit_rows(query_hits: tuple[int, Iterable[tuple[float, str]]], queries: Sequence[str]) -> Iterator[dict]:
    """SearchHit rows of one query (its number and best (cosine, uri) pairs), rank 1 first."""
    q, hits = query_hits
    for rank, (score, uri) in enumerate(sorted(hits, key=lambda hit: (-hit[0], hit[1])), start=1):
        yield as_dict(SearchHit(queries[q], rank, uri, score))


def best_first(hit: tuple[float, str]) -> tuple[float, tuple[int, ...]]:
    # Top keeps the largest keys: the higher cosine, and among equal ones (copies of one image) the smaller uri.
    return hit[0], tuple(-ord(c) for c in hit[1])


class SearchImages(beam.PTransform):
    """(ImageInfo, Embedded) of stored images -> SearchHit rows: the `images_per_query` best images per query.

    The queries are embedded once (a side input); the stored vectors are scanned in batches, one matrix product
    each; Beam's Top combiner keeps each query's best, combining partial results per worker, so no full sort and no
    collection of all scores on one worker."""

    def __init__(self, queries: Sequence[str], backend: Backend, images_per_query: int = 20,
                 batch_size: int = DEFAULT_BATCH):
        super().__init__()
        self.queries, self.backend, self.images_per_query = list(queries), backend, images_per_query
        self.batch_size = batch_size

    def expand(self, vectors):
        query_vectors = (vectors.pipeline
                         | "Queries" >> beam.Create([self.queries])
                         | "EmbedQueries" >> beam.Map(embed_queries, self.backend))
        return (vectors
                | "Batch" >> beam.BatchElements(min_batch_size=self.batch_size, max_batch_size=self.batch_size)
                | "BatchTop" >> beam.FlatMap(top_hits, beam.pvalue.AsSingleton(query_vectors),
                                           self.images_per_query)
                | "Top" >> beam.combiners.Top.PerKey(self.images_per_query, key=best_first)
                | "Rows" >> beam.FlatMap(hit_rows, self.queries))


# Library functions, for a few thousand stored images in a notebook.

EmbeddingsSource = Union[str, Iterable[Mapping[str, Any]]]


def _stored(embeddings: EmbeddingsSource, backend: Backend) -> list[tuple[ImageInfo, Embedded]]:
    rows = ((row for path in embeddings_of(embeddings, backend)[1] for row in read_rows(path))
            if isinstance(embeddings, str) else embeddings)
    return [stored_vector(row) for row in rows]


def relabel(embeddings: EmbeddingsSource, labels: Union[Sequence[str], Mapping[str, Sequence[str]]],
            backend: Union[str, Backend] = "local", templates: Optional[Sequence[str]] = None,
            decision: Decision = Decision(), examples: Optional[Examples] = None) -> list[dict]:
    """Result rows (as classify_images writes them) for stored image vectors. Only the backend's text side is used.

    Args:
        embeddings: a run folder kept with --keep_embeddings, or embeddings rows (dicts as `read_run` gives them).
        labels: label names, or label -> the phrases embedded for it.
        backend: a backend name or a configured Backend; it must be the model that made the vectors.
        templates: prompts with one `{}` (default: the backend's own).
        decision: top-k, --min_prob or multi-label, as on the command line.
        examples: confirmed images that teach the labels (transforms.examples.embed_examples).
    """
    backend = get_backend(backend) if isinstance(backend, str) else backend
    stored = _stored(embeddings, backend)
    if not stored:
        return []
    phrases = dict(labels) if isinstance(labels, Mapping) else {label: [label] for label in labels}
    check_label_names(list(phrases), "relabel's labels")
    matrix: LabelMatrix = embed_label_set(phrases, list(templates or load_templates(backend.default_templates)),
                                          backend.load())
    if examples is not None:
        matrix = teach(matrix, examples, backend.logit_scale, backend.none_margin)
    return [row for start in range(0, len(stored), DEFAULT_BATCH)
            for row in rank_rows(stored[start:start + DEFAULT_BATCH], matrix, backend.logit_scale, backend.model_id,
                                 decision, backend.none_margin)]


def search_images(embeddings: EmbeddingsSource, queries: Sequence[str], backend: Union[str, Backend] = "local",
                  images_per_query: int = 20) -> list[dict]:
    """SearchHit rows: the best stored images per query, best first.

    Args:
        embeddings: a run folder kept with --keep_embeddings, or embeddings rows (dicts as `read_run` gives them).
        queries: texts to search by, embedded as the backend embeds a text (no prompt template).
        backend: a backend name or a configured Backend; it must be the model that made the vectors.
        images_per_query: how many images each query gets.
    """
    backend = get_backend(backend) if isinstance(backend, str) else backend
    stored = _stored(embeddings, backend)
    if not stored:
        return []
    query_vectors = embed_queries(queries, backend)
    best: dict[int, list[tuple[float, str]]] = {q: [] for q in range(len(queries))}
    for start in range(0, len(stored), DEFAULT_BATCH):
        for q, hit in top_hits(stored[start:start + DEFAULT_BATCH], query_vectors, images_per_query):
            best[q].append(hit)
    return [row for q, hits in best.items()
            for row in hit_rows((q, heapq.nlargest(images_per_query, hits, key=best_first)), queries)]
