"""`make bench`, the vector index: a million vectors of `local`'s 384 dimensions, clustered like real embeddings
(2,000 centres plus noise, normalized), indexed with `zero-shot-labels index --vectors` and searched through
`zero-shot-labels serve` by an HTTP client on loopback; then the same index written to and served from an S3 protocol
server (moto's, on 127.0.0.1).

Measured: the build's wall time and peak RSS (the command's process, from the kernel); over POST /search, 200 queries
(noisy copies of stored vectors), recall@10 against exact cosine search and p50/p99 latency as the client sees it;
in the same run, an exact NumPy scan of the same vectors per query; and GET /search?q= text queries, the text
embedding included.

python -m benchmarks.index [--vectors 1000000] [--no_s3] [--work bench-output/index]
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from testbed.s3 import free_port, s3_server

DIMENSION, CENTRES = 384, 2000
NOISE = 0.6  # per-vector noise around its centre, relative to the centre's length: cosine ~0.86 to it
QUERY_NOISE = 0.3  # a query: a stored vector plus this much noise (cosine ~0.96 to it)
QUERIES = 200
# 100 different texts: a text the server saw before is answered from the backend's cache, and would flatter it.
TEXTS = tuple(f"a {colour} {thing}" for colour in ("red", "blue", "green", "yellow", "black", "white", "small",
                                                   "large", "old", "wet")
              for thing in ("car", "dog", "cat on a sofa", "house by the sea", "bicycle", "bird on a branch",
                            "bowl of fruit", "mountain in the snow", "boat on a lake", "cup of coffee"))
_S3_FLAGS = ["--s3_access_key_id", "bench", "--s3_secret_access_key", "bench", "--s3_region_name", "us-east-1"]


def clustered_vectors(path: Path, count: int, seed: int = 0) -> None:
    """`count` unit vectors around CENTRES random centres, as Parquet (uri, embedding), written 100,000 at a time."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIMENSION)).astype(np.float32) / np.sqrt(DIMENSION)
    schema = pa.schema([("uri", pa.string()), ("embedding", pa.list_(pa.float32(), DIMENSION))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, count, 100_000):
            n = min(100_000, count - start)
            vectors = centres[rng.integers(0, CENTRES, n)]
            vectors += NOISE / np.sqrt(DIMENSION) * rng.standard_normal((n, DIMENSION)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            writer.write_table(pa.table({
                "uri": [f"images/{i:07d}.jpg" for i in range(start, start + n)],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMENSION)}, schema=schema))


def read_vectors(path: Path) -> np.ndarray:
    column = pq.read_table(path, columns=["embedding"])["embedding"].combine_chunks()
    return column.flatten().to_numpy().reshape(len(column), DIMENSION)


def timed_command(args: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak RSS in GB) of one command run to its end, from a child of its own: getrusage's
    RUSAGE_CHILDREN is the largest process it waited for."""
    probe = ("import resource, subprocess, sys, time; t = time.monotonic(); "
             "code = subprocess.run(sys.argv[1:]).returncode; "
             "print(time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)")
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, env=env)
    seconds, kilobytes, code = done.stdout.strip().splitlines()[-1].split()
    if int(code):
        sys.exit(f"{' '.join(args[:4])} failed:\n{done.stderr[-3000:]}")
    return float(seconds), int(kilobytes) / 1e6


class Client:
    """One keep-alive HTTP connection to the server, as a page or a script would hold."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def ask(self, method: str, path: str, body: dict | None = None) -> tuple[float, dict]:
        data = json.dumps(body).encode() if body is not None else None
        started = time.perf_counter()
        self.connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        answer = json.loads(response.read())
        seconds = time.perf_counter() - started
        if response.status != 200:
            sys.exit(f"{method} {path}: {response.status} {answer}")
        return seconds, answer


def serve(index: str, env: dict, extra: list[str]) -> tuple[subprocess.Popen, int, float]:
    """(the server, its port, seconds until it answered)."""
    port = free_port()
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "pipelines.serve", "--index", index, "--port", str(port),
                               *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        if server.poll() is not None:
            sys.exit(f"the server ended: {server.stderr.read()[-3000:]}")
        try:
            Client(port).ask("GET", "/health")
            return server, port, time.monotonic() - started
        except (ConnectionError, OSError):
            time.sleep(0.5)


def measure(index: str, env: dict, extra: list[str], vectors: np.ndarray, queries: np.ndarray,
            truth: np.ndarray) -> dict:
    server, port, start_s = serve(index, env, extra)
    try:
        client = Client(port)
        for query in queries[:10]:  # warm the connection and the index's pages
            client.ask("POST", "/search", {"vector": query.tolist(), "k": 10})
        latencies, recalls = [], []
        for query, best in zip(queries, truth):
            seconds, answer = client.ask("POST", "/search", {"vector": query.tolist(), "k": 10})
            found = {int(hit["uri"][7:14]) for hit in answer["hits"]}
            latencies.append(seconds)
            recalls.append(len(found & set(best.tolist())) / 10)
        text_latencies = []
        for text in TEXTS:
            seconds, _ = client.ask("GET", "/search?" + urllib.parse.urlencode({"q": text, "k": 10}))
            text_latencies.append(seconds)
    finally:
        server.terminate()
        server.wait()
    return {"server_start_s": round(start_s, 1), "recall_at_10": round(float(np.mean(recalls)), 4),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 2),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 2),
            "text_p50_ms": round(float(np.percentile(text_latencies, 50)) * 1e3, 2),
            "text_p99_ms": round(float(np.percentile(text_latencies, 99)) * 1e3, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--work", default="bench-output/index")
    parser.add_argument("--no_s3", action="store_true", help="only the local index")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"vectors-{args.vectors}.parquet"
    if not source.exists():
        clustered_vectors(source, args.vectors)
    vectors = read_vectors(source)
    rng = np.random.default_rng(1)
    stored = rng.choice(len(vectors), QUERIES, replace=False)
    queries = vectors[stored] + QUERY_NOISE / np.sqrt(DIMENSION) * rng.standard_normal((QUERIES, DIMENSION))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    scan, truth = [], []
    for query in queries:  # the exact answer, and what a scan of every vector costs, in this same run
        started = time.perf_counter()
        scores = vectors @ query
        best = np.argpartition(-scores, 10)[:10]
        best = best[np.argsort(-scores[best])]
        scan.append(time.perf_counter() - started)
        truth.append(best)
    results: dict = {"vectors": len(vectors), "scan_p50_ms": round(float(np.percentile(scan, 50)) * 1e3, 2),
                     "scan_p99_ms": round(float(np.percentile(scan, 99)) * 1e3, 2)}
    env = dict(os.environ)
    local = work / "index"
    build = [sys.executable, "-m", "pipelines.index", "--vectors", str(source), "--output", str(local), "--overwrite"]
    seconds, peak = timed_command(build, env)
    facts = json.loads((local / "_SUCCESS").read_text())["details"]["ann"]
    results["local"] = {"build_s": round(seconds, 1), "build_peak_rss_gb": round(peak, 2),
                        "build_recall_at_10": facts["recall_at_10"], "kind": facts["kind"], "lists": facts["lists"],
                        "probes": facts["probes"], **measure(str(local), env, [], vectors, queries, truth)}
    print(json.dumps(results["local"]), flush=True)
    if not args.no_s3:
        server, endpoint, _ = s3_server()
        try:
            import boto3

            boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                         region_name="us-east-1").create_bucket(Bucket="bench")
            flags = ["--s3_endpoint_url", endpoint, *_S3_FLAGS]
            seconds, peak = timed_command([*build[:5], "--output", "s3://bench/index", *flags], env)
            results["s3"] = {"build_s": round(seconds, 1), "build_peak_rss_gb": round(peak, 2),
                             **measure("s3://bench/index", env, flags, vectors, queries, truth)}
            print(json.dumps(results["s3"]), flush=True)
        finally:
            server.stop()
    results.update(date=datetime.date.today().isoformat(), machine=f"{platform.machine()}, {os.cpu_count()} cores",
                   faster_than_scan=round(results["scan_p50_ms"] / results["local"]["p50_ms"], 1))
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
