"""The probabilities on drawings no setting was chosen on (Tux Paint's stamps, devsets/tuxpaint-held-out), through
the jobs a user runs: zero-shot, taught by a fixed draw of examples, and by one example per label.

1. `classify --keep_embeddings` of every drawing (the zero-shot run, whose vectors relabel reads);
2. `evaluate --examples` with a fixed draw of EXAMPLES examples (seeded, as even over the labels as it goes), which
   scores the other drawings only, against `evaluate` without examples on the same drawings: top-1, the ECE of the
   top-1 probability, the mean top-1 probability, the largest sum of a row's probabilities;
3. `relabel` of the kept vectors with the same examples, row for row against `classify` with them (the evaluate
   run's predictions): the same labels, and probabilities within 1e-6;
4. one example per label: the same scores, and how many drawings `--multi_label --threshold 0.5` labels, against
   zero-shot.
The reliability diagrams of step 2 are drawn to OUTPUT/reliability.png.

python -m benchmarks.held_out [--devsets devsets] [--output bench-output/held-out] [--examples 60]
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from pipelines import classify_images, evaluate, relabel
from transforms.reliability import expected_calibration_error, reliability
from transforms.run_folder import read_run

SET = "tuxpaint-held-out"
EXAMPLES = 60


def draw(truth: dict[str, str], count: int, seed: int = 0) -> dict[str, str]:
    """`count` examples, as even over the labels as it goes: each label's drawings in a seeded order, one label's
    next drawing at a time, the labels taken in a seeded order each round."""
    rng = np.random.default_rng(seed)
    by_label = {label: list(rng.permutation(sorted(uri for uri, of in truth.items() if of == label)))
                for label in sorted(set(truth.values()))}
    chosen: dict[str, str] = {}
    while len(chosen) < count and any(by_label.values()):
        for label in rng.permutation(sorted(by_label)):
            if by_label[label] and len(chosen) < count:
                chosen[by_label[label].pop()] = label
    return chosen


def write_csv(path: Path, rows: dict[str, str]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "label"])
        writer.writerows(sorted(rows.items()))
    return path


def scored(folder: Path, truth: dict[str, str], keep: set[str]) -> dict:
    """top-1, ECE, mean top-1 probability and largest row sum over the drawings in `keep`, from the run in
    `folder`; with the reliability bins."""
    rows = [row for row in read_run(str(folder)) if Path(row["uri"]).name in keep]
    top = np.array([row["probs"][0] if row["probs"] else 0.0 for row in rows])
    right = np.array([row["labels"][0] == truth[Path(row["uri"]).name] for row in rows])
    return {"images": len(rows), "top1": float(right.mean()), "ece": expected_calibration_error(top, right),
            "mean_top_prob": float(top.mean()), "max_row_sum": max(sum(row["probs"]) for row in rows),
            "reliability": reliability(top, right)}


def multi_label(inputs: str, labels: str, output: Path, keep: set[str], examples: Path | None = None) -> int:
    """How many of the drawings in `keep` `--multi_label --threshold 0.5` gives a label."""
    flags = ["--examples", str(examples)] if examples else []
    assert classify_images.main(["--input", inputs, "--labels", labels, "--output", str(output), "--overwrite",
                                 "--multi_label", "--threshold", "0.5", *flags]) == 0
    return sum(row["labels"] != ["unknown"] for row in read_run(str(output)) if Path(row["uri"]).name in keep)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devsets", type=Path, default=Path("devsets"))
    parser.add_argument("--output", type=Path, default=Path("bench-output/held-out"))
    parser.add_argument("--examples", type=int, default=EXAMPLES)
    args = parser.parse_args(argv)
    folder = args.devsets / SET
    if not (folder / "truth.csv").is_file():
        raise SystemExit(f"error: {folder} is missing; run `make devsets` first")
    shutil.rmtree(args.output, ignore_errors=True)
    args.output.mkdir(parents=True)
    with (folder / "truth.csv").open() as f:
        truth = {row["uri"]: row["label"] for row in csv.DictReader(f)}
    inputs, labels = f"{folder}/*.png", str(folder / "labels.txt")
    kept = args.output / "kept"
    assert classify_images.main(["--input", inputs, "--labels", labels, "--output", str(kept),
                                 "--keep_embeddings"]) == 0

    report: dict = {}
    diagrams = {}
    runs = ((f"{args.examples} examples", args.examples), ("1 example per label", len(set(truth.values()))))
    for name, count in runs:
        chosen = draw(truth, count)
        examples = write_csv(args.output / f"examples-{count}.csv", {f"{folder}/{uri}": label
                                                                     for uri, label in chosen.items()})
        others = set(truth) - set(chosen)
        taught = args.output / f"taught-{count}"
        assert evaluate.main(["--input", inputs, "--truth", str(folder / "truth.csv"), "--labels", labels,
                              "--output", str(taught), "--examples", str(examples)]) == 0
        relabeled = args.output / f"relabeled-{count}"
        assert relabel.main(["--embeddings", str(kept), "--labels", labels, "--output", str(relabeled),
                             "--examples", str(examples), "--top_k", str(len(set(truth.values())))]) == 0
        predictions = {row["uri"]: row for row in read_run(str(taught / "predictions"))}
        again = {row["uri"]: row for row in read_run(str(relabeled))}
        same = sum(row["labels"][:5] == again[uri]["labels"][:5]
                   and np.allclose(row["probs"][:5], again[uri]["probs"][:5], atol=1e-6)
                   for uri, row in predictions.items())
        zero, with_examples = scored(kept, truth, others), scored(taught / "predictions", truth, others)
        report[name] = {"examples": len(chosen), "scored": len(others), "zero-shot": zero, "taught": with_examples,
                        "relabel equals classify": f"{same}/{len(predictions)}",
                        "multi-label 0.5, zero-shot": multi_label(inputs, labels, args.output / "multi-zero", others),
                        "multi-label 0.5, taught": multi_label(inputs, labels, args.output / f"multi-{count}",
                                                               others, examples)}
        diagrams[f"zero-shot ({name} left out)"] = zero["reliability"]
        diagrams[f"taught by {name}"] = with_examples["reliability"]

    evaluate.write_reliability_png(dict(list(diagrams.items())[:2]), args.output / "reliability.png",
                                   f"Tux Paint drawings ({len(truth)}, {len(set(truth.values()))} labels), "
                                   "the drawings that are not examples")
    print("| run | examples / scored | top-1 | ECE of the top-1 probability | mean top-1 probability | largest row sum "
          "| drawings `--multi_label --threshold 0.5` labels | relabel == classify |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, result in report.items():
        for kind in ("zero-shot", "taught"):
            r = result[kind]
            print(f"| {name}: {kind} | {result['examples']} / {result['scored']} | {r['top1']:.1%} | {r['ece']:.3f} | "
                  f"{r['mean_top_prob']:.2f} | {r['max_row_sum']:.2f} | "
                  f"{result[f'multi-label 0.5, {kind}']} | {result['relabel equals classify'] * (kind == 'taught')} |")
    (args.output / "held_out.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}/held_out.json and reliability.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
