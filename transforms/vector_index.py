"""Vector index: the images of a kept run (or vectors you bring), searchable by text, vector or image as you type.

An index is a run folder (run_folder.py) like every job's output, local or on a bucket:

    INDEX/_SUCCESS                       manifest: job `index`, the model, and `details.ann` (IndexFacts)
    INDEX/run-.../rows-<id>.parquet      IndexRow: uri, labels, top_prob, width, height, sha256, embedding
    INDEX/run-.../ann-<id>.npz           the trained FAISS index, empty, and the list of each row's vector

Below EXACT_BELOW vectors the FAISS index is a flat one (exact inner products); from there on it is an inverted
file (IVF-Flat): the vectors are split among about 4·√n k-means lists and a query scans only the lists nearest it,
unquantized, so whatever it scans is scored exactly. The build measures recall@10 against exact search on a sample
of its own vectors and keeps the fewest lists to probe that reach TARGET_RECALL.

The vectors are stored once, in the rows: the ANN file holds only what training made (the lists' centres) and which
list each row's vector fell in, so opening an index fills each list at its final size from the rows, without
computing a distance, and a bucket never holds a second copy of the vectors as one object of gigabytes.

FAISS rather than LanceDB, measured at 1M vectors on this project's machine (docs/BENCHMARKS.md): its IVF-Flat
builds in a tenth of the time and answers in about a millisecond at recall 1.0, and an index on a bucket is read
once when it is opened rather than once per query. It needs the `search` extra (faiss-cpu), as the server needs
Starlette and uvicorn; nothing else in the package imports it.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import threading
import uuid
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transforms import files
from transforms.backends import Backend, l2_normalize
from transforms.faults import with_retries
from transforms.manifest import Manifest
from transforms.records import RESULTS_SCHEMA, index_rows_schema
from transforms.run_folder import finished_manifest, manifest_files
from transforms.stores import use_worker_options
from transforms.write import Shard, ShardFile, parquet_batches, parquet_schema, vector_matrix

ROWS = "rows"  # the index's table of images
ANN = "ann"  # its trained FAISS index and each vector's list, a one-shard table whose rows are its vectors
EXACT_BELOW = 100_000  # fewer vectors than this are searched exactly: a flat scan of them takes a few milliseconds
TARGET_RECALL = 0.99  # recall@10 the build probes enough lists for, on its sample of stored vectors
RECALL_QUERIES = 200  # stored vectors the build measures recall@10 with
MAX_K = 1000  # hits one search may ask for
MAX_QUERY_CHARS = 1000  # a text query longer than this is refused (the text towers read 512 tokens at most)
_READ_BATCH = 65_536  # vectors read from a rows shard at a time
TRAINING_PER_LIST = 48  # vectors that train each list's centre: FAISS asks for at least 39
ROWS_PER_SHARD = 100_000  # rows of one rows shard (150 MB at 384 dimensions): a bucket takes each as one upload
_LOG = logging.getLogger("zero_shot")


class SearchRequestError(ValueError):
    """A search the index cannot answer as asked (an unknown uri, a vector of another length, k out of range); the
    message is the one line a caller sees."""


class NotInIndex(SearchRequestError):
    """A uri the index does not hold."""


@dataclasses.dataclass(frozen=True)
class IndexFacts:
    """What an index's manifest says of it (`details.ann`): how it searches, and what the build measured."""

    kind: str  # "exact" (flat) or "ivf" (IVF-Flat)
    vectors: int
    dimension: int
    lists: int  # k-means lists of an IVF index; 0 for an exact one
    probes: int  # lists a query scans
    recall_at_10: float  # against exact search, on `recall_queries` stored vectors
    recall_queries: int
    order: tuple[str, ...]  # the rows shards' file names, in the order of the FAISS ids
    added: int = 0  # vectors added to the previous index by --skip_existing, without training it again

    def as_details(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, manifest: Manifest) -> "IndexFacts":
        """The facts of an index's manifest; ValueError for a run that is not an index."""
        facts = manifest.details.get(ANN) if manifest.job == "index" else None
        if not isinstance(facts, Mapping):
            raise ValueError(f"run {manifest.run_id} is a {manifest.job} run, not an index (zero-shot-labels index "
                             "builds one)")
        return cls(**dict(facts, order=tuple(facts["order"])))


