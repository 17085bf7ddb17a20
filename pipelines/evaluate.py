"""Scores zero-shot labeling on images with known labels: runs the classification job, then measures it.

python -m pipelines.evaluate --input 'devsets/cifar10/*.png' --truth devsets/cifar10/truth.csv \\
    --labels cifar10 --output eval/cifar10 [--backend local] [classify_images options]
"""
from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

import numpy as np

import pipelines
from pipelines import classify_images
from pipelines.cli import ConfigError, OneLineParser, add_backend_argument, exit_job
from transforms.examples import ExamplesError, read_examples, read_uri_labels
from transforms.label_sets import LabelSetError, load_label_set
from transforms.run_folder import read_run
from transforms.write import spreadsheet_cell

FAILED = "(failed)"  # the prediction of an image that never got labels: it counts as wrong, never as absent


def read_truth(path: str, labels: Sequence[str]) -> dict[str, str]:
    """uri -> label from a CSV with columns uri,label; labels outside the set are a ConfigError."""
    try:
        rows = read_uri_labels(path, "--truth")
    except ExamplesError as e:
        raise ConfigError(str(e)) from None
    if not rows:
        raise ConfigError(f"--truth {path!r} has a header but no rows")
    truth = dict(rows)
    unknown = sorted(set(truth.values()) - set(labels))
    if unknown:
        raise ConfigError(f"--truth labels not in the label set: {', '.join(unknown[:10])}")
    names = Counter(PurePosixPath(uri).name for uri in truth)
    if clashes := [name for name, count in names.items() if count > 1 and name in truth]:
        raise ConfigError(f"--truth names {clashes[0]!r} more than once")
    return truth


def truth_of(uri: str, truth: dict[str, str]) -> Optional[str]:
    """The true label of an output uri: by full uri, else by file name (truth files may list base names)."""
    return truth.get(uri) or truth.get(PurePosixPath(uri).name)


