"""`make bench`: whole-job throughput against a bare decode+forward loop and the seed-style per-image loop.

Every figure is measured in this one run, on this machine, and printed as a markdown table with ratios.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from PIL import Image, ImageOps

from pipelines.samples import write_sample_photos
from transforms.backends import get_backend
from transforms.backends.local import LocalBackend, _sentence_vectors
from transforms.decode import decode_image
from transforms.label_sets import load_label_set

REPO = Path(__file__).resolve().parents[1]


def make_images(folder: Path, count: int, seed: int = 0, max_side: Optional[int] = None) -> Path:
    """`count` distinct JPEGs (random crops, flips, sizes and qualities of the sample photos), at most `max_side`
    pixels on the longer side if given (thumbnails: many images written and decoded quickly)."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    for old in folder.glob("*.jpg"):
        old.unlink()
    sources = folder.parent / "sources"
    write_sample_photos(sources)
    photos = [Image.open(path).convert("RGB") for path in sorted(sources.glob("*.jpg"))]
    rng = random.Random(seed)
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        image = photo.crop((left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        scale = rng.uniform(0.8, 1.6)
        image = image.resize((int(cw * scale), int(ch * scale)), Image.Resampling.BILINEAR)
        if max_side:
            image.thumbnail((max_side, max_side))
        image.save(folder / f"img{i:05d}.jpg", quality=rng.randint(80, 95))
    return folder


def bare_loop(folder: Path, batch_size: int, backend: LocalBackend = LocalBackend()) -> tuple[float, float]:
    """(images/s, seconds) of read + decode + forward in batches, after the model has loaded."""
    embedder = backend.load()
    paths = sorted(folder.glob("*.jpg"))
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        images = [decode_image(path.read_bytes(), Image.MAX_IMAGE_PIXELS)[0] for path in paths[i:i + batch_size]]
        embedder.embed_images(images)
    seconds = time.perf_counter() - start
    return len(paths) / seconds, seconds


def seed_style_loop(paths: list[Path], labels: list[str]) -> tuple[float, float]:
    """(images/s, seconds) of the naive script: every image embeds all label texts again, alone, then ranks."""
    embedder = get_backend("local").load()
    start = time.perf_counter()
    for path in paths:
        _sentence_vectors.cache_clear()  # a naive script keeps no cache of its label vectors
        label_vectors = embedder.embed_texts(labels)
        image_vector = embedder.embed_images([decode_image(path.read_bytes(), Image.MAX_IMAGE_PIXELS)[0]])[0]
        labels[int((label_vectors @ image_vector).argmax())]
    seconds = time.perf_counter() - start
    return len(paths) / seconds, seconds


def whole_job(folder: Path, labels: str, batch_size: int, out: Path, *beam_args: str) -> tuple[float, float, int]:
    """(images/s, seconds, peak RSS MiB) of `python -m pipelines.classify_images`, from process start to exit."""
    command = [sys.executable, "-m", "pipelines.classify_images", "--input", f"{folder}/*.jpg", "--labels", labels,
               "--output", str(out / "labels"), "--overwrite", "--batch_size", str(batch_size), *beam_args]
    # A fresh wrapper per job, so RUSAGE_CHILDREN's peak belongs to this job alone (workers included).
    wrapper = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
               "sys.stderr.write(done.stderr[-2000:] if done.returncode else '');"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *command], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"job failed: {done.stderr}")
    images = len(list(folder.glob("*.jpg")))
    return images / seconds, seconds, int(done.stdout.split()[-1]) // 1024


# The settings before the leave-one-source-out search (docs/ACCURACY.md), whose start-up is the baseline.
PREVIOUS_SETTINGS = {"class_prompt": "{}", "hierarchy_weight": 0.0}


