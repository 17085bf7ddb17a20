"""`make accuracy`: top-1, top-5 and ECE of the embedded backend on every dev set of `make devsets`, through the
full `pipelines.evaluate` job, for the previous defaults (before) and today's (after), by set and by source.

Extra arguments go to every evaluation of both runs (e.g. --templates photos), so variants are compared in one run.
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

import numpy as np

from pipelines import evaluate
from testbed.devsets import image_glob, read_index

# The defaults before the leave-one-source-out search: bare class names, no WordNet mixing, scale 15, no "none".
BEFORE = ["--templates", "photo", "--local_class_prompt", "{}", "--local_top_t", "20", "--local_chain_length", "0",
          "--local_hierarchy_weight", "0", "--local_centre", "true", "--local_logit_scale", "15",
          "--local_none_margin", "none"]
RUNS = {"before": BEFORE, "after": []}


def evaluate_set(devsets: Path, name: str, output: Path, extra: list[str]) -> dict:
    folder = devsets / name
    with redirect_stdout(StringIO()):
        status = evaluate.main(["--input", str(folder / image_glob(folder)), "--truth", str(folder / "truth.csv"),
                                "--labels", str(folder / "labels.txt"), "--output", str(output / name), *extra])
    if status:
        raise SystemExit(f"evaluation of {name} failed with status {status}")
    return json.loads((output / name / "metrics.json").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devsets", default="devsets")
    parser.add_argument("--output", default="eval-output")
    args, extra = parser.parse_known_args(argv)
    devsets, output = Path(args.devsets), Path(args.output)
    index = read_index(devsets)
    results = {run: {row["name"]: evaluate_set(devsets, row["name"], output / run, flags + extra) for row in index}
               for run, flags in RUNS.items()}
    print(f"\n{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · "
          f"extra options: {' '.join(extra) or '(none)'}\n")
    metrics = ("top1", "top5", "ece")
    print("| dev set | source | labels | images | " + " | ".join(f"{m} before | {m} after" for m in metrics) + " |")
    print("| --- | --- | ---: | ---: | " + " | ".join("---: | ---:" for _ in metrics) + " |")
    for row in index:
        before, after = results["before"][row["name"]], results["after"][row["name"]]
        cells = [_cell(m, before[m]) + " | " + _cell(m, after[m]) for m in metrics]
        print(f"| {row['name']} | {row['source']} | {after['num_labels']} | {after['n']} | " + " | ".join(cells) + " |")
    print("\nBy source (mean over the source's dev sets), and the mean over sources:\n")
    print("| source | images | " + " | ".join(f"{m} before | {m} after" for m in metrics) + " |")
    print("| --- | ---: | " + " | ".join("---: | ---:" for _ in metrics) + " |")
    sources = list(dict.fromkeys(row["source"] for row in index))
    means = {run: {m: [] for m in metrics} for run in RUNS}
    for source in sources:
        names = [row["name"] for row in index if row["source"] == source]
        cells = []
        for m in metrics:
            for run in RUNS:
                value = float(np.mean([results[run][name][m] for name in names]))
                means[run][m].append(value)
                cells.append(_cell(m, value))
        print(f"| {source} | {max(results['after'][n]['n'] for n in names)} | " + " | ".join(cells) + " |")
    print("| **mean** | | " + " | ".join(_cell(m, float(np.mean(means[run][m]))) for m in metrics for run in RUNS)
          + " |")
    return 0


def _cell(metric: str, value: float) -> str:
    return f"{value:.3f}" if metric == "ece" else f"{value:.1%}"


if __name__ == "__main__":
    sys.exit(main())
