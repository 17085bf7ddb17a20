"""`make bench`, buckets: a job whose images are in an S3 bucket (moto's S3 server on 127.0.0.1), before and after
one fetch per image: images/s and requests per image, counted in the server's own request log.

"Before" is the same job run from another commit of this repository (a git worktree, default the last commit before
the change), whose listing reaches the server through AWS_ENDPOINT_URL: it could not take --s3_* flags to fsspec, nor
write a run folder to S3, so both runs write their run folder to local disk.

python -m benchmarks.buckets [--images 2000] [--before REV]
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

from testbed.images import make_images
from testbed.s3 import RequestLog, s3_server

REPO = Path(__file__).resolve().parents[1]
BEFORE = "b666dc5"  # the last commit that read every object twice


def run(checkout: Path, endpoint: str, log: RequestLog, count: int, output: Path) -> dict:
    """One classify job over s3://bench/images/: seconds, images/s, GETs per image and requests per image."""
    log.lines.clear()
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipelines.classify_images", "--input", "s3://bench/images/*.jpg",
                           "--labels", "everyday", "--output", str(output), "--s3_endpoint_url", endpoint,
                           "--s3_access_key_id", "bench", "--s3_secret_access_key", "bench", "--s3_region_name",
                           "us-east-1"], cwd=checkout, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - start
    if done.returncode:
        raise SystemExit(f"the job in {checkout} failed:\n{done.stderr[-3000:]}")
    gets = log.gets(r"GET /bench/(images/[^ ?]+)")
    return {"seconds": seconds, "images/s": count / seconds, "GETs per image": sum(gets.values()) / count,
            "requests per image": len(log.lines) / count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--before", default=BEFORE, help=f"the commit to compare with (default {BEFORE})")
    args = parser.parse_args()
    import boto3

    server, endpoint, log = s3_server()
    work = Path(tempfile.mkdtemp(prefix="bench-buckets-"))
    images = make_images(work / "images", args.images, max_side=256)
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="bench")
    for path in sorted(images.glob("*.jpg")):
        s3.upload_file(str(path), "bench", f"images/{path.name}")
    before = work / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=REPO, check=True,
                   capture_output=True)
    try:
        rows = {f"before ({args.before})": run(before, endpoint, log, args.images, work / "out-before"),
                "after": run(REPO, endpoint, log, args.images, work / "out-after")}
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, capture_output=True)
        server.stop()
    print(f"Buckets: {args.images} images in s3://bench on moto's S3 server, labels `everyday`, DirectRunner; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {datetime.date.today()}\n")
    print("| code | seconds | images/s | GETs per image | requests per image |\n| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['seconds']:.1f} | {row['images/s']:.1f} | {row['GETs per image']:.2f} | "
              f"{row['requests per image']:.2f} |")
    first, second = rows.values()
    print(f"\nafter / before: {second['images/s'] / first['images/s']:.2f}x the images/s, "
          f"{second['GETs per image'] / first['GETs per image']:.2f}x the GETs")


if __name__ == "__main__":
    main()
