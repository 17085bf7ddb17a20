"""Finds the images of a run (kept with classify_images --keep_embeddings) that best match text queries: the aligned
space's text-to-image direction. No image is read and no image model is loaded.

python -m pipelines.search --embeddings out/labels --query "a tiny white ball" [--query ...] [--images_per_query 20]
    --output out/search [Beam options]

With --index INDEX (zero-shot-labels index) in place of --embeddings, each query is answered by the index instead of
a scan of every vector: milliseconds a query at a million images, at the recall@10 its manifest records. The scan is
the exact answer.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Sequence

import apache_beam as beam

from pipelines import runner
from pipelines.cli import ConfigError, exit_job
from pipelines.options import RunTarget, StoredVectors, add_stored_options, checked_backend
from pipelines.redact import scrubbed
from transforms.manifest import Manifest
from transforms.records import RESULTS, SEARCH_SCHEMA, SearchHit, as_dict
from transforms.stored import DEFAULT_BATCH, ReadEmbeddings, SearchImages, embed_queries
from transforms.vector_index import MAX_K, VectorIndex


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchPlan(runner.Plan):
    stored: Optional[StoredVectors] = None  # the scan of a kept run's vectors
    index: Optional[str] = None  # or the index that answers instead
    queries: tuple[str, ...]
    images_per_query: int = 20
    vectors_per_batch: int = DEFAULT_BATCH
    report: Optional[str] = None


class Search(runner.Job):
    name, module, required = "search", "search", ("query", "output")

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_stored_options(parser, "scored", "an HTML page of each query's images",
                           embeddings_help="folder of a finished classify_images run kept with --keep_embeddings, "
                                           "scanned (or --index)")
        parser.add_argument("--query", action="append", help="(required) a text to find images for; repeat for more")
        parser.add_argument("--images_per_query", type=int, default=SearchPlan.images_per_query,
                            help=f"images kept per query (default {SearchPlan.images_per_query})")
        parser.add_argument("--index", help="instead of --embeddings: a vector index (zero-shot-labels index) that "
                                            "answers each query without a scan")

    def plan(self, args: argparse.Namespace, beam_args: Sequence[str]) -> SearchPlan:
        if blank := [query for query in args.query if not query.strip()]:
            raise ConfigError(f"--query {blank[0]!r} is empty")
        if len(set(args.query)) < len(args.query):
            raise ConfigError("a --query is given twice")
        if args.images_per_query < 1:
            raise ConfigError(f"--images_per_query must be at least 1, got {args.images_per_query}")
        if (args.embeddings is None) == (args.index is None):
            raise ConfigError("give --embeddings (a kept run, scanned) or --index (an index of one), one of them")
        if args.index is not None and args.images_per_query > MAX_K:
            raise ConfigError(f"--images_per_query is at most {MAX_K} with --index, got {args.images_per_query}")
        backend = checked_backend(args, beam_args)
        stored = StoredVectors.of(args.embeddings, backend) if args.embeddings is not None else None
        if args.index is not None:
            check_index(args.index, backend)
        return SearchPlan(target=RunTarget.from_args(args), backend=backend, stored=stored, index=args.index,
                          queries=tuple(args.query), images_per_query=args.images_per_query,
                          vectors_per_batch=args.vectors_per_batch, report=args.report)

    def record(self, plan: SearchPlan) -> dict:
        return {"embeddings_run": plan.stored.manifest.run_id if plan.stored else None,
                "details": {"queries": list(plan.queries), "images_per_query": plan.images_per_query,
                            **({"index": scrubbed(plan.index)} if plan.index else {})}}

    def tables(self, pipeline: beam.Pipeline, plan: SearchPlan, run: runner.Run) -> runner.Outputs:
        if plan.index:
            hits = (pipeline
                    | "Queries" >> beam.Create([list(plan.queries)])
                    | "SearchIndex" >> beam.ParDo(SearchIndex(plan.index, plan.backend, plan.images_per_query)))
        else:
            hits = (pipeline
                    | "ReadEmbeddings" >> ReadEmbeddings(plan.stored.shards)
                    | "Search" >> SearchImages(list(plan.queries), plan.backend, plan.images_per_query,
                                               plan.vectors_per_batch))
        return runner.Outputs({RESULTS: (hits, SEARCH_SCHEMA)})

    def after(self, plan: SearchPlan, manifest: Manifest) -> None:
        runner.write_page(plan.report, lambda: search_report(plan.target.output, plan.report))


class SearchIndex(beam.DoFn):
    """The queries -> SearchHit rows, each query answered by the index (opened once per worker), the queries
    embedded together as the scan embeds them."""

    def __init__(self, index: str, backend, images_per_query: int):
        self.index, self.backend, self.images_per_query = index, backend, images_per_query

    def setup(self):
        self._index = VectorIndex.open(self.index, self.backend)

    def process(self, queries: list[str]):
        for query, vector in zip(queries, embed_queries(queries, self.backend)):
            for rank, hit in enumerate(self._index.search(vector, self.images_per_query), start=1):
                yield as_dict(SearchHit(query, rank, hit.uri, hit.score))


def check_index(folder: str, backend) -> None:
    """ConfigError unless `folder` holds a finished index of `backend`'s model and FAISS can be imported."""
    from pipelines.index import check_search_extra, finished_index

    check_search_extra()
    finished_index(folder, "--index", backend)


def search_report(output: str, page: str) -> None:
    from pipelines.report import write_search_report  # only runs that ask for a report import its renderer

    write_search_report(output, page)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return runner.main(Search(), argv)


if __name__ == "__main__":
    exit_job(main())