class Hit(NamedTuple):
    """One image found: what the index row says of it, and its cosine with the query."""

    uri: str
    score: float
    labels: list
    top_prob: Optional[float]
    width: Optional[int]
    height: Optional[int]


# Building.

def top_probabilities(probs: pa.ChunkedArray) -> pa.Array:
    """The first probability of each list (the best label's), null for an empty one (`unknown`)."""
    probs = probs.combine_chunks()
    offsets = probs.offsets.to_numpy()
    values = probs.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    lengths = np.diff(offsets)
    first = values[np.minimum(offsets[:-1] - offsets[0], max(len(values) - 1, 0))] if len(values) else \
        np.zeros(len(lengths), np.float32)
    return pa.array(first, type=pa.float32(), mask=lengths == 0)


def read_columns(shards: Sequence[str], columns: Sequence[str], schema: pa.Schema) -> pa.Table:
    """`columns` of Parquet shards, one table in their order (empty, of `schema`, for none), each read whole."""
    use_worker_options()
    tables = []
    for path in shards:
        def read(path: str = path) -> pa.Table:
            with fsspec.open(path, "rb") as f:
                return pq.read_table(f, columns=list(columns))
        tables.append(with_retries(path, read))
    return pa.concat_tables(tables) if tables else schema.empty_table().select(list(columns))


def read_labels(results: Sequence[str]) -> pa.Table:
    """uri, labels, top_prob of a labeling run's result shards (Parquet): what each index row carries."""
    table = read_columns(results, ["uri", "labels", "probs"], RESULTS_SCHEMA)
    return pa.table({"uri": table["uri"], "labels": table["labels"], "top_prob": top_probabilities(table["probs"])})


def indexed_uris(shards: Sequence[str]) -> pa.Array:
    """The uris of rows shards (those --skip_existing keeps)."""
    return read_columns(shards, ["uri"], index_rows_schema(0))["uri"].combine_chunks()


def index_batch(batch: pa.RecordBatch, labels: Optional[pa.Table], dimension: int) -> pa.Table:
    """IndexRows of one batch of stored vectors (uri, embedding, and width, height, sha256 where it has them), each
    with the labels `labels` holds for its uri; vectors normalized here, once, so any file of vectors can be brought."""
    rows = len(batch)
    names = batch.schema.names
    matrix = l2_normalize(vector_matrix(batch.column("embedding"), dimension)).astype(np.float32)
    if labels is not None and len(labels):
        found = pc.index_in(batch.column("uri"), value_set=labels["uri"])
        row_labels, top_prob = labels["labels"].take(found), labels["top_prob"].take(found)
    else:
        row_labels = pa.nulls(rows, pa.list_(pa.string()))
        top_prob = pa.nulls(rows, pa.float32())

    schema = index_rows_schema(dimension)

    def column_or_null(name: str) -> pa.Array:
        arrow_type = schema.field(name).type
        return batch.column(name).cast(arrow_type) if name in names else pa.nulls(rows, arrow_type)

    return pa.table({
        "uri": batch.column("uri").cast(pa.string()),
        "labels": pc.fill_null(row_labels, pa.scalar([], pa.list_(pa.string()))),
        "top_prob": top_prob,
        "width": column_or_null("width"),
        "height": column_or_null("height"),
        "sha256": column_or_null("sha256"),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), dimension),
    }, schema=schema)


def write_rows_shards(source: str, folder: str, labels: Optional[pa.Table], dimension: int,
                      skip: Optional[pa.Array] = None) -> Iterator[Shard]:
    """Rows shards in `folder`, of ROWS_PER_SHARD rows at most, from one file of stored vectors: its images with
    their labels, less the uris in `skip` (those a previous index holds), streamed a batch at a time."""
    use_worker_options()
    present = parquet_schema(source).names
    columns = [name for name in ("uri", "embedding", "width", "height", "sha256") if name in present]
    shard = None
    for batch in parquet_batches(source, columns=columns, batch_size=_READ_BATCH):
        if batch.column("embedding").null_count:
            batch = batch.filter(pc.is_valid(batch.column("embedding")))
        if skip is not None and len(skip):
            batch = batch.filter(pc.invert(pc.is_in(batch.column("uri"), value_set=skip)))
        rows = index_batch(batch, labels, dimension) if len(batch) else None
        while rows is not None and len(rows):
            if shard is None:
                shard = ShardFile(files.join(folder, f"{ROWS}-{uuid.uuid4().hex[:16]}.parquet"),
                                  index_rows_schema(dimension), "parquet")
            taken = rows.slice(0, ROWS_PER_SHARD - shard.rows)
            shard.write_table(taken)
            rows = rows.slice(len(taken))
            if shard.rows == ROWS_PER_SHARD:
                yield shard.close()
                shard = None
    if shard is not None:
        yield shard.close()


