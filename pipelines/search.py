"""Finds the images of a run (kept with classify_images --keep_embeddings) that best match text queries: the aligned
space's text-to-image direction. No image is read and no image model is loaded.

python -m pipelines.search --embeddings out/labels --query "a tiny white ball" [--query ...] [--images_per_query 20]
    --output out/search [Beam options]
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import apache_beam as beam

import pipelines
from pipelines import jobs
from pipelines.cli import ConfigError, exit_job
from transforms.records import RESULTS, SEARCH_SCHEMA
from transforms.stored import ReadEmbeddings, SearchImages

PROG = pipelines.prog("search")


def build_parser() -> argparse.ArgumentParser:
    parser = jobs.stored_vectors_parser(PROG, __doc__, "scored", "an HTML page of each query's images")
    parser.add_argument("--query", action="append", help="(required) a text to find images for; repeat for more")
    parser.add_argument("--images_per_query", type=int, default=20, help="images kept per query (default 20)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        argv, args, beam_args = jobs.parse(build_parser(), argv, required=("embeddings", "query", "output"))
        if blank := [query for query in args.query if not query.strip()]:
            raise ConfigError(f"--query {blank[0]!r} is empty")
        if len(set(args.query)) < len(args.query):
            raise ConfigError("a --query is given twice")
        if args.images_per_query < 1:
            raise ConfigError(f"--images_per_query must be at least 1, got {args.images_per_query}")
        job = jobs.StoredVectorsJob.from_args(args, beam_args)
        job.run.probe()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = jobs.new_manifest("search", PROG, argv, job.run, job.backend.model_id, embeddings_run=job.stored.run_id,
                                 details={"queries": args.query, "images_per_query": args.images_per_query})

    def build(pipeline: beam.Pipeline) -> None:
        hits = (pipeline
                | "ReadEmbeddings" >> ReadEmbeddings(job.shards)
                | "Search" >> SearchImages(args.query, job.backend, args.images_per_query, args.vectors_per_batch))
        job.write(manifest, {RESULTS: (hits, SEARCH_SCHEMA)})

    status = jobs.run_job(job.run.output, beam_args, manifest, build)
    if status == 0 and args.report:
        from pipelines.report import write_search_report

        write_search_report(job.run.output, args.report)
        print(f"report: {args.report}")
    return status


if __name__ == "__main__":
    exit_job(main())
