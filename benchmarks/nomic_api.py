"""Nomic backend against the loopback Nomic API with added latency: the pipeline vs the seed-style per-image loop.

The seed-style loop is what a first script does: for every image, embed all label texts again and call
nomic.embed.image on that one image. The pipeline embeds the labels once and sends images in batches.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.run import REPO
from testbed.images import make_images
from testbed.nomic_api import FakeNomicAPI
from transforms.label_sets import load_label_set


def seed_style_loop(paths: list[Path], labels: list[str]) -> float:
    """images/s of one nomic.embed.text(labels) + one nomic.embed.image([image]) per image."""
    import nomic.embed

    start = time.perf_counter()
    for path in paths:
        texts = np.asarray(nomic.embed.text(labels, model="nomic-embed-text-v1.5",
                                            task_type="search_query")["embeddings"])
        image = np.asarray(nomic.embed.image([Image.open(path)], model="nomic-embed-vision-v1.5")["embeddings"][0])
        labels[int(np.argmax(texts @ image))]
    return len(paths) / (time.perf_counter() - start)


def pipeline_job(folder: Path, labels: str, out: Path) -> float:
    """images/s of the whole `--backend nomic` job, process start to exit."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipelines.classify_images", "--backend", "nomic", "--input",
                           f"{folder}/*.jpg", "--labels", labels, "--output", str(out / "labels"), "--overwrite"],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return len(list(folder.glob("*.jpg"))) / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="images for the pipeline runs")
    parser.add_argument("--loop_images", type=int, default=20, help="images for the (slow) seed-style loop")
    parser.add_argument("--latency_ms", type=float, default=100)
    parser.add_argument("--workdir", default=str(REPO / "bench-output"))
    args = parser.parse_args(argv)
    folder = make_images(Path(args.workdir) / f"images{args.images}", args.images)
    paths = sorted(folder.glob("*.jpg"))[: args.loop_images]
    api = FakeNomicAPI(latency_s=args.latency_ms / 1000).start()
    os.environ.update(ATLAS_API_PATH=api.url, NOMIC_API_KEY=api.key, HOME=tempfile.mkdtemp())
    from transforms.backends import get_backend

    get_backend("nomic").check()  # logs this process's client in, as a worker would
    rows = []
    for name in ("everyday", "imagenet"):
        labels = load_label_set(name)
        api.requests.clear()
        loop_rate = seed_style_loop(paths, labels)
        loop_requests = sum(api.requests.values()) / len(paths)
        api.requests.clear()
        job_rate = pipeline_job(folder, name, Path(args.workdir) / "nomic-out")
        job_requests = dict(api.requests)
        rows.append((len(labels), loop_rate, loop_requests, job_rate, job_requests))
    api.stop()
    print(f"\n{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · loopback Nomic API with "
          f"{args.latency_ms:.0f} ms per request · pipeline on {args.images} images, seed loop on {len(paths)}\n")
    print("| labels | seed-style loop images/s | requests per image (loop) | pipeline images/s | speed-up "
          "| pipeline requests (text / image / user) |")
    print("| ---: | ---: | ---: | ---: | ---: | --- |")
    for n, loop_rate, loop_requests, job_rate, requests in rows:
        counts = " / ".join(str(requests.get(p, 0)) for p in ("/v1/embedding/text", "/v1/embedding/image", "/v1/user"))
        print(f"| {n} | {loop_rate:.2f} | {loop_requests:.1f} | {job_rate:.1f} | {job_rate / loop_rate:.0f}x | "
              f"{counts} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