def vector_dimension(path: str) -> int:
    """The length of the vectors in the `embedding` column of a Parquet file; ValueError if it has none, or they
    have no one length."""
    schema = parquet_schema(path)
    if "uri" not in schema.names or "embedding" not in schema.names:
        raise ValueError(f"{path} has no uri and embedding columns (it has {', '.join(schema.names)})")
    vector_type = schema.field("embedding").type
    if pa.types.is_fixed_size_list(vector_type):
        return vector_type.list_size
    if not pa.types.is_list(vector_type) and not pa.types.is_large_list(vector_type):
        raise ValueError(f"{path}'s embedding column is {vector_type}, not a list of numbers")
    first = next(parquet_batches(path, batch_size=1024, columns=["embedding"]), None)
    lengths = set(pc.list_value_length(first.column(0)).drop_null().to_pylist()) if first is not None else set()
    if len(lengths) != 1:
        raise ValueError(f"{path}'s embedding column holds vectors of lengths {sorted(lengths) or 'none'}")
    return lengths.pop()


def vectors_of(shards: Sequence[str], dimension: int) -> Iterator[np.ndarray]:
    """The float32 vectors of rows shards, in order, a batch at a time."""
    for path in shards:
        for batch in parquet_batches(path, columns=["embedding"], batch_size=_READ_BATCH):
            yield vector_matrix(batch.column("embedding"), dimension)


def list_count(vectors: int) -> int:
    """IVF lists for `vectors`: a power of two near 4·√n (FAISS's guidance is 4·√n to 16·√n; the fewer, the more
    vectors train each list's centre)."""
    return int(2 ** round(math.log2(max(64.0, 4 * math.sqrt(vectors)))))


def searched_exactly(total: int, exact_below: int) -> bool:
    """Whether an index of `total` vectors is flat: under `exact_below`, or too few to train the fewest lists on."""
    return total < max(exact_below, TRAINING_PER_LIST * list_count(0))


def build_ann(shards: Sequence[Shard], folder: str, dimension: int, exact_below: int = EXACT_BELOW,
              previous: Optional[tuple[str, IndexFacts]] = None) -> tuple[Shard, IndexFacts]:
    """The ANN file over `shards` (rows shards, the FAISS ids following their order), written into `folder`, and
    its facts with recall@10 measured. With `previous` (its ANN file, and facts whose `order` are the first of
    `shards`), the vectors of the other shards are assigned to its lists without training it again, unless it was
    exact and the index now outgrows `exact_below`. The vectors are streamed; none is held here but a sample."""
    total = sum(shard.rows for shard in shards)
    names = tuple(shard.path.rsplit("/", 1)[-1] for shard in shards)
    paths = [shard.path for shard in shards]
    reuse = previous is not None and (previous[1].kind == "ivf" or searched_exactly(total, exact_below))
    if reuse:
        empty, lists_of = read_ann(previous[0])
        new = [path for path, name in zip(paths, names) if name not in previous[1].order]
    else:
        empty, lists_of = trained_index(paths, total, dimension, exact_below), np.zeros(0, np.int32)
        new = paths
    lists = getattr(empty, "nlist", 0)
    probes, recall, queries = 0, 1.0, 0  # a flat index is exact by construction
    if lists:
        quantizer = _ivf(empty).quantizer
        lists_of = np.concatenate([lists_of, *(quantizer.assign(np.ascontiguousarray(vectors), 1).ravel()
                                               .astype(np.int32) for vectors in vectors_of(new, dimension))])
        probes, recall, queries = tune_probes(quantizer, lists_of, paths, dimension)
        empty.nprobe = probes
    path = files.join(folder, f"{ANN}-{uuid.uuid4().hex[:16]}.npz")
    write_ann(empty, lists_of, path)
    facts = IndexFacts("ivf" if lists else "exact", total, dimension, int(lists), probes, recall, queries, names,
                       int(total - previous[1].vectors) if reuse else 0)
    return Shard(path, total), facts


