"""`make bench`, stored embeddings: relabel against classifying again, search throughput and memory, bytes per image.

Every figure is measured in this one run, on this machine, each job a fresh process from start to exit (peak RSS of
the process tree), and printed as markdown with ratios.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from testbed.images import make_images
from transforms.records import EMBEDDINGS
from transforms.run_folder import commit, new_run_id, read_manifest, run_files, table_prefix, utc_now
from transforms.write import Shard

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["a cat", "a rocket", "a cup of coffee", "a motorcycle", "a flower", "a person", "a building",
           "a tiny white ball", "a red car", "the night sky"]


def timed_job(module: str, *args: str) -> tuple[float, int]:
    """(seconds, peak RSS MiB) of `python -m module args`, in a fresh wrapper so the peak is this job's alone."""
    wrapper = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
               "sys.stderr.write(done.stderr[-3000:] if done.returncode else '');"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{module} failed: {done.stderr}")
    return time.perf_counter() - start, int(done.stdout.split()[-1]) // 1024


def bytes_per_image(run: Path) -> float:
    files = run_files(str(run), EMBEDDINGS)
    return sum(os.path.getsize(f) for f in files) / sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def repeated_embeddings(source: Path, target: Path, copies: int) -> int:
    """A committed run whose embeddings table holds `copies` times the source run's real vectors, each copy under
    new uris: a large stored collection to relabel and search, without classifying that many images first."""
    manifest = read_manifest(str(source))
    run_id = new_run_id()
    table = pq.read_table(run_files(str(source), EMBEDDINGS))
    uris = table.column("uri").to_pylist()
    shards = []
    for i in range(copies):
        shard = f"{table_prefix(str(target), run_id, EMBEDDINGS)}-{i:05d}-of-{copies:05d}.parquet"
        Path(shard).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.set_column(0, "uri", [[f"{uri}#copy{i}" for uri in uris]]), shard)
        shards.append(Shard(shard, table.num_rows))
    copied = dataclasses.replace(manifest, run_id=run_id, started=utc_now(), shards={}, generation=0)
    commit(str(target), copied, None, {EMBEDDINGS: shards})
    return table.num_rows * copies


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images classified, then relabeled")
    parser.add_argument("--copies", type=int, default=10, help="the stored vectors repeated this often for search")
    parser.add_argument("--size_images", type=int, default=2_000, help="images for the bytes-per-image rows")
    parser.add_argument("--workdir", default=str(REPO / "bench-output"))
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    images = make_images(work / f"thumbs{args.images}", args.images, seed=4, max_side=128)
    out = work / "reuse"
    rows = []
    classify_s, classify_rss = timed_job("pipelines.classify_images", "--input", f"{images}/*.jpg", "--labels",
                                         "imagenet", "--output", str(out / "classified"), "--overwrite",
                                         "--keep_embeddings")
    rows.append(("classify, 1,000 labels (--embeddings)", args.images, classify_s, classify_rss, ""))
    stored = {args.images: out / "classified"}
    stored[repeated_embeddings(out / "classified", out / "repeated", args.copies)] = out / "repeated"
    for count, run in stored.items():
        seconds, rss = timed_job("pipelines.relabel", "--embeddings", str(run), "--labels", "imagenet", "--output",
                                 str(out / f"relabeled{count}"), "--overwrite")
        rows.append(("relabel the stored vectors, 1,000 labels", count, seconds, rss,
                     f"{(count / seconds) / (args.images / classify_s):.1f}x the images/s of classify"))
    search_rss = {}
    for count, run in stored.items():
        seconds, search_rss[count] = timed_job("pipelines.search", "--embeddings", str(run), "--output",
                                               str(out / f"search{count}"), "--overwrite", "--images_per_query", "20",
                                               *[arg for query in QUERIES for arg in ("--query", query)])
        rows.append((f"search, {len(QUERIES)} queries, top 20", count, seconds, search_rss[count],
                     f"{count / seconds:.0f} stored images/s for the {len(QUERIES)} queries"))
    sizes = make_images(work / f"thumbs{args.size_images}", args.size_images, seed=3, max_side=128)
    size = {}
    for dtype in ("float32", "float16"):
        timed_job("pipelines.classify_images", "--input", f"{sizes}/*.jpg", "--labels", "everyday", "--output",
                  str(out / dtype), "--overwrite", "--keep_embeddings", "--embeddings_dtype", dtype)
        size[dtype] = bytes_per_image(out / dtype)

    print(f"\n{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · Python "
          f"{platform.python_version()} · `local` backend, DirectRunner in-process\n")
    print("| job | images | seconds | peak RSS MiB | ratio |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, n, seconds, rss, ratio in rows:
        print(f"| {name} | {n} | {seconds:.1f} | {rss} | {ratio} |")
    (small, large) = sorted(search_rss)
    print(f"\nsearch peak RSS, {small} vs {large} stored images: {search_rss[small]} vs {search_rss[large]} MiB "
          f"({search_rss[large] / search_rss[small]:.2f}x for {large / small:.0f}x the vectors)")
    print(f"embeddings table, bytes per image ({args.size_images} images, Parquet, 384 dimensions): float32 "
          f"{size['float32']:.0f}, float16 {size['float16']:.0f} ({size['float16'] / size['float32']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
