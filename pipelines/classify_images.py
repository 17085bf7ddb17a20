"""Labels every image an input pattern matches with a label set, zero-shot, and writes one run folder.

python -m pipelines.classify_images --input 'photos/*.jpg' --labels everyday --output out/labels [Beam options]
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Optional, Sequence

import apache_beam as beam

from pipelines import runner
from pipelines.cli import ConfigError, exit_job
from pipelines.options import (
    LabelChoice,
    RunTarget,
    add_backend_options,
    add_label_options,
    check_skip_existing,
    checked_backend,
)
from pipelines.redact import scrubbed
from transforms import files
from transforms.classify import ZeroShotClassify, check_settings
from transforms.dedupe import COPIES, RESUMED, ContentKeys, CopyRows, OnePerContent
from transforms.examples import Examples
from transforms.faults import one_line
from transforms.manifest import Manifest, differing_setting
from transforms.progress import ReadProgress
from transforms.read import MatchFiles, first_match
from transforms.records import EMBEDDING_DTYPES, EMBEDDINGS, ERRORS, ERRORS_SCHEMA, RESULTS, RESULTS_SCHEMA
from transforms.run_folder import run_files
from transforms.skip import CARRIED_METRIC, TO_LABEL, SkipExisting

# A few unreadable files are normal in a bucket; more than one in ten says the set-up is wrong (a format Pillow
# cannot decode, a model that rejects everything, a glob that matches sidecar files), not the files.
DEFAULT_MAX_ERROR_FRACTION = 0.1


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifyPlan(runner.Plan):
    """What a classify job settled before it starts."""

    input: str
    labels: LabelChoice
    examples: Optional[Examples] = None  # --examples, embedded (LabelChoice.embedded_examples)
    previous: Optional[Manifest] = None  # of --skip_existing's run
    skip_existing: Optional[str] = None  # its folder
    keep_embeddings: bool = False
    embeddings_dtype: str = "float32"
    max_error_fraction: float = DEFAULT_MAX_ERROR_FRACTION
    batch_size: Optional[int] = None
    explain: int = 0
    report: Optional[str] = None

    @property
    def settings(self) -> dict:
        return self.labels.settings(self.backend, self.explain, self.examples)


class Classify(runner.Job):
    name, module, required = "classify", "classify_images", ("input", "labels", "output")
    embeds_images = True

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        # Required flags are checked by the runner, after unknown ones: a misspelled --lables must be named as such.
        parser.add_argument("--input", help="(required) file, directory or glob, local or any fsspec URL; quote "
                                            "globs so the shell leaves them to the job")
        add_label_options(parser)
        parser.add_argument("--skip_existing", metavar="RUN_FOLDER",
                            help="keep the rows of a finished run (same model, labels, settings and --format) for "
                                 "files whose uri and sha256 are unchanged, and label only the rest; may be --output "
                                 "itself, with --overwrite")
        parser.add_argument("--fresh", action="store_true",
                            help="embed every image again, instead of resuming from the vectors that unfinished runs "
                                 "in --output (killed, failed) with the same settings saved")
        parser.add_argument("--keep_embeddings", action="store_true",
                            help="also keep every image's vector (an `embeddings` table in the run folder, "
                                 "Parquet) for pipelines.relabel and pipelines.search")
        parser.add_argument("--embeddings_dtype", choices=EMBEDDING_DTYPES, default="float32",
                            help="float32 (default: relabeling gives the same scores) or float16 (half the bytes, "
                                 "cosines within about 1e-3)")
        parser.add_argument("--max_error_fraction", type=float, default=DEFAULT_MAX_ERROR_FRACTION, metavar="F",
                            help="fail the job, committing nothing, when more than this fraction of the inputs "
                                 f"ends in the errors table (default {DEFAULT_MAX_ERROR_FRACTION:g}; 1 never fails for "
                                 "errors); "
                                 "checked as the job runs too: it stops as soon as it is sure to end over F")
        parser.add_argument("--report", metavar="PATH", help="also write an HTML report of the run to PATH")
        parser.add_argument("--batch_size", type=int, help="images per model call (default: the backend's choice)")
        parser.add_argument("--explain", type=int, nargs="?", const=5, default=0, metavar="N",
                            help="add an `evidence` column: the N (default 5) things that built each image's vector, "
                                 "where the backend has them (local: ImageNet classes and their probabilities)")
        add_backend_options(parser)

    def plan(self, args: argparse.Namespace, beam_args: Sequence[str]) -> ClassifyPlan:
        try:
            check_settings(args.batch_size, args.explain)
        except ValueError as e:  # the library's own checks, worded by setting name; flags have the same names
            raise ConfigError(f"--{e}") from None
        if not 0 <= args.max_error_fraction <= 1:
            raise ConfigError(f"--max_error_fraction must be between 0 and 1, got {args.max_error_fraction:g}")
        labels = LabelChoice.from_args(args)
        check_input(args.input)
        backend = checked_backend(args, beam_args)
        previous = check_skip_existing(args.skip_existing)
        plan = ClassifyPlan(
            target=RunTarget.from_args(args), backend=backend, resume=not args.fresh, input=args.input,
            labels=labels, examples=labels.embedded_examples(backend),  # the slowest check, after the quick ones
            previous=previous, skip_existing=args.skip_existing, keep_embeddings=args.keep_embeddings,
            embeddings_dtype=args.embeddings_dtype, max_error_fraction=args.max_error_fraction,
            batch_size=args.batch_size, explain=args.explain, report=args.report)
        if previous:
            check_reusable(previous, plan.settings, plan.target.file_format, plan.keep_embeddings and
                           plan.embeddings_dtype)
        return plan

    def record(self, plan: ClassifyPlan) -> dict:
        return {"input": plan.input, "labels": plan.labels.source,
                "embeddings_dtype": plan.embeddings_dtype if plan.keep_embeddings else None,
                "max_error_fraction": plan.max_error_fraction, "settings": plan.settings,
                "skip_existing": plan.previous and plan.previous.run_id, "details": plan.labels.details(plan.examples)}

    def tables(self, pipeline: beam.Pipeline, plan: ClassifyPlan, run: runner.Run) -> runner.Outputs:
        """List (with the store's checksums) -> one file per content -> [keep the rows of unchanged files] ->
        classify -> copy rows to duplicate files. An object in a bucket is fetched once: to compare it with the
        previous run and to label it, from the same bytes."""
        listed = pipeline | "Match" >> MatchFiles(plan.input, checksums=True, exclude=plan.target.output)
        keyed = listed | "ContentKeys" >> ContentKeys()
        saved = (pipeline | "ReadProgress" >> ReadProgress(run.progress, plan.backend.embedding_dim)
                 if run.progress else None)
        distinct = keyed["keys"] | "OnePerContent" >> OnePerContent(saved)
        to_label, kept, errors = distinct.main, {}, [keyed[ERRORS]]
        if plan.previous:
            carried = [RESULTS, EMBEDDINGS] if plan.keep_embeddings else [RESULTS]
            split = to_label | "SkipExisting" >> SkipExisting(
                {table: run_files(plan.skip_existing, table) for table in carried})
            to_label, kept = split[TO_LABEL], {table: split[table] for table in carried}
            kept[ERRORS] = split[ERRORS]  # a file that could not be read to compare: copied to its duplicates too
        classify = ZeroShotClassify(plan.labels.phrases, plan.backend, plan.labels.templates_for(plan.backend),
                                    plan.labels.decision, plan.batch_size, plan.explain)
        if plan.examples is not None:
            classify = classify.with_examples(plan.examples)
        if plan.keep_embeddings:
            classify = classify.with_embeddings()
        # every listed file gets one row: its count is the job's number of inputs, known before any is read
        outputs = to_label | "Classify" >> classify.with_progress(
            files.join(plan.target.output, run.id), distinct[RESUMED] if saved is not None else None,
        ).with_error_budget(plan.max_error_fraction, listed | "CountListed" >> beam.combiners.Count.Globally())
        copied = [outputs | "Copy" >> CopyRows(distinct[COPIES])]
        if kept:  # rows kept from the previous run: their copies count as kept too
            copied.append(kept | "CopyKept" >> CopyRows(distinct[COPIES], counted_as=CARRIED_METRIC))
        rows = {table: ([parts[table] for parts in copied if table in parts] + (errors if table == ERRORS else []))
                | f"All{table.title()}" >> beam.Flatten() for table in outputs}
        # review.csv: one row per content; a copy of a file would ask for the same confirmation twice
        reviewed = (([outputs[RESULTS]] + ([kept[RESULTS]] if kept else [])) | "DistinctResults" >> beam.Flatten()
                    if plan.labels.review else None)
        return runner.Outputs({RESULTS: (rows[RESULTS], RESULTS_SCHEMA), ERRORS: (rows[ERRORS], ERRORS_SCHEMA)},
                              rows.get(EMBEDDINGS), plan.embeddings_dtype, reviewed, plan.labels.review)

    def after(self, plan: ClassifyPlan, manifest: Manifest) -> None:
        runner.write_page(plan.report, lambda: label_report(plan.target.output, plan.report, plan.labels))


def label_report(output: str, page: str, labels: LabelChoice) -> None:
    """The HTML report of a labeling run (classify, relabel, evaluate's predictions), titled by its label set."""
    from pipelines.report import write_report  # only runs that ask for a report import its renderer

    write_report(output, page, title=f"labels: {scrubbed(labels.source)}")


def check_input(pattern: str) -> None:
    """ConfigError unless --input matches a file (the first one listed is enough)."""
    try:
        match = first_match(pattern)
    except Exception as e:  # noqa: BLE001 - a missing fsspec driver, a refused listing: all stop the job here
        raise ConfigError(f"cannot list --input {pattern!r}: {one_line(e)}") from None
    if match is None:
        raise ConfigError(f"--input {pattern!r} matches no file")


def check_reusable(previous: Manifest, settings: dict, file_format: str, embeddings_dtype: Optional[str]) -> None:
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    return runner.main(Classify(), argv)


if __name__ == "__main__":
    exit_job(main())