def _ivf(index):
    import faiss

    return faiss.extract_index_ivf(index)


def trained_index(shards: Sequence[str], total: int, dimension: int, exact_below: int):
    """An empty flat index below `exact_below` vectors; above, an IVF-Flat one trained on an even sample of them."""
    import faiss

    if searched_exactly(total, exact_below):
        return faiss.IndexFlatIP(dimension)
    lists = list_count(total)
    wanted = min(total, TRAINING_PER_LIST * lists)
    stride = total // wanted
    sample, taken, seen = np.empty((wanted, dimension), np.float32), 0, 0  # filled in place: one copy, not two
    for vectors in vectors_of(shards, dimension):
        picked = vectors[(-seen) % stride::stride][:wanted - taken]
        sample[taken:taken + len(picked)] = picked
        taken, seen = taken + len(picked), seen + len(vectors)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dimension), dimension, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 1234  # the same vectors train the same lists
    index.train(sample[:taken])
    return index


def filled(empty, batches: Iterator[np.ndarray], lists_of: np.ndarray):
    """A copy of the empty index holding the vectors of `batches`, in order; an IVF index's lists sized exactly
    first (from `lists_of`, each vector's list), then filled without computing a distance."""
    import faiss

    index = faiss.clone_index(empty)
    lists = getattr(index, "nlist", 0)
    if lists:
        inverted = faiss.downcast_InvertedLists(_ivf(index).invlists)
        for number, count in enumerate(np.bincount(lists_of, minlength=lists)):
            inverted.resize(number, int(count))  # the capacity, at once; then emptied to be filled in order
            inverted.resize(number, 0)
    start = 0
    for vectors in batches:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if lists:
            assigned = np.ascontiguousarray(lists_of[start:start + len(vectors)], dtype=np.int64)
            if len(assigned) != len(vectors):
                raise ValueError(f"the ANN file lists {len(lists_of)} vectors; the rows hold more")
            index.add_core(len(vectors), faiss.swig_ptr(vectors), None, faiss.swig_ptr(assigned))
        else:
            index.add(vectors)
        start += len(vectors)
    if lists and start != len(lists_of):
        raise ValueError(f"the ANN file lists {len(lists_of)} vectors; the rows hold {start}")
    if lists:
        index.make_direct_map()  # an indexed image's vector, for "images like this one"
    return index


def vectors_at(shards: Sequence[str], ids: np.ndarray, dimension: int) -> np.ndarray:
    """The vectors at positions `ids` (sorted) of the rows shards, in one streamed pass."""
    found, seen = [], 0
    for vectors in vectors_of(shards, dimension):
        inside = ids[(ids >= seen) & (ids < seen + len(vectors))]
        found.append(np.array(vectors[inside - seen], dtype=np.float32))
        seen += len(vectors)
    return np.concatenate(found)


