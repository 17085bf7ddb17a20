"""Labels the image vectors a run kept (classify_images --embeddings) with another label set: no image is read and
no image model is loaded (local: the text encoder only; nomic: text requests only).

python -m pipelines.relabel --embeddings out/labels --labels cifar10 --output out/cifar10 [--top_k 5] [Beam options]
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
from pipelines.jobs import (BEAM_EPILOG, add_label_options, add_run_options, add_stored_options,  # noqa: E402
                            check_command_line, checked_backend, label_options, new_manifest, parse, probe_output,
                            report_labels, result_settings, run_job, run_to_replace, stored_shards)
from transforms.label_sets import load_templates  # noqa: E402
from transforms.rank import EmbedLabels, RankVectors  # noqa: E402
from transforms.records import RESULTS, RESULTS_SCHEMA  # noqa: E402
from transforms.run_folder import CommitRun, table_prefix  # noqa: E402
from transforms.stored import ReadEmbeddings  # noqa: E402
from transforms.write import WriteRows  # noqa: E402

PROG = "python -m pipelines.relabel"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0], epilog=BEAM_EPILOG, allow_abbrev=False)
    add_label_options(parser)
    add_run_options(parser)
    add_stored_options(parser, "ranked", "an HTML report of the run")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv, args, beam_args = parse(parser, argv)
    try:
        check_command_line(args, beam_args, parser, required=("embeddings", "labels", "output"))
        labels, templates, decision = label_options(args)
        backend = checked_backend(args, beam_args)
        stored_run, shards = stored_shards(args, backend)
        templates = templates or load_templates(backend.default_templates)
        replaces = run_to_replace(args)
        probe_output(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = new_manifest(PROG, argv, args, backend.model_id, labels=args.labels,
                            embeddings=stored_run,
                            settings=result_settings(args, labels, templates, backend, decision))

    def build(pipeline: beam.Pipeline) -> None:
        label_matrix = pipeline | "EmbedLabels" >> EmbedLabels(labels, templates, backend)
        results = (pipeline
                   | "ReadEmbeddings" >> ReadEmbeddings(shards)
                   | "Rank" >> RankVectors(label_matrix, backend, args.top_k, decision, args.batch_size))
        written = {RESULTS: results | "WriteResults" >> WriteRows(
            table_prefix(args.output, manifest["run_id"], RESULTS), RESULTS_SCHEMA, args.format, args.num_shards)}
        written | "Commit" >> CommitRun(args.output, manifest, replaces)

    return report_labels(run_job(args.output, beam_args, manifest, build), args)


if __name__ == "__main__":
    sys.exit(main())
