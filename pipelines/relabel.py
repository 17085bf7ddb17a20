"""Labels the image vectors a run kept (classify_images --keep_embeddings) with another label set: no image is read and
no image model is loaded (local: the text encoder only; nomic: text requests only), except for --examples the run
did not keep.

python -m pipelines.relabel --embeddings out/labels --labels cifar10 --output out/cifar10 [--top_k 5] [Beam options]
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Sequence

import apache_beam as beam

from pipelines import runner
from pipelines.classify_images import label_report
from pipelines.cli import exit_job
from pipelines.options import (
    LabelChoice,
    RunTarget,
    StoredVectors,
    add_label_options,
    add_stored_options,
    checked_backend,
)
from transforms.examples import Examples, label_matrix
from transforms.manifest import Manifest
from transforms.rank import RankVectors
from transforms.records import RESULTS, RESULTS_SCHEMA
from transforms.stored import DEFAULT_BATCH, ReadEmbeddings


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelabelPlan(runner.Plan):
    stored: StoredVectors
    labels: LabelChoice
    examples: Optional[Examples] = None  # LabelChoice.embedded_examples: those the stored run kept, as it kept them
    vectors_per_batch: int = DEFAULT_BATCH
    report: Optional[str] = None

    @property
    def settings(self) -> dict:
        return self.labels.settings(self.backend, examples=self.examples)


class Relabel(runner.Job):
    name, module, required = "relabel", "relabel", ("embeddings", "labels", "output")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_stored_options(parser, "ranked", "an HTML report of the run")
        add_label_options(parser)

    def plan(self, args: argparse.Namespace, beam_args: Sequence[str]) -> RelabelPlan:
        labels = LabelChoice.from_args(args)
        backend = checked_backend(args, beam_args)
        stored = StoredVectors.of(args.embeddings, backend)
        # an example the kept run holds needs no image model: its vector is the one the run kept
        return RelabelPlan(target=RunTarget.from_args(args), backend=backend, stored=stored, labels=labels,
                           examples=labels.embedded_examples(backend, stored),
                           vectors_per_batch=args.vectors_per_batch, report=args.report)

    def record(self, plan: RelabelPlan) -> dict:
        return {"labels": plan.labels.source, "embeddings_run": plan.stored.manifest.run_id,
                "settings": plan.settings, "details": plan.labels.details(plan.examples)}

    def tables(self, pipeline: beam.Pipeline, plan: RelabelPlan, run: runner.Run) -> runner.Outputs:
        labels = label_matrix(pipeline, plan.labels.phrases, plan.labels.templates_for(plan.backend), plan.backend,
                              plan.examples)
        results = (pipeline
                   | "ReadEmbeddings" >> ReadEmbeddings(plan.stored.shards)
                   | "Rank" >> RankVectors(labels, plan.backend, plan.labels.decision, plan.vectors_per_batch))
        return runner.Outputs({RESULTS: (results, RESULTS_SCHEMA)}, review=results,
                              review_size=plan.labels.review)

    def after(self, plan: RelabelPlan, manifest: Manifest) -> None:
        runner.write_page(plan.report, lambda: label_report(plan.target.output, plan.report, plan.labels))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return runner.main(Relabel(), argv)


if __name__ == "__main__":
    exit_job(main())
