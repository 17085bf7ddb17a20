"""Finds the images of a run (kept with classify_images --embeddings) that best match text queries: the aligned
space's text-to-image direction. No image is read and no image model is loaded.

python -m pipelines.search --embeddings out/labels --query "a tiny white ball" [--query ...] [--top_k 20]
    --output out/search [Beam options]
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

# As in classify_images: Beam's import-time chatter must not follow a configuration error's one line.
logging.getLogger().addHandler(logging.NullHandler())

import apache_beam as beam  # noqa: E402

from pipelines.cli import ConfigError, OneLineParser  # noqa: E402
from pipelines.jobs import (BEAM_EPILOG, add_run_options, add_stored_options, check_command_line,  # noqa: E402
                            checked_backend, new_manifest, parse, probe_output, run_job, run_to_replace,
                            stored_shards)
from transforms.records import RESULTS, SEARCH_SCHEMA  # noqa: E402
from transforms.run_folder import CommitRun, table_prefix  # noqa: E402
from transforms.stored import ReadEmbeddings, SearchImages  # noqa: E402
from transforms.write import WriteRows  # noqa: E402

PROG = "python -m pipelines.search"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0], epilog=BEAM_EPILOG, allow_abbrev=False)
    parser.add_argument("--query", action="append", help="(required) a text to find images for; repeat for more")
    parser.add_argument("--top_k", type=int, default=20, help="images kept per query (default 20)")
    add_run_options(parser)
    add_stored_options(parser, "scored", "an HTML page of each query's images")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv, args, beam_args = parse(parser, argv)
    try:
        check_command_line(args, beam_args, parser, required=("embeddings", "query", "output"))
        if blank := [query for query in args.query if not query.strip()]:
            raise ConfigError(f"--query {blank[0]!r} is empty")
        if len(set(args.query)) < len(args.query):
            raise ConfigError("a --query is given twice")
        if args.top_k < 1:
            raise ConfigError(f"--top_k must be at least 1, got {args.top_k}")
        backend = checked_backend(args, beam_args)
        stored_run, shards = stored_shards(args, backend)
        replaces = run_to_replace(args)
        probe_output(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = new_manifest(PROG, argv, args, backend.model_id, queries=args.query, top_k=args.top_k,
                            embeddings=stored_run)

    def build(pipeline: beam.Pipeline) -> None:
        hits = (pipeline
                | "ReadEmbeddings" >> ReadEmbeddings(shards)
                | "Search" >> SearchImages(args.query, backend, args.top_k, args.batch_size))
        written = {RESULTS: hits | "WriteHits" >> WriteRows(
            table_prefix(args.output, manifest["run_id"], RESULTS), SEARCH_SCHEMA, args.format, args.num_shards)}
        written | "Commit" >> CommitRun(args.output, manifest, replaces)

    status = run_job(args.output, beam_args, manifest, build)
    if status == 0 and args.report:
        from pipelines.report import write_search_report

        write_search_report(args.output, args.report)
        print(f"report: {args.report}")
    return status


if __name__ == "__main__":
    sys.exit(main())
