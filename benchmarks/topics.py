"""Topic purity on the dev sources: do the topics that pipelines.topics finds, knowing no labels, agree with the
truth? For each source's coarse dev set: classify_images --keep_embeddings, then pipelines.topics with as many
topics as the set has true labels present; purity = the share of images whose topic's commonest true label is
theirs. Printed beside two references: the largest label's share (what one topic, or topics at random, score) and
the purity of grouping the images by classify_images' top label with the true label set given.

python -m benchmarks.topics [--devsets devsets] [--output bench-output/topics]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import platform
import sys
from collections import Counter
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

from benchmarks.devsets import read_index
from pipelines import classify_images, topics
from transforms.run_folder import read_run


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
    extension = Path(next(iter(truth))).suffix
    kept, found = output / name / "kept", output / name / "topics"
    k = len(set(truth.values()))
    with redirect_stdout(StringIO()):
        assert classify_images.main(["--input", str(folder / f"*{extension}"), "--labels", str(folder / "labels.txt"),
                                     "--output", str(kept), "--keep_embeddings", "--overwrite", "--top_k", "1"]) == 0
        assert topics.main(["--embeddings", str(kept), "--topics", str(k), "--output", str(found),
                            "--overwrite"]) == 0
    in_truth = {Path(row["uri"]).name: row for row in read_run(str(found), "images") if Path(row["uri"]).name in truth}
    labeled = {Path(row["uri"]).name: row["labels"][0] for row in read_run(str(kept))}
    names = [row["name"] for row in read_run(str(found), "topics")]
    return {"images": len(in_truth), "labels": k, "topics": len(names),
            "purity": purity({n: str(row["topic"]) for n, row in in_truth.items()}, truth),
            "largest": Counter(truth.values()).most_common(1)[0][1] / len(truth),
            "by_label": purity(labeled, truth), "names": names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devsets", type=Path, default=Path("devsets"))
    parser.add_argument("--output", type=Path, default=Path("bench-output/topics"))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
