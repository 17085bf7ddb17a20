"""Scores zero-shot labeling on images with known labels: runs the classification job, then measures it.

python -m pipelines.evaluate --input 'devsets/cifar10/*.png' --truth devsets/cifar10/truth.csv \\
    --labels cifar10 --output eval/cifar10 [--backend local] [classify_images options]
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

from pipelines import runner
from pipelines.classify_images import Classify, ClassifyPlan
from pipelines.cli import ConfigError, exit_job
from transforms.examples import ExamplesError, read_examples, read_uri_labels
from transforms.label_sets import LabelSetError, load_label_set
from transforms.manifest import Manifest
from transforms.reliability import calibration_error, reliability
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
    bins = reliability([p for true, _, p in pairs if true is not None],
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
            "ece": calibration_error(bins) if confidence is not None and n else None,
            "reliability": bins if confidence is not None else None,
            "failed": sum(1 for _, ranked in pairs if ranked == [FAILED]),
            "not_found": sum(1 for uri in truth if not _seen(uri, predictions, failed)),
            "confusion": [[true, ranked[0]] for true, ranked in pairs], "per_class": per_class}


def write_reliability_png(diagrams: dict[str, Sequence[dict]], path: Path, title: str = "") -> None:
    """The reliability diagram of one or more runs (name -> reliability bins), side by side: each bin's accuracy
    against its mean top-1 probability, the diagonal where they are equal, and how many images each bin holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(diagrams), figsize=(4.2 * len(diagrams), 4.4), squeeze=False)
    for ax, (name, bins) in zip(axes[0], diagrams.items()):
        ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="as often right as it says")
        ax.bar([(b["from"] + b["to"]) / 2 for b in bins], [b["accuracy"] for b in bins],
               width=[0.95 * (b["to"] - b["from"]) for b in bins], color="#4a90d9", alpha=0.8, label="accuracy")
        ax.plot([b["mean_prob"] for b in bins], [b["accuracy"] for b in bins], "o", color="#c0392b", markersize=4,
                label="mean probability")
        for b in bins:
            ax.text((b["from"] + b["to"]) / 2, min(b["accuracy"] + 0.02, 0.95), str(b["images"]), ha="center",
                    fontsize=7)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="top-1 probability", ylabel="share right",
               title=f"{name}\nECE {calibration_error(bins):.3f}, {sum(b['images'] for b in bins)} images")
        ax.legend(loc="upper left", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluatePlan(ClassifyPlan):
    """A classify plan whose run goes to FOLDER/predictions, and what its rows are scored against."""

    folder: str  # --output: metrics.json, per_class.csv, confusion.png, reliability.png and the predictions run
    label_names: list[str]
    truth: dict[str, str]  # uri or file name -> label, the examples left out
    truth_file: str
    examples_left_out: int = 0


class Evaluate(Classify):
    """classify_images on images whose labels are known, then the scores."""

    module, required = "evaluate", ("input", "truth", "labels", "output")
    output_help = ("(required) folder for metrics.json, per_class.csv, confusion.png, reliability.png and the "
                   "predictions run")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--truth", help="(required) CSV with columns uri,label (uri: full path or file name)")
        super().add_options(parser)
        parser.set_defaults(top_k=None)  # the top 5, or every label of a smaller set

    def plan(self, args: argparse.Namespace, beam_args: Sequence[str]) -> EvaluatePlan:
        try:
            labels = load_label_set(args.labels)
            truth = read_truth(args.truth, labels)
            examples = {uri for uri, _ in read_examples(args.examples, labels)} if args.examples else set()
        except (LabelSetError, ExamplesError) as e:
            raise ConfigError(str(e)) from None
        if examples:  # left out of the scores, by uri or by file name, as the truth is matched
            names = examples | {PurePosixPath(uri).name for uri in examples}
            truth = {uri: label for uri, label in truth.items()
                     if uri not in names and PurePosixPath(uri).name not in names}
        predictions = argparse.Namespace(**{**vars(args), "output": f"{args.output.rstrip('/')}/predictions",
                                            "overwrite": True, "top_k": args.top_k or min(5, len(labels))})
        classify = super().plan(predictions, beam_args)
        return EvaluatePlan(**{field.name: getattr(classify, field.name) for field in dataclasses.fields(classify)},
                            folder=args.output, label_names=labels, truth=truth, truth_file=args.truth,
                            examples_left_out=len(examples))

    def after(self, plan: EvaluatePlan, manifest: Manifest) -> None:
        rows = read_run(plan.target.output)
        predictions = {row["uri"]: row["labels"] for row in rows}
        confidence = {row["uri"]: row["probs"][0] if row["probs"] else 0.0 for row in rows}
        failed = {row["uri"]: row["stage"] for row in read_run(plan.target.output, "errors")}
        metrics = score(plan.truth, predictions, failed, plan.label_names, confidence)
        output = Path(plan.folder)
        output.mkdir(parents=True, exist_ok=True)
        write_confusion_png(metrics.pop("confusion"), plan.label_names, output / "confusion.png")
        write_reliability_png({plan.labels.source: metrics["reliability"]}, output / "reliability.png")
        metrics.update(labels=plan.labels.source, num_labels=len(plan.label_names), backend=plan.backend.name,
                       input=plan.input, truth=plan.truth_file, examples=plan.labels.examples_file,
                       examples_left_out=plan.examples_left_out)
        (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["label", "support", "predicted", "correct", "precision", "recall"])
        for label, row in metrics["per_class"].items():
            writer.writerow([spreadsheet_cell(label), *row.values()])
        (output / "per_class.csv").write_text(buffer.getvalue())
        print(f"\n{plan.labels.source} on {plan.backend.name}: n={metrics['n']}  top-1 {metrics['top1']:.1%}  "
              f"top-5 {metrics['top5']:.1%}  ECE {metrics['ece']:.3f}  failed {metrics['failed']}  "
              f"not found {metrics['not_found']}"
              + (f"  ({plan.examples_left_out} examples left out)" if plan.examples_left_out else ""))
        worst = sorted((row["recall"], label) for label, row in metrics["per_class"].items() if row["support"])[:5]
        print("lowest recall: " + ", ".join(f"{label} {recall:.0%}" for recall, label in worst))
        print(f"wrote {output}/metrics.json, per_class.csv, confusion.png, reliability.png")
        super().after(plan, manifest)  # the report of the predictions (--report), which draws metrics.json's diagram


def main(argv: Optional[Sequence[str]] = None) -> int:
    return runner.main(Evaluate(), argv)


if __name__ == "__main__":
    exit_job(main())
