"""`make accuracy`: top-1, top-5 and ECE of the embedded backend on every dev set of `make devsets`, through the
full `pipelines.evaluate` job, for the first defaults (before), those before the evidence strength (previous) and
today's (after), by set and by source.

Extra arguments go to every evaluation of both runs (e.g. --templates photos), so variants are compared in one run.
"""
from __future__ import annotations

import argparse
import csv
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
from transforms.run_folder import read_run

# The defaults before the leave-one-source-out search: bare class names, no WordNet mixing, scale 15, no "none".
BEFORE = ["--templates", "photo", "--local_class_prompt", "{}", "--local_top_t", "20", "--local_chain_length", "0",
          "--local_hierarchy_weight", "0", "--local_centre", "true", "--local_logit_scale", "15",
          "--local_none_margin", "none", "--local_full_evidence", "0"]
# The defaults before the evidence strength (benchmarks/weak_evidence.py): scale 10, margin 0.15, every image full.
PREVIOUS = ["--local_logit_scale", "10", "--local_none_margin", "0.15", "--local_full_evidence", "0"]
RUNS = {"before": BEFORE, "previous": PREVIOUS, "after": []}


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
    header = " | ".join(f"{m} {run}" for m in metrics for run in RUNS) + " |"
    columns = " | ".join("---:" for _ in metrics for _ in RUNS) + " |"
    print("| dev set | source | labels | images | " + header)
    print("| --- | --- | ---: | ---: | " + columns)
    for row in index:
        after = results["after"][row["name"]]
        cells = [_cell(m, results[run][row["name"]][m]) for m in metrics for run in RUNS]
        print(f"| {row['name']} | {row['source']} | {after['num_labels']} | {after['n']} | " + " | ".join(cells) + " |")
    print("\nBy source (mean over the source's dev sets), and the mean over sources:\n")
    print("| source | images | " + header)
    print("| --- | ---: | " + columns)
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
    print_min_prob(devsets, output, index, sources)
    return 0


MIN_PROBS = (0.0, 0.1, 0.2, 0.3, 0.5)


def print_min_prob(devsets: Path, output: Path, index: list[dict], sources: list[str]) -> None:
    """What `--min_prob` would keep of each run's predictions, by source (its dev sets' images pooled): the share of
    images whose top-1 probability reaches it, and the share of those whose top label is right."""
    print("\nWhat `--min_prob` keeps, by source: the share of images that keep a label (the rest would be "
          "`unknown`), and how many of those are right\n")
    print("| run | --min_prob | " + " | ".join(sources) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in sources) + " |")
    for run in ("previous", "after"):
        outcomes = {source: [] for source in sources}
        for row in index:
            with (devsets / row["name"] / "truth.csv").open() as f:
                truth = {line["uri"]: line["label"] for line in csv.DictReader(f)}
            for result in read_run(str(output / run / row["name"] / "predictions")):
                outcomes[row["source"]].append((result["probs"][0] if result["probs"] else 0.0,
                                                result["labels"][0] == evaluate.truth_of(result["uri"], truth)))
        for min_prob in MIN_PROBS:
            cells = []
            for source in sources:
                kept = [right for prob, right in outcomes[source] if prob >= min_prob]
                cells.append(f"{len(kept) / len(outcomes[source]):.0%} kept, "
                             f"{np.mean(kept) if kept else float('nan'):.0%} right")
            print(f"| {run} | {min_prob:g} | " + " | ".join(cells) + " |")


def _cell(metric: str, value: float) -> str:
    return f"{value:.3f}" if metric == "ece" else f"{value:.1%}"


if __name__ == "__main__":
    sys.exit(main())
