"""Topic purity on the dev sources: do the topics that pipelines.topics finds, knowing no labels, agree with the
truth? For each source's coarse dev set: classify_images --keep_embeddings, then pipelines.topics with as many
topics as the set has true labels present; purity = the share of images whose topic's commonest true label is
theirs. Printed beside two references: the largest label's share (what one topic, or topics at random, score) and
the purity of grouping the images by classify_images' top label with the true label set given.

Then the job's peak memory on synthetic runs of growing size (vectors around 30 random centres, in 4 shards or
shards of 30,000, one Parquet row group each, with a dev run's manifest so the model matches), each job in its own
process: flat means it does not grow with the vectors.

python -m benchmarks.topics [--devsets devsets] [--output bench-output/topics] [--memory 2000,40000,120000,240000]
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import platform
import shutil
import subprocess
import sys
from collections import Counter
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import classify_images, topics
from testbed.devsets import image_glob, read_index
from transforms.records import EMBEDDINGS, embeddings_schema
from transforms.run_folder import SUCCESS, read_manifest, read_run
from transforms.write import Shard

# The job's own peak (VmHWM is per address space; ru_maxrss would carry this process's peak across the exec).
PEAK_RSS = ("import re, sys; from pipelines import topics; status = topics.main(sys.argv[1:]); "
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024, status)")


def purity(groups: dict[str, str], truth: dict[str, str]) -> float:
    """Share of images whose group's commonest true label is their own."""
    members: dict[str, list[str]] = {}
    for name, group in groups.items():
        members.setdefault(group, []).append(truth[name])
    return sum(Counter(labels).most_common(1)[0][1] for labels in members.values()) / len(groups)


def measure(devsets: Path, name: str, output: Path) -> dict:
    folder = devsets / name
    with (folder / "truth.csv").open() as f:
        truth = {row["uri"]: row["label"] for row in csv.DictReader(f)}
    kept, found = output / name / "kept", output / name / "topics"
    k = len(set(truth.values()))
    with redirect_stdout(StringIO()):
        assert classify_images.main(["--input", str(folder / image_glob(folder)), "--labels",
                                     str(folder / "labels.txt"), "--output", str(kept), "--keep_embeddings",
                                     "--overwrite", "--top_k", "1"]) == 0
        assert topics.main(["--embeddings", str(kept), "--topics", str(k), "--output", str(found),
                            "--overwrite"]) == 0
    in_truth = {Path(row["uri"]).name: row for row in read_run(str(found), "images") if Path(row["uri"]).name in truth}
    labeled = {Path(row["uri"]).name: row["labels"][0] for row in read_run(str(kept))}
    names = [row["name"] for row in read_run(str(found), "topics")]
    return {"images": len(in_truth), "labels": k, "topics": len(names),
            "purity": purity({n: str(row["topic"]) for n, row in in_truth.items()}, truth),
            "largest": Counter(truth.values()).most_common(1)[0][1] / len(truth),
            "by_label": purity(labeled, truth), "names": names}


def synthetic_run(like: Path, folder: Path, images: int, shards: int = 4) -> None:
    """A finished run in `folder` whose embeddings are `images` unit vectors around 30 random centres, with the
    manifest (model, run id) of the kept run `like`."""
    manifest = read_manifest(str(like))
    shutil.rmtree(folder, ignore_errors=True)
    (folder / manifest.run_id).mkdir(parents=True)
    rng = np.random.default_rng(0)
    dim = len(read_run(str(like), EMBEDDINGS)[0]["embedding"])
    centres = rng.standard_normal((30, dim))
    written = []
    for shard in range(shards):
        rows = images // shards
        vectors = centres[rng.integers(30, size=rows)] + 0.5 * rng.standard_normal((rows, dim))
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        path = f"{manifest.run_id}/embeddings-{shard:05d}-of-{shards:05d}.parquet"
        pq.write_table(pa.table({
            "uri": [f"synthetic/{shard}-{i}.jpg" for i in range(rows)], "sha256": ["0" * 64] * rows,
            "model": [manifest.model] * rows,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            "width": pa.array([1] * rows, pa.int32()), "height": pa.array([1] * rows, pa.int32()),
            "strength": pa.array([1.0] * rows, pa.float32())}, schema=embeddings_schema(dim)), folder / path)
        written.append(Shard(path, rows))
    (folder / SUCCESS).write_bytes(dataclasses.replace(manifest, shards={EMBEDDINGS: tuple(written)}).to_json())


def peak_memory(like: Path, output: Path, sizes: list[int]) -> None:
    print("\n| stored vectors | topics | peak RSS of the job (MB) |\n| ---: | ---: | ---: |")
    for images in sizes:
        synthetic_run(like, output / f"synthetic-{images}", images, shards=max(4, images // 30_000))
        done = subprocess.run([sys.executable, "-c", PEAK_RSS, "--embeddings", str(output / f"synthetic-{images}"),
                               "--topics", "30", "--output", str(output / f"synthetic-{images}-topics"),
                               "--overwrite"], capture_output=True, text=True, check=True)
        peak, status = done.stdout.split()[-2:]
        assert status == "0", done.stderr[-2000:]
        print(f"| {images:,} | 30 | {int(peak):,} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devsets", type=Path, default=Path("devsets"))
    parser.add_argument("--output", type=Path, default=Path("bench-output/topics"))
    parser.add_argument("--memory", default="2000,40000,120000,240000",
                        help="sizes of the synthetic runs (4 shards, or shards of 30,000 vectors)")
    args = parser.parse_args(argv)
    if not (args.devsets / "index.csv").is_file():
        print(f"error: {args.devsets}/index.csv is missing; run `make devsets` first", file=sys.stderr)
        return 2
    coarse = [row for row in read_index(args.devsets) if row["kind"] == "coarse"]
    print(f"{datetime.date.today()}, {platform.node()}, {platform.processor() or platform.machine()}, "
          f"python -m benchmarks.topics; backend local (defaults)\n")
    print("| source | images | true labels = topics | topic purity | largest label's share | grouped by "
          "classify's top label | topic names (largest first) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    results = []
    for row in coarse:
        result = measure(args.devsets, row["name"], args.output)
        results.append(result)
        print(f"| {row['source']} | {result['images']} | {result['labels']} | {result['purity']:.1%} | "
              f"{result['largest']:.1%} | {result['by_label']:.1%} | {', '.join(result['names'])} |", flush=True)
    mean = {key: sum(r[key] for r in results) / len(results) for key in ("purity", "largest", "by_label")}
    print(f"| **mean of sources** | | | **{mean['purity']:.1%}** | {mean['largest']:.1%} | {mean['by_label']:.1%} | |")
    peak_memory(args.output / coarse[-1]["name"] / "kept", args.output, [int(n) for n in args.memory.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
