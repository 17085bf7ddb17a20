"""`make bench`, resume: a job SIGKILLed once 85% of its images are embedded, then the same command again, or the
command with other --labels, against a clean run of the same images with those labels; and a job that fails its
commit on --max_error_fraction, run again with a higher one.

Every figure is measured in this one run, on this machine, each job a fresh process, and printed as markdown with
ratios; the rows of every rerun are checked against the clean run's.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from testbed.images import make_images
from transforms.progress import PROGRESS_PREFIX, SAVE_EVERY
from transforms.run_folder import read_run

REPO = Path(__file__).resolve().parents[1]


def _command(images: Path, output: Path, *flags: str, labels: str = "everyday") -> list[str]:
    return [sys.executable, "-m", "pipelines.classify_images", "--input", f"{images}/*.jpg", "--labels", labels,
            "--output", str(output), *flags]


def timed(command: list[str], expect: int = 0) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != expect:
        raise RuntimeError(f"exit {done.returncode}, not {expect}: {done.stderr[-3000:]}")
    return time.perf_counter() - start


def killed_at(command: list[str], output: Path, fraction: float, images: int) -> int:
    """Starts the job and SIGKILLs it once its saved progress holds `fraction` of the images; returns how many."""
    needed = int(np.ceil(fraction * images / SAVE_EVERY))
    job = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    while len(list(output.glob(f"run-*/{PROGRESS_PREFIX}*.parquet"))) < needed:
        if job.poll() is not None:
            raise RuntimeError("the job ended before it could be killed")
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    return needed * SAVE_EVERY


def same_rows(output: Path, clean: Path) -> bool:
    """Whether the run in `output` labeled every image of the clean run, by file name, as the clean run did."""
    got = {Path(row["uri"]).name: row for row in read_run(str(output))}
    want = {Path(row["uri"]).name: row for row in read_run(str(clean))}
    return got.keys() == want.keys() and all(
        got[name]["labels"] == row["labels"] and np.allclose(got[name]["scores"], row["scores"], atol=1e-6)
        for name, row in want.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / "bench-output" / "resume")
    args = parser.parse_args()
    images = make_images(args.work / "images", args.images, max_side=640)
    # 12% of the inputs do not decode, over the default --max_error_fraction 0.1: spread among the photos (the job
    # is sure to fail only late, when most of them are embedded), or sorted first (it fails at once)
    spread, first = args.work / "errors-spread", args.work / "errors-first"
    if not first.exists():
        shutil.copytree(images, spread)
        shutil.copytree(images, first)
        count = int(0.12 * args.images / 0.88)
        for i in range(count):
            data = b"\xff\xd8\xff not a photo %d" % i
            (spread / f"img{i * args.images // count:05d}-broken.jpg").write_bytes(data)
            (first / f"broken{i:05d}.jpg").write_bytes(data)
    rows = []
    for round_ in range(args.rounds):
        outputs = {name: args.work / f"{name}-{round_}"
                   for name in ("clean", "killed", "spread", "first", "clean-general", "relabeled")}
        for folder in outputs.values():
            shutil.rmtree(folder, ignore_errors=True)
        clean_s = timed(_command(images, outputs["clean"]))
        saved = killed_at(_command(images, outputs["killed"]), outputs["killed"], 0.85, args.images)
        row = {"clean": clean_s, "saved": saved, "killed": timed(_command(images, outputs["killed"])),
               "killed rows": same_rows(outputs["killed"], outputs["clean"]),
               "clean general": timed(_command(images, outputs["clean-general"], labels="general"))}
        killed_at(_command(images, outputs["relabeled"]), outputs["relabeled"], 0.85, args.images)
        row["relabeled"] = timed(_command(images, outputs["relabeled"], labels="general"))
        row["relabeled rows"] = same_rows(outputs["relabeled"], outputs["clean-general"])
        for case, inputs in (("spread", spread), ("first", first)):
            row[f"{case} failed"] = timed(_command(inputs, outputs[case]), expect=1)
            row[case] = timed(_command(inputs, outputs[case], "--max_error_fraction", "0.15"))
            row[f"{case} rows"] = same_rows(outputs[case], outputs["clean"])
        rows.append(row)
        print(f"round {round_ + 1}: {row}", file=sys.stderr)
    median = statistics.median
    n = len(rows)
    print(f"\n### Resume ({datetime.date.today()}, {platform.node() or 'this machine'}, {os.cpu_count()} cores, "
          f"{args.images} images of at most 640 px, `local`, median of {n} rounds)\n")
    print(f"Clean run: {median(r['clean'] for r in rows):.1f} s.\n")
    print("| what ended the first job | first job | same command again | again / clean run | rows equal a clean "
          "run's |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(f"| SIGKILL with {rows[0]['saved']} of {args.images} images saved ({rows[0]['saved'] / args.images:.0%}) "
          f"| killed | {median(r['killed'] for r in rows):.1f} s | "
          f"**{median(r['killed'] / r['clean'] for r in rows):.2f}** | {all(r['killed rows'] for r in rows)} |")
    print(f"| SIGKILL with {rows[0]['saved']} of {args.images} images saved, then `--labels general` (was "
          f"`everyday`) | killed | {median(r['relabeled'] for r in rows):.1f} s | "
          f"**{median(r['relabeled'] / r['clean general'] for r in rows):.2f}** (of a clean `general` run, "
          f"{median(r['clean general'] for r in rows):.1f} s) | {all(r['relabeled rows'] for r in rows)} |")
    for case, what in (("spread", "12% broken files among the photos"), ("first", "12% broken files, sorted first")):
        print(f"| TooManyErrorsError ({what}), then `--max_error_fraction 0.15` | "
              f"{median(r[f'{case} failed'] for r in rows):.1f} s | {median(r[case] for r in rows):.1f} s | "
              f"**{median(r[case] / r['clean'] for r in rows):.2f}** | {all(r[f'{case} rows'] for r in rows)} |")


if __name__ == "__main__":
    main()
