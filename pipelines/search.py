"""Finds the images of a run (kept with classify_images --keep_embeddings) that best match text queries: the aligned
space's text-to-image direction. No image is read and no image model is loaded.

python -m pipelines.search --embeddings out/labels --query "a tiny white ball" [--query ...] [--images_per_query 20]
    --output out/search [Beam options]
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Sequence

import apache_beam as beam

from pipelines import runner
from pipelines.cli import ConfigError, exit_job
from pipelines.options import RunTarget, StoredVectors, add_stored_options, checked_backend
from transforms.manifest import Manifest
from transforms.records import RESULTS, SEARCH_SCHEMA
from transforms.stored import DEFAULT_BATCH, ReadEmbeddings, SearchImages


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchPlan(runner.Plan):
    stored: StoredVectors
    queries: tuple[str, ...]
    images_per_query: int = 20
    vectors_per_batch: int = DEFAULT_BATCH
    report: Optional[str] = None


class Search(runner.Job):
    name, module, required = "search", "search", ("embeddings", "query", "output")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_stored_options(parser, "scored", "an HTML page of each query's images")
        parser.add_argument("--query", action="append", help="(required) a text to find images for; repeat for more")
        parser.add_argument("--images_per_query", type=int, default=SearchPlan.images_per_query,
                            help=f"images kept per query (default {SearchPlan.images_per_query})")

    def plan(self, args: argparse.Namespace, beam_args: Sequence[str]) -> SearchPlan:
        if blank := [query for query in args.query if not query.strip()]:
            raise ConfigError(f"--query {blank[0]!r} is empty")
        if len(set(args.query)) < len(args.query):
            raise ConfigError("a --query is given twice")
        if args.images_per_query < 1:
            raise ConfigError(f"--images_per_query must be at least 1, got {args.images_per_query}")
        backend = checked_backend(args, beam_args)
        stored = StoredVectors.of(args.embeddings, backend)
        return SearchPlan(target=RunTarget.from_args(args), backend=backend, stored=stored,
                          queries=tuple(args.query), images_per_query=args.images_per_query,
                          vectors_per_batch=args.vectors_per_batch, report=args.report)

    def record(self, plan: SearchPlan) -> dict:
        return {"embeddings_run": plan.stored.manifest.run_id,
                "details": {"queries": list(plan.queries), "images_per_query": plan.images_per_query}}

    def tables(self, pipeline: beam.Pipeline, plan: SearchPlan, run: runner.Run) -> runner.Outputs:
        hits = (pipeline
                | "ReadEmbeddings" >> ReadEmbeddings(plan.stored.shards)
                | "Search" >> SearchImages(list(plan.queries), plan.backend, plan.images_per_query,
                                           plan.vectors_per_batch))
        return runner.Outputs({RESULTS: (hits, SEARCH_SCHEMA)})

    def after(self, plan: SearchPlan, manifest: Manifest) -> None:
        runner.write_page(plan.report, lambda: search_report(plan.target.output, plan.report))


def search_report(output: str, page: str) -> None:
    from pipelines.report import write_search_report  # only runs that ask for a report import its renderer

    write_search_report(output, page)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return runner.main(Search(), argv)


if __name__ == "__main__":
    exit_job(main())