def exact_top(shards: Sequence[str], queries: np.ndarray, dimension: int, k: int = 10) -> np.ndarray:
    """The ids of each query's `k` best vectors by exact inner product over all of `shards`, streamed."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    seen = 0
    for vectors in vectors_of(shards, dimension):
        scores = np.hstack([best_scores, queries @ vectors.T])
        ids = np.hstack([best_ids, np.broadcast_to(np.arange(seen, seen + len(vectors)), (len(queries), len(vectors)))])
        keep = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
        seen += len(vectors)
    return best_ids


def tune_probes(quantizer, lists_of: np.ndarray, shards: Sequence[str], dimension: int) -> tuple[int, float, int]:
    """(lists to probe, recall@10 there, queries): the fewest probes (doubling) whose recall@10 against exact search,
    on RECALL_QUERIES stored vectors spread over the index, reaches TARGET_RECALL; all lists if none does.

    An IVF-Flat search that probes p lists scores every vector in them exactly, so a query's true neighbour is among
    its 10 answers exactly when its list is among the p lists nearest the query: recall at every p comes from the
    exact neighbours and the lists' order alone, without filling an index."""
    total, lists = len(lists_of), quantizer.ntotal
    ids = np.unique(np.linspace(0, total - 1, min(RECALL_QUERIES, total)).astype(np.int64))
    queries = vectors_at(shards, ids, dimension)
    k = min(10, total)
    truth = exact_top(shards, queries, dimension, k)
    _, nearest_lists = quantizer.search(queries, lists)
    rank = np.empty_like(nearest_lists)
    np.put_along_axis(rank, nearest_lists, np.arange(lists)[None].repeat(len(queries), 0), axis=1)
    truth_rank = np.take_along_axis(rank, lists_of[truth].astype(np.int64), axis=1)  # (queries, k)
    for probes in (1 << p for p in range(int(math.log2(lists)) + 1)):
        recall = float(np.mean(truth_rank < probes))
        if recall >= TARGET_RECALL:
            break
    return probes, round(recall, 4), len(ids)


def index_files(folder: str, manifest: Manifest, facts: IndexFacts) -> tuple[list[Shard], str]:
    """(the rows shards, full paths, in the order of the FAISS ids; the ANN file) of the finished index in `folder`:
    the manifest lists shards sorted by name, `facts.order` as the build added them."""
    listed = {shard.path.rsplit("/", 1)[-1]: Shard(files.join(folder, shard.path), shard.rows)
              for shard in manifest.shards[ROWS]}
    (ann,) = manifest_files(folder, manifest, ANN)
    return [listed[name] for name in facts.order], ann


def write_ann(empty, lists_of: np.ndarray, path: str) -> None:
    """The ANN file: the trained, empty FAISS index (its bytes as FAISS writes them) and each vector's list."""
    import faiss

    data = io.BytesIO()
    np.savez(data, index=faiss.serialize_index(empty), lists=lists_of.astype(np.int32))
    files.write(path, data.getvalue())


def read_ann(path: str) -> tuple[Any, np.ndarray]:
    """(the trained, empty FAISS index, each vector's list) of an ANN file."""
    import faiss

    with np.load(io.BytesIO(files.read(path))) as data:
        return faiss.deserialize_index(data["index"]), data["lists"]


# Searching.

