"""`make accuracy`: top-1/top-5 of the offline backends on every dev set (run `make devsets` first).

Extra arguments go to every evaluation (e.g. --templates plain), so variants are compared in one run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

from pipelines import evaluate

DEV_SETS = {"everyday": "*.png", "cifar10": "*.png", "cifar100": "*.png", "imagenet": "*.jpg"}


def evaluate_all(devsets: Path, output: Path, extra: list[str]) -> dict[str, dict]:
    results = {}
    for name, files in DEV_SETS.items():
        with redirect_stdout(StringIO()):
            status = evaluate.main(["--input", str(devsets / name / files), "--truth", str(devsets / name / "truth.csv"),
                                    "--labels", name, "--output", str(output / name), *extra])
        if status:
            raise SystemExit(f"evaluation of {name} failed with status {status}")
        results[name] = json.loads((output / name / "metrics.json").read_text())
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devsets", default="devsets")
    parser.add_argument("--output", default="eval-output")
    args, extra = parser.parse_known_args(argv)
    results = evaluate_all(Path(args.devsets), Path(args.output), extra)
    print(f"\n{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · "
          f"options: {' '.join(extra) or '(defaults)'}\n")
    print("| dev set | labels | images | top-1 | top-5 | failed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, m in results.items():
        print(f"| {name} | {m['num_labels']} | {m['n']} | {m['top1']:.1%} | {m['top5']:.1%} | {m['failed']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
