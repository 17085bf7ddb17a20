"""Reviewer: the images a labeling run was least sure of, as review.csv, for a person to confirm by example."""
from __future__ import annotations

from typing import Any

import apache_beam as beam

from transforms import files
from transforms.label_sets import UNKNOWN
from transforms.records import REVIEW, REVIEW_SCHEMA, ReviewRow, as_dict
from transforms.write import Shard, spreadsheet_cell, write_shard

DEFAULT_REVIEW_SIZE = 50


def top_prob(row: dict[str, Any]) -> float:
    """The probability of a result row's best label; 0 for an image that got `unknown` (which has none)."""
    return float(row["probs"][0]) if row["probs"] else 0.0


def review_row(row: dict[str, Any]) -> dict[str, Any]:
    """A result row as the reviewer sees it: its labels in one cell, a spreadsheet's reading, and no label yet."""
    labels = ", ".join(f"{label} {prob:.2f}" for label, prob in zip(row["labels"], row["probs"])) or UNKNOWN
    return as_dict(ReviewRow(uri=spreadsheet_cell(row["uri"]), label="", top_prob=round(top_prob(row), 4),
                             top_labels=spreadsheet_cell(labels), sha256=row["sha256"]))


def _write_review(rows: list[dict[str, Any]], folder: str) -> Shard:
    ordered = sorted(rows, key=lambda row: (top_prob(row), row["uri"]))  # ties in a stable order
    return write_shard(files.join(folder, f"{REVIEW}.csv"), map(review_row, ordered), REVIEW_SCHEMA, "csv")


class WriteReview(beam.PTransform):
    """Result rows -> the `size` of them whose best label is least probable, written as FOLDER/review.csv (least sure
    first; a header alone when there are none) -> its Shard, for the run's commit."""

    def __init__(self, folder: str, size: int = DEFAULT_REVIEW_SIZE):
        super().__init__()
        if size < 0:
            raise ValueError(f"review must be at least 0, got {size}")
        self.folder, self.size = folder, size

    def expand(self, rows):
        return (rows
                | "LeastSure" >> beam.combiners.Top.Of(self.size, key=lambda row: (-top_prob(row), row["uri"]))
                | "Write" >> beam.Map(_write_review, self.folder))
