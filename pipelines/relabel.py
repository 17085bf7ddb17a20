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

from pipelines.cli import ConfigError, OneLineParser, add_backend_argument, add_backend_settings  # noqa: E402
from pipelines.jobs import (BEAM_EPILOG, add_label_options, add_run_options, check_command_line,  # noqa: E402
                            checked_backend, label_options, new_manifest, probe_output, result_settings, run_job,
                            run_to_replace, setup_logging)
from transforms.label_sets import load_templates  # noqa: E402
from transforms.rank import EmbedLabels, RankLabels  # noqa: E402
from transforms.records import RESULTS, RESULTS_SCHEMA  # noqa: E402
from transforms.run_folder import CommitRun, read_manifest, table_prefix  # noqa: E402
from transforms.stored import DEFAULT_BATCH, EmbeddingsMismatch, ReadEmbeddings, embeddings_of  # noqa: E402
from transforms.write import WriteRows  # noqa: E402

PROG = "python -m pipelines.relabel"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0], epilog=BEAM_EPILOG, allow_abbrev=False)
    parser.add_argument("--embeddings", help="(required) folder of a finished classify_images run kept with "
                                             "--embeddings")
    add_label_options(parser)
    add_run_options(parser)
    parser.add_argument("--report", metavar="PATH", help="also write an HTML report of the run to PATH")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH,
                        help=f"stored vectors ranked per matrix product (default {DEFAULT_BATCH})")
    add_backend_argument(parser)
    add_backend_settings(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    try:
        check_command_line(args, beam_args, parser, required=("embeddings", "labels", "output"))
        labels, templates, decision = label_options(args)
        backend = checked_backend(args)
        try:
            shards = embeddings_of(args.embeddings, backend)
        except EmbeddingsMismatch as e:
            raise ConfigError(f"--embeddings: {e}") from None
        templates = templates or load_templates(backend.default_templates)
        replaces = run_to_replace(args)
        probe_output(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = new_manifest(PROG, argv, args, backend.model_id, labels=args.labels,
                            embeddings=read_manifest(args.embeddings)["run_id"],
                            settings=result_settings(args, labels, templates, backend, decision))

    def build(pipeline: beam.Pipeline) -> None:
        label_matrix = pipeline | "EmbedLabels" >> EmbedLabels(labels, templates, backend)
        results = (pipeline
                   | "ReadEmbeddings" >> ReadEmbeddings(shards)
                   | "Batch" >> beam.BatchElements(min_batch_size=args.batch_size, max_batch_size=args.batch_size)
                   | "Rank" >> beam.ParDo(RankLabels(min(args.top_k, len(labels)), backend.logit_scale,
                                                     backend.model_id, decision, backend.none_margin),
                                          labels=beam.pvalue.AsSingleton(label_matrix)))
        written = {RESULTS: results | "WriteResults" >> WriteRows(
            table_prefix(args.output, manifest["run_id"], RESULTS), RESULTS_SCHEMA, args.format, args.num_shards)}
        written | "Commit" >> CommitRun(args.output, manifest, replaces)

    status = run_job(args.output, beam_args, manifest, build)
    if status == 0 and args.report:
        from pipelines.report import write_report

        write_report(args.output, args.report, title=f"labels: {args.labels}")
        print(f"report: {args.report}")
    return status


if __name__ == "__main__":
    sys.exit(main())
