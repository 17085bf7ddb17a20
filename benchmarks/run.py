"""`make bench`: the whole job against the model's own speed, a bare ONNX loop, on the same images in one run; start-up
alone; peak memory on a big bucket. "Before" is the same job from another commit (a git worktree). With --runtimes,
the image model's runtimes (eager PyTorch, ONNX fp32, int8) and the seed-style per-image loop too.

Every figure is measured in this one run, on this machine, and printed as a markdown table with ratios.
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
from typing import Optional

import numpy as np
from PIL import Image

from testbed.images import make_images
from transforms.backends import get_backend
from transforms.backends.graph_cache import CACHE_ENV
from transforms.backends.image_runtime import preprocess
from transforms.backends.local import LocalBackend, _load_classifier, _sentence_vectors
from transforms.decode import decode_image
from transforms.label_sets import load_label_set

REPO = Path(__file__).resolve().parents[1]
BEFORE = "a94c432"  # the last commit before start-up work: class texts embedded, graph exported, torch at every start


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


def bare_onnx_loop(folder: Path, batch_size: int) -> tuple[float, float]:
    """(images/s, seconds) of the model's own speed: read, decode, preprocess and ONNX Runtime in batches, one after
    the other, as a plain script would, the session open before the clock starts."""
    classifier = _load_classifier("onnx", 0, None)
    paths = sorted(folder.glob("*.jpg"))
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        images = [decode_image(path.read_bytes(), Image.MAX_IMAGE_PIXELS)[0] for path in paths[i:i + batch_size]]
        classifier.logits(np.stack([preprocess(image) for image in images]))
    seconds = time.perf_counter() - start
    return len(paths) / seconds, seconds


def whole_job(folder: Path, labels: str, batch_size: int, out: Path, *beam_args: str, checkout: Path = REPO,
              env: Optional[dict] = None) -> tuple[float, float, int]:
    """(images/s, seconds, peak RSS MiB) of `python -m pipelines.classify_images` of `checkout`, from process start
    to exit."""
    command = [sys.executable, "-m", "pipelines.classify_images", "--input", f"{folder}/*.jpg", "--labels", labels,
               "--output", str(out / "labels"), "--overwrite", "--batch_size", str(batch_size), *beam_args]
    # A fresh wrapper per job, so RUSAGE_CHILDREN's peak belongs to this job alone (workers included).
    wrapper = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
               "sys.stderr.write(done.stderr[-2000:] if done.returncode else '');"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper, *command], cwd=checkout, capture_output=True, text=True,
                          env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"job failed: {done.stderr}")
    images = len(list(folder.glob("*.jpg")))
    return images / seconds, seconds, int(done.stdout.split()[-1]) // 1024


def model_floor(work: Path, before: Path, sizes: list[int], batch_size: int, repeats: int = 3) -> None:
    """The whole job (before and now) against the bare ONNX loop on the same small images, at each size; each the
    best of `repeats` rounds (loop, before, now in turn), since a shared machine only ever slows a run down."""
    print(f"| images | bare ONNX loop, images/s | whole job before, images/s | ratio | whole job now, images/s | "
          f"ratio | now / before |  (best of {repeats} each)")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for count in sizes:
        folder = make_images(work / f"small{count}", count, seed=4, max_side=160)
        rounds = [(bare_onnx_loop(folder, batch_size)[0],
                   whole_job(folder, "everyday", batch_size, work / "out-before", checkout=before)[0],
                   whole_job(folder, "everyday", batch_size, work / "out")[0]) for _ in range(repeats)]
        loop_rate, old_rate, new_rate = (max(column) for column in zip(*rounds))
        print(f"| {count} | {loop_rate:.1f} | {old_rate:.1f} | {old_rate / loop_rate:.2f} | {new_rate:.1f} | "
              f"{new_rate / loop_rate:.2f} | {new_rate / old_rate:.2f}x |", flush=True)


def start_up(work: Path, before: Path, batch_size: int, tries: int = 3) -> None:
    """Seconds of a whole job on one image, best of `tries`: before, now with the graph cached, now on a machine
    that has not exported it yet."""
    one = make_images(work / "one", 1, seed=5, max_side=160)

    def best(**kwargs) -> float:
        return min(whole_job(one, "everyday", batch_size, work / "out-one", **kwargs)[1] for _ in range(tries))

    previous = best(checkout=before)
    warm = best()
    with tempfile.TemporaryDirectory() as cache:
        cold = min(whole_job(one, "everyday", batch_size, work / "out-one",
                             env={**os.environ, CACHE_ENV: tempfile.mkdtemp(dir=cache)})[1] for _ in range(tries))
    print(f"\n| start-up: a whole job on 1 image, best of {tries} | seconds | ratio |\n| --- | ---: | ---: |")
    print(f"| before ({BEFORE}) | {previous:.2f} | 1.00 |\n| now, graph cached | {warm:.2f} | {warm / previous:.2f} |")
    print(f"| now, first job on a machine (graph exported) | {cold:.2f} | {cold / previous:.2f} |", flush=True)


def runtimes(work: Path, args: argparse.Namespace) -> None:
    """The image model on each runtime, the seed-style loop, and whole jobs by label count (--runtimes)."""
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

    print("\n| run | images | seconds | images/s | peak RSS MiB | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, n, seconds, rate, rss, ratio in rows:
        print(f"| {name} | {n} | {seconds:.1f} | {rate:.1f} | {rss if rss is not None else ''} | {ratio} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 3000],
                        help="image counts of the job-against-the-model comparison (small generated images)")
    parser.add_argument("--rss_images", type=int, nargs=2, default=[2000, 20000],
                        help="the two bucket sizes whose peak RSS must match (small generated images)")
    parser.add_argument("--before", default=BEFORE, help=f"the commit to compare with (default {BEFORE})")
    parser.add_argument("--runtimes", action="store_true", help="also the runtimes and the seed-style loop")
    parser.add_argument("--images", type=int, default=1000, help="--runtimes: images for the throughput comparison")
    parser.add_argument("--label_images", type=int, default=300, help="--runtimes: images for the label-count rows")
    parser.add_argument("--job_images", type=int, default=3000, help="--runtimes: images for the longest job")
    parser.add_argument("--loop_images", type=int, default=30, help="--runtimes: images for the seed-style loop")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the job-against-the-model comparison; "
                                                               "the best of each is shown")
    parser.add_argument("--workdir", default=str(REPO / "bench-output"))
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    import onnxruntime

    print(f"\n{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · Python "
          f"{platform.python_version()} · onnxruntime {onnxruntime.__version__} · batch size {args.batch_size} · "
          f"python -m benchmarks.run {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    before = work / "before"
    subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, capture_output=True)
    subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=REPO, check=True,
                   capture_output=True)
    try:
        model_floor(work, before, args.sizes, args.batch_size, args.repeats)
        start_up(work, before, args.batch_size)
        print_rss(flat_memory(work, args.rss_images, args.batch_size, before))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, capture_output=True)
    if args.runtimes:
        runtimes(work, args)
    return 0


def flat_memory(work: Path, counts: list[int], batch_size: int, before: Path) -> list[tuple[int, int, int]]:
    """(images, peak RSS MiB before, now) of the whole job on buckets of small images of each size."""
    rows = []
    for count in counts:
        folder = make_images(work / f"thumbs{count}", count, seed=3, max_side=128)
        old = whole_job(folder, "everyday", batch_size, work / "out-before", checkout=before)[2]
        rows.append((count, old, whole_job(folder, "everyday", batch_size, work / "out")[2]))
    return rows


def print_rss(rows: list[tuple[int, int, int]]) -> None:
    print(f"\n| whole job, in-process, 12 labels, images of at most 128 px | peak RSS MiB before ({BEFORE}) | "
          "peak RSS MiB now |\n| ---: | ---: | ---: |")
    for count, old, new in rows:
        print(f"| {count} | {old} | {new} |")


if __name__ == "__main__":
    sys.exit(main())