def start_up_seconds(settings: dict) -> float:
    """Seconds a fresh process takes to build the local embedder (load both models, embed the 1,000 class texts):
    what every worker pays once. Imports are excluded; they are the same for any setting."""
    code = ("import sys, time; from transforms.backends.local import ConSEEmbedder, LocalBackend; "
            "start = time.perf_counter(); ConSEEmbedder(LocalBackend(**eval(sys.argv[1]))); "
            "print(time.perf_counter() - start)")
    done = subprocess.run([sys.executable, "-c", code, repr(settings)], cwd=REPO, capture_output=True, text=True,
                          check=True)
    return float(done.stdout.split()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images for the throughput comparison")
    parser.add_argument("--label_images", type=int, default=300, help="images for the label-count comparison")
    parser.add_argument("--job_images", type=int, default=3000,
                        help="images for the longest whole job, where process start weighs least")
    parser.add_argument("--loop_images", type=int, default=30, help="images for the (slow) seed-style loop")
    parser.add_argument("--rss_images", type=int, nargs=2, default=[2000, 20000],
                        help="the two bucket sizes whose peak RSS must match (small generated images)")
    parser.add_argument("--only", choices=["rss"], help="run one part only (rss: the flat-memory check)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--workdir", default=str(REPO / "bench-output"))
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    if args.only == "rss":
        return print_rss(flat_memory(work, args.rss_images, args.batch_size))
    big = make_images(work / f"images{args.images}", args.images)
    small = make_images(work / f"images{args.label_images}", args.label_images)

    rows = []
    # The image model on each runtime, same images, same batches; eager PyTorch is the reference ("eager loop").
    loop_rate, loop_s = bare_loop(big, args.batch_size, LocalBackend(runtime="torch"))
    rows.append(("eager loop: read+decode+forward, PyTorch (model loaded)", args.images, loop_s, loop_rate, None, ""))
    onnx_rate, onnx_s = bare_loop(big, args.batch_size, LocalBackend(runtime="onnx"))
    rows.append(("ONNX fp32 loop (the default runtime)", args.images, onnx_s, onnx_rate, None,
                 f"{onnx_rate / loop_rate:.2f}x eager loop"))
    calibration = f"{make_images(work / 'calibration', 64, seed=1)}/*.jpg"  # other crops than the loop's images
    int8_rate, int8_s = bare_loop(big, args.batch_size, LocalBackend(runtime="onnx-int8", int8_calibration=calibration))
    rows.append(("ONNX int8 loop (static, QDQ, calibrated on 64 other crops)", args.images, int8_s, int8_rate, None,
                 f"{int8_rate / loop_rate:.2f}x eager loop"))
    seed_paths = sorted(small.glob("*.jpg"))[: args.loop_images]
    for label_set in ("everyday", "cifar100", "imagenet"):
        labels = load_label_set(label_set)
        seed_rate, seed_s = seed_style_loop(seed_paths, labels)
        rows.append((f"seed-style loop, {len(labels)} labels embedded per image", len(seed_paths), seed_s, seed_rate,
                     None, f"{seed_rate / loop_rate:.2f}x eager loop"))
    job_rate, job_s, job_rss = whole_job(big, "everyday", args.batch_size, work / "out")
    rows.append(("whole job, DirectRunner in-process, 12 labels", args.images, job_s, job_rate, job_rss,
                 f"{job_rate / loop_rate:.2f}x eager loop"))
    large = make_images(work / f"images{args.job_images}", args.job_images, seed=2)
    large_rate, large_s, large_rss = whole_job(large, "everyday", args.batch_size, work / "out")
    rows.append(("whole job, DirectRunner in-process, 12 labels", args.job_images, large_s, large_rate, large_rss,
                 f"{large_rate / loop_rate:.2f}x eager loop"))
    mp_rate, mp_s, mp_rss = whole_job(big, "everyday", args.batch_size, work / "out", "--direct_running_mode",
                                      "multi_processing", "--direct_num_workers", "2")
    rows.append(("whole job, DirectRunner 2 processes, 12 labels", args.images, mp_s, mp_rate, mp_rss,
                 f"{mp_rate / loop_rate:.2f}x eager loop"))
    few_rate, few_s, few_rss = whole_job(small, "everyday", args.batch_size, work / "out")
    rows.append(("whole job, 12 labels", args.label_images, few_s, few_rate, few_rss, ""))
    many_rate, many_s, many_rss = whole_job(small, "imagenet", args.batch_size, work / "out")
    rows.append(("whole job, 1,000 labels", args.label_images, many_s, many_rate, many_rss,
                 f"{many_s / few_s:.2f}x the time of 12 labels"))

    print(f"\n{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · Python "
          f"{platform.python_version()} · batch size {args.batch_size}\n")
    print("| run | images | seconds | images/s | peak RSS MiB | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, n, seconds, rate, rss, ratio in rows:
        print(f"| {name} | {n} | {seconds:.1f} | {rate:.1f} | {rss if rss is not None else ''} | {ratio} |")
    previous = min(start_up_seconds(PREVIOUS_SETTINGS) for _ in range(3))
    current = min(start_up_seconds({}) for _ in range(3))
    print(f"\nworker start-up (models loaded, 1,000 class texts embedded; best of 3): previous settings "
          f"{previous:.2f} s, current {current:.2f} s ({current - previous:+.2f} s)")
    print(f"peak RSS, {args.label_images} vs {args.images} images (in-process, 12 labels): "
          f"{few_rss} vs {job_rss} MiB ({job_rss / few_rss:.2f}x for {args.images / args.label_images:.1f}x images)")
    return print_rss(flat_memory(work, args.rss_images, args.batch_size))


def flat_memory(work: Path, counts: list[int], batch_size: int) -> list[tuple[int, float, float, int]]:
    """(images, seconds, images/s, peak RSS MiB) of the whole job on buckets of small images of each size."""
    rows = []
    for count in counts:
        folder = make_images(work / f"thumbs{count}", count, seed=3, max_side=128)
        rate, seconds, rss = whole_job(folder, "everyday", batch_size, work / "out")
        rows.append((count, seconds, rate, rss))
    return rows


def print_rss(rows: list[tuple[int, float, float, int]]) -> int:
    print("\n| whole job, in-process, 12 labels, images of at most 128 px | seconds | images/s | peak RSS MiB |")
    print("| ---: | ---: | ---: | ---: |")
    for count, seconds, rate, rss in rows:
        print(f"| {count} | {seconds:.1f} | {rate:.1f} | {rss} |")
    (small, *_, small_rss), (large, *_, large_rss) = rows[0], rows[-1]
    print(f"peak RSS, {small} vs {large} images: {small_rss} vs {large_rss} MiB "
          f"({large_rss / small_rss:.2f}x for {large / small:.0f}x images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
