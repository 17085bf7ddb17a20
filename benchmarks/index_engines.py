"""Which embedded index: FAISS IVF-Flat against LanceDB's IVF_HNSW_SQ (the index FiftyOne moved to), and an exact
NumPy scan, each in its own process on the same million clustered vectors as benchmarks/index.py (2,000 centres,
noise 0.6; queries: 200 stored vectors plus noise 0.3), called in-process (no HTTP). Recall@10 against exact cosine
search; build time; peak RSS. Not part of `make bench`: it needs `pip install lancedb`, which the project does not.

python -m benchmarks.index_engines scan|faiss|lance [--work bench-output/index_engines]
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from benchmarks.index import CENTRES, DIMENSION, NOISE, QUERIES, QUERY_NOISE

COUNT = 1_000_000


def data(work: Path) -> np.ndarray:
    path = work / "vectors.npy"
    if not path.exists():
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((CENTRES, DIMENSION)).astype(np.float32)
        out = np.lib.format.open_memmap(path, "w+", np.float32, (COUNT, DIMENSION))
        for start in range(0, COUNT, 100_000):
            vectors = centres[rng.integers(0, CENTRES, 100_000)]
            vectors += NOISE * rng.standard_normal((100_000, DIMENSION)).astype(np.float32)
            out[start:start + 100_000] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        out.flush()
    return np.load(path, mmap_mode="r")


def queries_and_truth(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    queries = vectors[np.sort(rng.choice(COUNT, QUERIES, replace=False))]
    queries = queries + QUERY_NOISE / np.sqrt(DIMENSION) * rng.standard_normal((QUERIES, DIMENSION))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    scores = np.concatenate([queries @ np.asarray(vectors[s:s + 100_000]).T for s in range(0, COUNT, 100_000)], 1)
    return queries, np.argsort(-scores, axis=1)[:, :10]


def report(name: str, build_s: float, found: list, truth: np.ndarray, latencies: list) -> None:
    recall = np.mean([len(set(map(int, f)) & set(map(int, t))) / 10 for f, t in zip(found, truth)])
    print(json.dumps({"name": name, "build_s": round(build_s, 1), "recall_at_10": round(float(recall), 4),
                      "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
                      "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 2),
                      "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 2)}), flush=True)


def timed(search, queries: np.ndarray) -> tuple[list, list]:
    found, latencies = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(search(query))
        latencies.append(time.perf_counter() - started)
    return found, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=("scan", "faiss", "lance"))
    parser.add_argument("--work", default="bench-output/index_engines")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    vectors = data(work)
    queries, truth = queries_and_truth(vectors)
    if args.engine == "scan":
        matrix = np.ascontiguousarray(vectors)

        def scan(query):
            scores = matrix @ query
            best = np.argpartition(-scores, 10)[:10]
            return best[np.argsort(-scores[best])]
        found, latencies = timed(scan, queries)
        report("numpy scan", 0.0, found, truth, latencies)
    elif args.engine == "faiss":
        import faiss

        started = time.perf_counter()
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIMENSION), DIMENSION, 4096, faiss.METRIC_INNER_PRODUCT)
        index.train(np.asarray(vectors[::4]))
        for start in range(0, COUNT, 100_000):
            index.add(np.asarray(vectors[start:start + 100_000]))
        build_s = time.perf_counter() - started
        for probes in (4, 16):
            index.nprobe = probes
            found, latencies = timed(lambda query: index.search(query[None], 10)[1][0], queries)
            report(f"faiss IVF-Flat 4096 lists, {probes} probed", build_s, found, truth, latencies)
    else:
        import lancedb
        import pyarrow as pa

        started = time.perf_counter()
        schema = pa.schema([("id", pa.int64()), ("vector", pa.list_(pa.float32(), DIMENSION))])

        def batches():
            for start in range(0, COUNT, 100_000):
                block = np.asarray(vectors[start:start + 100_000])
                yield pa.record_batch([pa.array(np.arange(start, start + len(block))),
                                       pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), DIMENSION)],
                                      schema=schema)
        table = lancedb.connect(str(work / "lance")).create_table("v", data=batches(), schema=schema,
                                                                  mode="overwrite")
        table.create_index(metric="cosine", vector_column_name="vector", index_type="IVF_HNSW_SQ",
                           num_partitions=256)
        build_s = time.perf_counter() - started
        for probes, refine in ((20, None), (20, 10)):
            def search(query, probes=probes, refine=refine):
                asked = table.search(query).metric("cosine").nprobes(probes)
                asked = asked.refine_factor(refine) if refine else asked
                return asked.limit(10).select(["id"]).to_arrow()["id"].to_numpy()
            found, latencies = timed(search, queries)
            report(f"lancedb IVF_HNSW_SQ, {probes} probed, refine {refine}", build_s, found, truth, latencies)


if __name__ == "__main__":
    main()