class VectorIndex:
    """An index opened for searching: its rows (without their vectors, which the FAISS index holds) and the FAISS
    index, in memory; the backend's text tower answers text queries. Safe to search from many threads.

    >>> index = VectorIndex.open("out/index", get_backend("local"))
    >>> index.search_text("a red car", k=10)
    """

    def __init__(self, folder: str, manifest: Manifest, facts: IndexFacts, rows: pa.Table, ann,
                 backend: Optional[Backend]):
        self.folder, self.manifest, self.facts, self.backend = folder, manifest, facts, backend
        self._rows, self._ann = rows, ann
        self._uris = rows["uri"].to_pylist()
        self._row_of = {uri: i for i, uri in reversed(list(enumerate(self._uris)))}  # the first row of a uri
        self._labels = rows["labels"].to_pylist()
        self._top = rows["top_prob"].to_pylist()
        self._width, self._height = rows["width"].to_pylist(), rows["height"].to_pylist()
        self._by_label = _ids_by_best_label(rows["labels"])
        self._text_lock = threading.Lock()

    @classmethod
    def open(cls, folder: str, backend: Optional[Backend] = None) -> "VectorIndex":
        """The finished index in `folder` (local or a bucket). `backend`, configured as the index was built, answers
        text queries (none: search by vector and uri only); ValueError if it is another model than the index's."""
        manifest = finished_manifest(folder)
        facts = IndexFacts.of(manifest)
        if backend is not None and manifest.model and backend.model_id != manifest.model:
            raise ValueError(f"the index in {folder!r} holds vectors of model {manifest.model!r}; backend "
                             f"{backend.name!r} as configured is {backend.model_id!r}")
        rows_shards, ann_path = index_files(folder, manifest, facts)
        shards = [shard.path for shard in rows_shards]
        rows = read_columns(shards, ["uri", "labels", "top_prob", "width", "height"],
                            index_rows_schema(facts.dimension))
        empty, lists_of = read_ann(ann_path)
        return cls(folder, manifest, facts, rows, filled(empty, vectors_of(shards, facts.dimension), lists_of), backend)

    def __len__(self) -> int:
        return len(self._uris)

    def __contains__(self, uri: object) -> bool:
        return uri in self._row_of

    def labels(self) -> list[tuple[str, int]]:
        """Each best label of the rows with how many images have it, commonest first."""
        return sorted(((label, len(ids)) for label, ids in self._by_label.items()), key=lambda item: (-item[1],
                                                                                                      item[0]))

    def vector_of(self, uri: str) -> np.ndarray:
        if uri not in self._row_of:
            raise NotInIndex(f"{uri[:200]!r} is not in the index")
        return self._ann.reconstruct(self._row_of[uri])

    def embed_text(self, text: str) -> np.ndarray:
        """The unit vector of a text query, as the backend embeds a text (no prompt template)."""
        if self.backend is None:
            raise SearchRequestError("this index was opened without a backend: it answers vectors and uris only")
        check_query(text)
        with self._text_lock:  # one text at a time through the tower (its tokenizer and session are shared)
            vector = self.backend.load().embed_texts([text])
        return l2_normalize(np.asarray(vector, dtype=np.float32))[0]

    def search_text(self, text: str, k: int = 10, label: Optional[str] = None) -> list[Hit]:
        return self.search(self.embed_text(text), k, label)

    def search_uri(self, uri: str, k: int = 10, label: Optional[str] = None) -> list[Hit]:
        """The images most like an indexed one (itself first)."""
        return self.search(self.vector_of(uri), k, label)

    def search(self, vector: Any, k: int = 10, label: Optional[str] = None) -> list[Hit]:
        """The `k` images nearest `vector` by cosine, best first; with `label`, only the images whose best label it
        is (searched exactly among them)."""
        check_k(k)
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.facts.dimension:
            raise SearchRequestError(f"the vector has {query.shape[0]} numbers; this index's have "
                                     f"{self.facts.dimension}")
        if not np.all(np.isfinite(query)) or not np.any(query):
            raise SearchRequestError("the vector must be finite and not all zeros")
        query = l2_normalize(query[None])[0].astype(np.float32)
        parameters = None
        if label is not None:
            ids = self._by_label.get(label)
            if ids is None:
                return []
            import faiss

            selector = faiss.IDSelectorBatch(ids)
            # All lists: a label's images may sit in any of them, and only they are scored.
            parameters = (faiss.SearchParametersIVF(sel=selector, nprobe=self.facts.lists) if self.facts.lists else
                          faiss.SearchParameters(sel=selector))
        scores, ids = self._ann.search(query[None], min(k, len(self)) or 1, params=parameters)
        return [Hit(self._uris[i], float(score), self._labels[i], self._top[i], self._width[i], self._height[i])
                for score, i in zip(scores[0], ids[0]) if i >= 0]


def _ids_by_best_label(labels: pa.ChunkedArray) -> dict[str, np.ndarray]:
    """best label -> the ids of the rows whose first label it is (a row without labels has none)."""
    labels = labels.combine_chunks()
    offsets = labels.offsets.to_numpy()
    lengths = np.diff(offsets)
    rows = np.flatnonzero(lengths > 0)
    if not len(rows):
        return {}
    best = labels.flatten().take(pa.array(offsets[:-1][rows] - offsets[0])).to_numpy(zero_copy_only=False)
    order = np.argsort(best, kind="stable")
    best, rows = best[order], rows[order]
    starts = np.flatnonzero(np.r_[True, best[1:] != best[:-1]])
    ends = np.r_[starts[1:], len(best)]
    return {str(best[s]): rows[s:e].astype(np.int64) for s, e in zip(starts, ends)}


def check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise SearchRequestError(f"k must be a whole number from 1 to {MAX_K}, got {str(k)[:40]!r}")


def check_query(text: Any) -> None:
    if not isinstance(text, str) or not text.strip():
        raise SearchRequestError("the query is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise SearchRequestError(f"the query has {len(text)} characters; at most {MAX_QUERY_CHARS} are read")
