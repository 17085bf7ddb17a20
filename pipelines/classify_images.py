"""Labels every image an input pattern matches with a label set, zero-shot, and writes one run folder.

python -m pipelines.classify_images --input 'photos/*.jpg' --labels everyday --output out/labels [Beam options]
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, NamedTuple, Optional, Sequence

import apache_beam as beam

import pipelines
from pipelines.cli import (
    ConfigError,
    OneLineParser,
    add_backend_argument,
    add_backend_settings,
    exit_job,
)
from pipelines.jobs import (
    BEAM_EPILOG,
    LabelChoice,
    RunFolder,
    add_label_options,
    add_run_options,
    checked_backend,
    examples_details,
    finished_run,
    new_manifest,
    parse,
    report_labels,
    result_settings,
    run_job,
)
from pipelines.workers import workers_in_this_process
from transforms import files
from transforms.backends import Backend
from transforms.classify import ZeroShotClassify, check_settings
from transforms.dedupe import COPIES, RESUMED, ContentKeys, CopyRows, OnePerContent
from transforms.examples import Examples
from transforms.faults import one_line
from transforms.label_sets import load_templates
from transforms.manifest import Manifest, differing_setting
from transforms.progress import ReadProgress, resumable, write_started
from transforms.read import MatchFiles, first_match
from transforms.records import EMBEDDING_DTYPES, EMBEDDINGS, ERRORS, ERRORS_SCHEMA, RESULTS, RESULTS_SCHEMA, REVIEW
from transforms.review import WriteReview
from transforms.run_folder import SUCCESS, CommitRun, run_files, table_prefix, unfinished_runs
from transforms.skip import CARRIED_METRIC, TO_LABEL, SkipExisting
from transforms.write import WriteEmbeddings, WriteRows

JOB, PROG = "classify", pipelines.prog("classify_images")
# A few unreadable files are normal in a bucket; more than one in ten says the set-up is wrong (a format Pillow
# cannot decode, a model that rejects everything, a glob that matches sidecar files), not the files.
DEFAULT_MAX_ERROR_FRACTION = 0.1
_LOG = logging.getLogger("zero_shot")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0], epilog=BEAM_EPILOG, allow_abbrev=False)
    # Required flags are checked by jobs.parse, after unknown ones: a misspelled --lables must be named as such.
    parser.add_argument("--input", help="(required) file, directory or glob, local or any fsspec URL; quote globs "
                                        "so the shell leaves them to the job")
    add_label_options(parser)
    add_run_options(parser)
    parser.add_argument("--skip_existing", metavar="RUN_FOLDER",
                        help="keep the rows of a finished run (same model, labels, settings and --format) for "
                             "files whose uri and sha256 are unchanged, and label only the rest; may be --output "
                             "itself, with --overwrite")
    parser.add_argument("--fresh", action="store_true",
                        help="embed every image again, instead of resuming from the vectors that unfinished runs "
                             "in --output (killed, failed) with the same settings saved")
    parser.add_argument("--keep_embeddings", action="store_true",
                        help="also keep every image's vector (an `embeddings` table in the run folder, Parquet) for "
                             "pipelines.relabel and pipelines.search")
    parser.add_argument("--embeddings_dtype", choices=EMBEDDING_DTYPES, default="float32",
                        help="float32 (default: relabeling gives the same scores) or float16 (half the bytes, "
                             "cosines within about 1e-3)")
    parser.add_argument("--max_error_fraction", type=float, default=DEFAULT_MAX_ERROR_FRACTION, metavar="F",
                        help="fail the job, committing nothing, when more than this fraction of the inputs ends in "
                             f"the errors table (default {DEFAULT_MAX_ERROR_FRACTION:g}; 1 never fails for errors); "
                             "checked as the job runs too: it stops as soon as it is sure to end over F")
    parser.add_argument("--report", metavar="PATH", help="also write an HTML report of the run to PATH")
    parser.add_argument("--batch_size", type=int, help="images per model call (default: the backend's choice)")
    parser.add_argument("--explain", type=int, nargs="?", const=5, default=0, metavar="N",
                        help="add an `evidence` column: the N (default 5) things that built each image's vector, "
                             "where the backend has them (local: ImageNet classes and their probabilities)")
    add_backend_argument(parser)
    add_backend_settings(parser)
    return parser


class Plan(NamedTuple):
    """What validate() settled: everything build_pipeline needs besides the parsed flags."""

    labels: LabelChoice
    templates: list[str]
    backend: Backend
    run: RunFolder
    settings: dict[str, Any]
    replaces: Optional[str]  # the run id --overwrite replaces
    previous: Optional[Manifest]  # of --skip_existing's run
    progress: list[str]  # the progress files of the unfinished runs this one resumes
    examples: Optional[Examples]  # --examples, embedded


def validate(args: argparse.Namespace, beam_args: Sequence[str]) -> Plan:
    """Everything that can be checked before the job starts, once the command line parsed; raises ConfigError with
    one readable line."""
    try:
        check_settings(args.batch_size, args.explain)
    except ValueError as e:  # the library's own checks, worded by setting name; flags have the same names
        raise ConfigError(f"--{e}") from None
    if not 0 <= args.max_error_fraction <= 1:
        raise ConfigError(f"--max_error_fraction must be between 0 and 1, got {args.max_error_fraction:g}")
    labels = LabelChoice.from_args(args)
    try:
        match = first_match(args.input)
    except Exception as e:  # noqa: BLE001 - a missing fsspec driver, a refused listing: all stop the job here
        raise ConfigError(f"cannot list --input {args.input!r}: {type(e).__name__}: {e}") from None
    if match is None:
        raise ConfigError(f"--input {args.input!r} matches no file")
    backend = checked_backend(args, beam_args)
    templates = labels.templates or load_templates(backend.default_templates)
    run = RunFolder.from_args(args)
    replaces = run.to_replace()
    previous = finished_run(args.skip_existing, "--skip_existing") if args.skip_existing else None
    if args.skip_existing and previous is None:
        raise ConfigError(f"--skip_existing {args.skip_existing!r} holds no finished run (no {SUCCESS})")
    examples = labels.embedded_examples(backend)  # the slowest check, after the quick ones
    settings = result_settings(backend, labels, templates, args.explain, examples)
    if previous:
        check_reusable(previous, settings, run.file_format, args.keep_embeddings and args.embeddings_dtype)
    progress = [] if args.fresh else resume_from(run.output, settings)
    run.probe()
    return Plan(labels, templates, backend, run, settings, replaces, previous, progress, examples)


def resume_from(output: str, settings: dict[str, Any]) -> list[str]:
    """The progress files of the unfinished runs under `output` made with these settings, said in the log."""
    try:
        runs, files = resumable(output, unfinished_runs(output), settings)
    except Exception as e:  # noqa: BLE001 - a folder that cannot be listed cannot be written either
        raise ConfigError(f"cannot read --output {output!r}: {one_line(e)}") from None
    if files:
        _LOG.info("resuming: %d progress files of the unfinished run(s) %s; only the images they do not hold are "
                  "read and embedded (--fresh embeds everything again)", len(files), ", ".join(runs))
    return files


def check_reusable(previous: Manifest, settings: dict[str, Any], file_format: str,
                   embeddings_dtype: Optional[str]) -> None:
    """Raises ConfigError unless the rows of the `previous` run are the rows this run would write (and, when this
    run keeps embeddings, unless it kept them in the same dtype)."""
    if previous.settings.get("row_columns") != settings["row_columns"]:
        raise ConfigError(f"--skip_existing: run {previous.run_id} was written by another version of "
                          "zero-shot-labels, whose rows have other columns; they cannot be reused")
    if differ := differing_setting(previous.settings, settings):
        raise ConfigError(f"--skip_existing: run {previous.run_id} was made with another {differ} "
                          f"({previous.settings.get(differ)!r}, now {settings[differ]!r}); its rows cannot be reused")
    if previous.format != file_format:
        raise ConfigError(f"--skip_existing: run {previous.run_id} is in {previous.format}; "
                          f"write this run with --format {previous.format} too")
    if embeddings_dtype and previous.embeddings_dtype != embeddings_dtype:
        kept = previous.embeddings_dtype
        raise ConfigError(f"--skip_existing: run {previous.run_id} "
                          + (f"kept its embeddings as {kept}; pass --embeddings_dtype {kept}" if kept else
                             "kept no embeddings; run without --skip_existing once to keep them"))


def build_pipeline(pipeline: beam.Pipeline, args: argparse.Namespace, plan: Plan, manifest: Manifest) -> None:
    """List (with the store's checksums) -> one file per content -> [keep the rows of unchanged files] -> classify
    -> copy rows to duplicate files -> write results, errors [, embeddings] and review.csv -> commit. An object in
    a bucket is fetched once: to compare it with the previous run and to label it, from the same bytes."""
    listed = pipeline | "Match" >> MatchFiles(args.input, checksums=True, exclude=plan.run.output)
    keyed = listed | "ContentKeys" >> ContentKeys()
    saved = (pipeline | "ReadProgress" >> ReadProgress(plan.progress, plan.backend.embedding_dim)
             if plan.progress else None)
    distinct = keyed["keys"] | "OnePerContent" >> OnePerContent(saved)
    to_label, kept, errors = distinct.main, {}, [keyed[ERRORS]]
    if plan.previous:
        carried = [RESULTS, EMBEDDINGS] if args.keep_embeddings else [RESULTS]
        split = to_label | "SkipExisting" >> SkipExisting(
            {table: run_files(args.skip_existing, table) for table in carried})
        to_label, kept = split[TO_LABEL], {table: split[table] for table in carried}
        kept[ERRORS] = split[ERRORS]  # a file that could not be read to compare: copied to its duplicates too
    outputs = to_label | "Classify" >> ZeroShotClassify(
        plan.labels.phrases, plan.backend, plan.templates, decision=plan.labels.decision, batch_size=args.batch_size,
        explain=args.explain, keep_embeddings=args.keep_embeddings, max_error_fraction=args.max_error_fraction,
        # every listed file gets one row: its count is the job's number of inputs, known before any is read
        input_count=listed | "CountListed" >> beam.combiners.Count.Globally(),
        save_progress_to=files.join(plan.run.output, manifest.run_id),
        resumed=distinct[RESUMED] if saved is not None else None, examples=plan.examples)
    copied = [outputs | "Copy" >> CopyRows(distinct[COPIES])]
    if kept:  # rows kept from the previous run: their copies count as kept too
        copied.append(kept | "CopyKept" >> CopyRows(distinct[COPIES], counted_as=CARRIED_METRIC))
    rows = {table: ([parts[table] for parts in copied if table in parts] + (errors if table == ERRORS else []))
            | f"All{table.title()}" >> beam.Flatten() for table in outputs}
    run, run_id = plan.run, manifest.run_id
    written = {
        RESULTS: rows[RESULTS] | "WriteResults" >> WriteRows(table_prefix(run.output, run_id, RESULTS),
                                                             RESULTS_SCHEMA, run.file_format, run.num_shards),
        ERRORS: rows[ERRORS] | "WriteErrors" >> WriteRows(table_prefix(run.output, run_id, ERRORS), ERRORS_SCHEMA,
                                                          run.file_format, run.num_shards),
    }
    if plan.labels.review:  # one row per content: a copy of a file would ask for the same confirmation twice
        reviewed = [outputs[RESULTS]] + ([kept[RESULTS]] if kept else [])
        written[REVIEW] = (reviewed | "DistinctResults" >> beam.Flatten()
                           | "WriteReview" >> WriteReview(files.join(run.output, run_id), plan.labels.review))
    if args.keep_embeddings:
        written[EMBEDDINGS] = rows[EMBEDDINGS] | "WriteEmbeddings" >> WriteEmbeddings(
            table_prefix(run.output, run_id, EMBEDDINGS), plan.backend.embedding_dim, args.embeddings_dtype,
            run.num_shards)
    written | "Commit" >> CommitRun(run.output, manifest, plan.replaces)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        argv, args, beam_args = parse(build_parser(), argv, required=("input", "labels", "output"))
        plan = validate(args, beam_args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    manifest = new_manifest(JOB, PROG, argv, plan.run, plan.backend.model_id, input=args.input, labels=args.labels,
                            embeddings_dtype=args.embeddings_dtype if args.keep_embeddings else None,
                            max_error_fraction=args.max_error_fraction,
                            settings=plan.settings, skip_existing=plan.previous and plan.previous.run_id,
                            details=examples_details(args.examples, plan.examples))
    try:
        write_started(plan.run.output, manifest)
    except Exception as e:  # noqa: BLE001 - the probe wrote there a moment ago; say what changed, as a config error
        print(f"error: cannot write --output {plan.run.output!r}: {one_line(e)}", file=sys.stderr)
        return 2
    if workers_in_this_process(beam_args):
        plan.backend.warm_up()
    return report_labels(run_job(plan.run.output, beam_args, manifest,
                                 lambda pipeline: build_pipeline(pipeline, args, plan, manifest)), plan.run,
                         args.report, plan.labels)


if __name__ == "__main__":
    exit_job(main())