def score(truth: dict[str, str], predictions: dict[str, list[str]], failed: dict[str, str],
          labels: Sequence[str], confidence: Optional[dict[str, float]] = None) -> dict:
    """top-1/top-5 over every evaluated image (failed ones count as wrong), per-class precision/recall and, given
    each prediction's top-1 probability, the expected calibration error (failed images: probability 0)."""
    pairs = [(truth_of(uri, truth), ranked, (confidence or {}).get(uri, 0.0)) for uri, ranked in predictions.items()]
    pairs += [(truth_of(uri, truth), [FAILED], 0.0) for uri in failed]
    ece = expected_calibration_error([p for true, _, p in pairs if true is not None],
                                     [ranked[0] == true for true, ranked, _ in pairs if true is not None])
    pairs = [(true, ranked) for true, ranked, _ in pairs if true is not None]
    n = len(pairs)
    top1 = sum(ranked[0] == true for true, ranked in pairs)
    top5 = sum(true in ranked[:5] for true, ranked in pairs)
    support = Counter(true for true, _ in pairs)
    predicted = Counter(ranked[0] for _, ranked in pairs)
    hits = Counter(true for true, ranked in pairs if ranked[0] == true)
    per_class = {
        label: {"support": support[label], "predicted": predicted[label], "correct": hits[label],
                "precision": hits[label] / predicted[label] if predicted[label] else None,
                "recall": hits[label] / support[label] if support[label] else None}
        for label in sorted(set(support) | (set(predicted) - {FAILED}), key=list(labels).index)
    }
    return {"n": n, "top1": top1 / n if n else None, "top5": top5 / n if n else None,
            "ece": ece if confidence is not None and n else None,
            "failed": sum(1 for _, ranked in pairs if ranked == [FAILED]),
            "not_found": sum(1 for uri in truth if not _seen(uri, predictions, failed)),
            "confusion": [[true, ranked[0]] for true, ranked in pairs], "per_class": per_class}


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """ECE: over equal-width bins of top-1 probability, the image-weighted mean |accuracy - mean confidence|."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gaps = [abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).sum()
            for b in range(bins) if (which == b).any()]
    return float(sum(gaps) / len(confidence)) if len(confidence) else float("nan")


def _seen(truth_uri: str, predictions: dict, failed: dict) -> bool:
    seen = set(predictions) | set(failed)
    return truth_uri in seen or truth_uri in {PurePosixPath(uri).name for uri in seen}


def write_confusion_png(pairs: list[list[str]], labels: Sequence[str], path: Path) -> None:
    """Counts of (true, predicted) for the classes that occur, so even 1,000-label sets stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(labels) + [FAILED]
    rows = sorted({true for true, _ in pairs}, key=order.index)
    cols = sorted({pred for _, pred in pairs} | set(rows), key=order.index)
    counts = Counter((true, pred) for true, pred in pairs)
    matrix = [[counts[(true, pred)] for pred in cols] for true in rows]
    size = max(4.0, 0.35 * len(cols) + 2)
    fig, ax = plt.subplots(figsize=(size, max(3.0, 0.35 * len(rows) + 2)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > max(map(max, matrix)) / 2 else "black")
    ax.set_xlabel("predicted (top-1)")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = OneLineParser(prog=pipelines.prog("evaluate"), description=__doc__.splitlines()[0],
                                           epilog="Other options go to pipelines.classify_images.",
                                           allow_abbrev=False)
    parser.add_argument("--input", required=True)
    parser.add_argument("--truth", required=True, help="CSV with columns uri,label (uri: full path or file name)")
    parser.add_argument("--labels", required=True)
    parser.add_argument("--output", required=True, help="folder for metrics.json, per_class.csv, confusion.png")
    parser.add_argument("--examples", metavar="FILE",
                        help="confirmed images that teach the labels (classify_images --examples); they are left "
                             "out of the scores, which would otherwise count images the labels were taught on")
    add_backend_argument(parser)
    args, classify_args = parser.parse_known_args(argv)
    try:
        labels = load_label_set(args.labels)
        truth = read_truth(args.truth, labels)
        examples = {uri for uri, _ in read_examples(args.examples, labels)} if args.examples else set()
    except (LabelSetError, ConfigError, ExamplesError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if examples:  # by uri or by file name, as the truth is matched
        names = examples | {PurePosixPath(uri).name for uri in examples}
        truth = {uri: label for uri, label in truth.items()
                 if uri not in names and PurePosixPath(uri).name not in names}
        classify_args = ["--examples", args.examples, *classify_args]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    run = str(output / "predictions")
    status = classify_images.main(["--input", args.input, "--labels", args.labels, "--output", run,
                                   "--overwrite", "--top_k", str(min(5, len(labels))),
                                   "--backend", args.backend, *classify_args])
    if status:
        return status
    rows = read_run(run)
    predictions = {row["uri"]: row["labels"] for row in rows}
    confidence = {row["uri"]: row["probs"][0] if row["probs"] else 0.0 for row in rows}
    failed = {row["uri"]: row["stage"] for row in read_run(run, "errors")}
    metrics = score(truth, predictions, failed, labels, confidence)
    write_confusion_png(metrics.pop("confusion"), labels, output / "confusion.png")
    metrics.update(labels=args.labels, num_labels=len(labels), backend=args.backend, input=args.input,
                   truth=args.truth, examples=args.examples, examples_left_out=len(examples))
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["label", "support", "predicted", "correct", "precision", "recall"])
    for label, row in metrics["per_class"].items():
        writer.writerow([spreadsheet_cell(label), *row.values()])
    (output / "per_class.csv").write_text(buffer.getvalue())
    print(f"\n{args.labels} on {args.backend}: n={metrics['n']}  top-1 {metrics['top1']:.1%}  "
          f"top-5 {metrics['top5']:.1%}  ECE {metrics['ece']:.3f}  failed {metrics['failed']}  "
          f"not found {metrics['not_found']}"
          + (f"  ({len(examples)} examples left out)" if examples else ""))
    worst = sorted((row["recall"], label) for label, row in metrics["per_class"].items() if row["support"])[:5]
    print("lowest recall: " + ", ".join(f"{label} {recall:.0%}" for recall, label in worst))
    print(f"wrote {output}/metrics.json, per_class.csv, confusion.png")
    return 0


if __name__ == "__main__":
    exit_job(main())
