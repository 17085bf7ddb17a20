"""Labels the image vectors a run kept (classify_images --keep_embeddings) with another label set: no image is read and
no image model is loaded (local: the text encoder only; nomic: text requests only), except for --examples the run
did not keep.

python -m pipelines.relabel --embeddings out/labels --labels cifar10 --output out/cifar10 [--top_k 5] [Beam options]
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import apache_beam as beam

import pipelines
from pipelines import jobs
from pipelines.cli import ConfigError, exit_job
from transforms.examples import TeachLabels
from transforms.label_sets import load_templates
from transforms.rank import EmbedLabels, RankVectors
from transforms.records import RESULTS, RESULTS_SCHEMA
from transforms.stored import ReadEmbeddings, stored_vectors_of

PROG = pipelines.prog("relabel")


def build_parser() -> argparse.ArgumentParser:
    parser = jobs.stored_vectors_parser(PROG, __doc__, "ranked", "an HTML report of the run")
    jobs.add_label_options(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        argv, args, beam_args = jobs.parse(build_parser(), argv, required=("embeddings", "labels", "output"))
        labels = jobs.LabelChoice.from_args(args)
        job = jobs.StoredVectorsJob.from_args(args, beam_args)
        templates = labels.templates or load_templates(job.backend.default_templates)
        # an example the kept run holds needs no image model: its vector is the one the run kept
        kept = stored_vectors_of(job.shards, [example.uri for example in labels.examples]) if labels.examples else {}
        examples = labels.embedded_examples(job.backend, kept)
        job.run.probe()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = jobs.new_manifest("relabel", PROG, argv, job.run, job.backend.model_id, labels=labels.source,
                                 embeddings_run=job.stored.run_id,
                                 settings=jobs.result_settings(job.backend, labels, templates, examples=examples),
                                 details=jobs.examples_details(args.examples, examples))

    def build(pipeline: beam.Pipeline) -> None:
        label_matrix = pipeline | "EmbedLabels" >> EmbedLabels(labels.phrases, templates, job.backend)
        if examples is not None:
            label_matrix = label_matrix | "TeachLabels" >> TeachLabels(examples, job.backend)
        results = (pipeline
                   | "ReadEmbeddings" >> ReadEmbeddings(job.shards)
                   | "Rank" >> RankVectors(label_matrix, job.backend, labels.decision, args.vectors_per_batch))
        job.write(manifest, {RESULTS: (results, RESULTS_SCHEMA)}, review=labels.review)

    return jobs.report_labels(jobs.run_job(job.run.output, beam_args, manifest, build), job.run, args.report, labels)


if __name__ == "__main__":
    exit_job(main())
