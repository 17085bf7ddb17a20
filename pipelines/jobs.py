"""What every job that writes a run folder shares (classify_images, relabel, search, topics): its options, the checks
made before it starts, its manifest, and running it to a committed run."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import hashlib
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

import pipelines
from pipelines.cli import (
    ConfigError,
    OneLineParser,
    add_backend_argument,
    add_backend_settings,
    failure_line,
    unknown_beam_args,
)
from pipelines.redact import redacted, scrubbed
from pipelines.workers import DIRECT_RUNNERS, with_launcher_versions
from transforms import files, internals
from transforms.backends import BACKENDS, Backend
from transforms.examples import DEFAULT_WEIGHT, Example, Examples, ExamplesError, embed_examples, read_examples
from transforms.faults import StoreError, one_line
from transforms.label_sets import builtin_label_sets, builtin_templates, load_label_phrases, load_templates
from transforms.manifest import Manifest
from transforms.progress import PROGRESS_PREFIX
from transforms.rank import Decision
from transforms.records import RESULTS, RESULTS_SCHEMA, REVIEW
from transforms.review import DEFAULT_REVIEW_SIZE, WriteReview
from transforms.run_folder import (
    SUCCESS,
    CommitRun,
    ConcurrentRunError,
    RunFolderError,
    check_next_claim,
    new_run_id,
    read_manifest,
    table_prefix,
    utc_now,
)
from transforms.stored import DEFAULT_BATCH, EmbeddingsMismatch, embeddings_of
from transforms.stores import is_local, use_job_options
from transforms.summary import plural, summary
from transforms.write import FORMATS, WriteRows, probe_writable

# Old flag names removed in 0.2.0 (each collided with a live flag of a sibling job): the did-you-mean names the new.
RENAMED_IN_0_2 = {"--embeddings": "--keep_embeddings", "--batch_size": "--vectors_per_batch",
                  "--top_k": "--images_per_query"}
_LOG = logging.getLogger("zero_shot")
BEAM_EPILOG = ("Every standard Beam option is accepted too (--runner, --direct_num_workers, --setup_file, ...), and "
               "--store_retry_s S: how long a store that fails (unreachable, timing out, throttling, refusing the "
               "credentials) is retried before the job stops, committing nothing (default 60).")


def add_label_options(parser: argparse.ArgumentParser) -> None:
    """--labels, --templates and the decision options: which labels an image gets."""
    parser.add_argument("--labels", help="(required) a built-in label set "
                                         f"({', '.join(builtin_label_sets())}) or a file/URL, one label per line")
    parser.add_argument("--templates", help=f"prompt templates: a built-in name ({', '.join(builtin_templates())}) "
                                           "or a file/URL, one template with {} per line "
                                           "(default: the backend's choice)")
    parser.add_argument("--top_k", type=int, default=5, help="labels reported per image (default 5)")
    parser.add_argument("--min_prob", type=float, default=0.0,
                        help="report 'unknown' when the best label's probability is below this")
    parser.add_argument("--multi_label", action="store_true",
                        help="report every label whose probability reaches --threshold, instead of the top_k")
    parser.add_argument("--threshold", type=float, help="probability threshold for --multi_label")
    parser.add_argument("--examples", metavar="FILE",
                        help="confirmed images that teach the labels: a CSV with columns uri,label (a review.csv "
                             "filled in; rows with no label are skipped), local or any fsspec URL. Each label with "
                             "examples moves toward their image vectors, and the probabilities are fitted to them")
    parser.add_argument("--examples_weight", type=float, default=DEFAULT_WEIGHT, metavar="W",
                        help="how far a label moves toward its examples: text vector + W x their mean image vector "
                             f"(default {DEFAULT_WEIGHT:g}, chosen leave-one-source-out)")
    parser.add_argument("--review", type=int, default=DEFAULT_REVIEW_SIZE, metavar="N",
                        help=f"write review.csv in the run: the N images it was least sure of, with an empty label "
                             f"column to fill in for --examples (default {DEFAULT_REVIEW_SIZE}; 0: none)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--output (the run folder), --overwrite, --format and --num_shards."""
    parser.add_argument("--output", help="(required) folder of the run: its shards, and the "
                                         f"{SUCCESS} manifest written once they are all final")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the finished run in --output; the old one stays readable until the new one "
                             "has succeeded")
    parser.add_argument("--format", default="parquet", choices=FORMATS,
                        help="file format of the rows; CSV writes list columns as JSON (default parquet)")
    parser.add_argument("--num_shards", type=int, default=0, help="output shards (default: runner decides)")


def stored_vectors_parser(prog: str, doc: str, what: str, report: str) -> argparse.ArgumentParser:
    """The command line every job over stored vectors (relabel, search, topics) starts from: the run folder it
    writes, and --embeddings, --report, --vectors_per_batch and the backend."""
    parser = OneLineParser(prog=prog, description=doc.splitlines()[0], epilog=BEAM_EPILOG, allow_abbrev=False)
    add_run_options(parser)
    add_stored_options(parser, what, report)
    return parser


def add_stored_options(parser: argparse.ArgumentParser, what: str, report: str) -> None:
    """What the jobs over stored vectors (relabel, search, topics) add: --embeddings, --report, --vectors_per_batch
    and the backend."""
    parser.add_argument("--embeddings",
                        help="(required) folder of a finished classify_images run kept with --keep_embeddings")
    parser.add_argument("--report", metavar="PATH", help=f"also write {report} to PATH")
    parser.add_argument("--vectors_per_batch", type=int, default=DEFAULT_BATCH,
                        help=f"stored vectors {what} per matrix product (default {DEFAULT_BATCH})")
    add_backend_argument(parser)
    add_backend_settings(parser)


@dataclasses.dataclass(frozen=True)
class StoredVectorsJob:
    """What a job over stored vectors (relabel, search, topics) settled before it starts: its backend, the run whose
    vectors it reads and their shards, and the run folder it writes."""

    backend: Backend
    stored: Manifest  # of the run whose vectors it reads
    shards: list[str]
    run: RunFolder
    replaces: Optional[str]

    @classmethod
    def from_args(cls, args: argparse.Namespace, beam_args: Sequence[str]) -> "StoredVectorsJob":
        """From --backend and its settings, --embeddings and the run options; ConfigError with one line."""
        backend = checked_backend(args, beam_args)
        stored, shards = stored_shards(args.embeddings, backend)
        run = RunFolder.from_args(args)
        return cls(backend, stored, shards, run, run.to_replace())

    def write(self, manifest: Manifest, tables: Mapping[str, tuple[beam.PCollection, pa.Schema]],
              review: int = 0) -> None:
        """Writes each table's rows (table -> (rows, schema)) and, with `review`, review.csv of that many results,
        and commits the run once they are all final."""
        written = {table: rows | f"Write{table.title()}" >> WriteRows(
                       table_prefix(self.run.output, manifest.run_id, table), schema, self.run.file_format,
                       self.run.num_shards)
                   for table, (rows, schema) in tables.items()}
        if review:
            written[REVIEW] = tables[RESULTS][0] | "WriteReview" >> WriteReview(
                files.join(self.run.output, manifest.run_id), review)
        written | "Commit" >> CommitRun(self.run.output, manifest, self.replaces)


def stored_shards(embeddings: str, backend: Backend) -> tuple[Manifest, list[str]]:
    """(manifest, embeddings shards) of the run folder --embeddings names, made by the model `backend` is;
    ConfigError otherwise."""
    try:
        return embeddings_of(embeddings, backend)
    except (EmbeddingsMismatch, RunFolderError) as e:
        raise ConfigError(f"--embeddings: {e}") from None
    except StoreError as e:
        raise ConfigError(f"cannot read --embeddings {embeddings!r}: {one_line(e)}") from None


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
          required: Sequence[str]) -> tuple[list[str], argparse.Namespace, list[str]]:
    """(the command line, this job's flags, the rest for Beam), with logging set up for a job; ConfigError for an
    unknown flag, a stray argument or a `required` flag missing (check_command_line)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("zero_shot").setLevel(logging.INFO)
    argv = list(sys.argv[1:] if argv is None else argv)
    args, beam_args = parser.parse_known_args(argv)
    check_store_retry(beam_args)
    use_job_options(PipelineOptions(beam_args))  # the checks before the job reach the stores the job will
    check_command_line(args, beam_args, parser, required)
    return argv, args, beam_args


def check_store_retry(beam_args: Sequence[str]) -> None:
    """ConfigError unless --store_retry_s, a pipeline option, is a number of seconds: Beam's own parser would print
    its usage and exit on a word."""
    finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    finder.add_argument("--store_retry_s")
    value = finder.parse_known_args(list(beam_args))[0].store_retry_s
    try:
        seconds = float(value) if value is not None else 0.0
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise ConfigError(f"--store_retry_s must be a number of seconds, at least 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class LabelChoice:
    """What --labels, --templates and the decision flags settled, checked: which labels an image gets."""

    source: str  # --labels as given: a built-in name, a path or a URL
    phrases: dict[str, list[str]]  # label -> the phrases embedded for it
    templates: Optional[list[str]]  # None: the backend's own
    decision: Decision
    examples: tuple[Example, ...] = ()  # --examples, read and checked against the labels
    examples_weight: float = DEFAULT_WEIGHT
    review: int = DEFAULT_REVIEW_SIZE

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LabelChoice":
        """From the flags add_label_options declares; ConfigError with one line otherwise."""
        if args.multi_label != (args.threshold is not None):
            raise ConfigError("--multi_label and --threshold go together")
        try:
            decision = Decision(args.top_k, args.min_prob, args.threshold)
        except ValueError as e:  # the library's own check, worded by setting name; flags have the same names
            raise ConfigError(f"--{e}") from None
        if not args.examples_weight >= 0:
            raise ConfigError(f"--examples_weight must be at least 0, got {args.examples_weight:g}")
        if args.review < 0:
            raise ConfigError(f"--review must be at least 0, got {args.review}")
        try:
            phrases = load_label_phrases(args.labels)
            examples = tuple(read_examples(args.examples, list(phrases))) if args.examples else ()
            return cls(args.labels, phrases, load_templates(args.templates) if args.templates else None, decision,
                       examples, args.examples_weight, args.review)
        except ValueError as e:  # ExamplesError and the label sets' errors say which flag
            raise ConfigError(str(e)) from None

    def embedded_examples(self, backend: Backend,
                          known: Optional[dict[str, tuple]] = None) -> Optional[Examples]:
        """The examples with their image vectors (embed_examples: those `known` to a kept run as they are, the
        others read and embedded now), or None without --examples; ConfigError with one line."""
        if not self.examples:
            return None
        try:
            examples = embed_examples(self.examples, backend, known, self.examples_weight)
        except (ExamplesError, StoreError) as e:
            raise ConfigError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - the model could not embed them: the job could not either
            raise ConfigError(f"--examples: backend {backend.name!r} cannot embed them: {one_line(e)}") from None
        from_run = sum(example.uri in (known or {}) for example in self.examples)
        _LOG.info("--examples: %d confirmed images for %d of the %d labels%s", len(examples.labels),
                  len(set(examples.labels)), len(self.phrases),
                  f" ({from_run} of them with the vectors the run kept)" if known is not None else "")
        return examples


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """--output, --overwrite, --format and --num_shards: where and how a job writes its run."""

    output: str
    overwrite: bool = False
    file_format: str = "parquet"
    num_shards: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunFolder":
        """From the flags add_run_options declares."""
        return cls(args.output, args.overwrite, args.format, args.num_shards)

    def to_replace(self) -> Optional[str]:
        """The id of the finished run this job will replace (--overwrite), or None if none is there; ConfigError
        when one is there and --overwrite was not given."""
        current = finished_run(self.output, "--output")
        if current and not self.overwrite:
            raise ConfigError(f"--output {self.output!r} holds a finished run ({current.run_id}, finished "
                              f"{current.finished}); pass --overwrite to replace it once the new run has "
                              "succeeded")
        try:
            check_next_claim(self.output, current)
        except ConcurrentRunError as e:
            raise ConfigError(str(e)) from None
        except StoreError as e:
            raise ConfigError(f"cannot read --output {self.output!r}: {one_line(e)}") from None
        return current and current.run_id

    def probe(self) -> None:
        """Writes and deletes a probe file in the folder: the last check, so a refused job leaves nothing behind."""
        try:
            probe_writable(self.output)
        except Exception as e:  # noqa: BLE001 - a missing extra, a refused write, a file where a folder must be
            raise ConfigError(f"cannot write --output {self.output!r}: {one_line(e)}") from None


def report_labels(status: int, run: RunFolder, report: Optional[str], labels: LabelChoice) -> int:
    """After a labeling job that succeeded, the HTML report it was asked for (--report); the job's status."""
    if status == 0 and report:
        from pipelines.report import write_report  # only runs that ask for a report import its renderer

        write_report(run.output, report, title=f"labels: {scrubbed(labels.source)}")
        print(f"report: {report}")
    return status


def check_command_line(args: argparse.Namespace, beam_args: Sequence[str], parser: argparse.ArgumentParser,
                       required: Sequence[str]) -> None:
    """Unknown flags (with a did-you-mean), stray arguments (an unquoted glob) and missing required flags."""
    unknown = unknown_beam_args(beam_args)
    if flags := [arg for arg in unknown if arg.startswith("-")]:
        first = flags[0].split("=")[0]
        renamed = RENAMED_IN_0_2.get(first)
        known = internals.option_names(parser)
        close = [renamed] if renamed in known else difflib.get_close_matches(first, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        names = " ".join(flag.split("=")[0] for flag in flags)  # never the value: it may be a misspelled secret's
        raise ConfigError(f"unknown option(s): {names}{hint} (see --help)")
    if unknown:
        raise ConfigError(f"unexpected argument(s): {' '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; "
                          "a glob must be quoted (--input 'photos/*.jpg'), or the shell expands it into file names")
    if missing := [f"--{name}" for name in required if getattr(args, name) is None]:
        raise ConfigError(f"the following arguments are required: {', '.join(missing)}")


def checked_backend(args: argparse.Namespace, beam_args: Sequence[str] = ()) -> Backend:
    """The backend --backend names, configured by its own --NAME_* flags (Backend.from_options) and checked
    (weights present, key accepted...); with the DirectRunner the workers are this machine, so its hardware is
    checked too (a GPU for --hf_device cuda)."""
    runner = PipelineOptions(list(beam_args)).view_as(StandardOptions).runner
    try:
        backend = BACKENDS[args.backend].from_options(args)
        backend.check(workers_here=runner in DIRECT_RUNNERS)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"backend {args.backend!r} cannot run: {e}") from None
    return backend


def finished_run(folder: str, flag: str) -> Optional[Manifest]:
    """The manifest of the finished run in `folder`, or None; an unreadable folder is a ConfigError."""
    try:
        return read_manifest(folder)
    except Exception as e:  # noqa: BLE001 - an unreadable manifest or filesystem: one line, before the job
        raise ConfigError(f"cannot read {flag} {folder!r}: {one_line(e)}") from None


def result_settings(backend: Backend, labels: LabelChoice, templates: Sequence[str], explain: int = 0,
                    examples: Optional[Examples] = None) -> dict[str, Any]:
    """Everything a result row depends on: two runs with equal settings give a file the same row. The row's columns
    are among them, so a run made before a column was added or changed is never reused as if it had it; so are the
    examples (their digest: uri, label and image sha256 of each) and their weight."""
    label_set = json.dumps({"labels": labels.phrases, "templates": list(templates)}, sort_keys=True).encode("utf-8")
    decision = labels.decision
    return {"row_columns": hashlib.sha256(str(RESULTS_SCHEMA).encode("utf-8")).hexdigest()[:16],
            "backend": backend.name, "model": backend.model_id,
            "label_set_sha256": hashlib.sha256(label_set).hexdigest(), "top_k": decision.top_k,
            "min_prob": decision.min_prob, "multi_label_threshold": decision.multi_label_threshold,
            "explain": explain, "backend_settings": backend.result_settings(),
            "examples_sha256": examples.digest if examples else None,
            "examples_weight": examples.weight if examples else None}


def examples_details(path: Optional[str], examples: Optional[Examples]) -> dict[str, Any]:
    """What a run's manifest says of its --examples for people (the settings hold their digest)."""
    if examples is None:
        return {}
    return {"examples": path, "examples_images": len(examples.labels),
            "examples_labels": len(set(examples.labels))}


def new_manifest(job: str, prog: str, argv: Sequence[str], run: RunFolder, model: str, *,
                 details: Optional[Mapping[str, Any]] = None, **fields: Any) -> Manifest:
    """What `_SUCCESS` will say about a run of `job`, less what only its end knows (finish time, shards); `fields`
    are Manifest's, `details` what only people read. Strings a user typed are scrubbed of credentials."""
    def scrub(value: Any) -> Any:
        return (scrubbed(value) if isinstance(value, str) else
                [scrub(item) for item in value] if isinstance(value, (list, tuple)) else value)

    return Manifest(job, new_run_id(), utc_now(), (prog, *redacted(argv)), run.file_format, model,
                    details={name: scrub(value) for name, value in (details or {}).items()},
                    **{name: scrub(value) for name, value in fields.items()})


def written(manifest: Manifest, table: str) -> str:
    """'N rows in FILE, FILE' for one table of a committed run."""
    shards = manifest.shards.get(table, ())
    return f"{plural(manifest.rows(table), 'row')} in {', '.join(shard.path for shard in shards) or '(no file)'}"


def _why_it_failed(output: str, manifest: Manifest, error: Exception) -> str:
    """The failure's one line; when another job committed into `output` meanwhile (and may have removed this run's
    folder as it did, which is what then failed), that is said instead."""
    try:
        committed = read_manifest(output)
    except Exception:  # noqa: BLE001 - the failure itself is what to report
        committed = None
    if committed and committed.run_id != manifest.run_id and committed.finished >= manifest.started:
        return (f"ConcurrentRunError: another job committed run {committed.run_id} to {output!r} while this one "
                f"ran; this run's rows were not committed")
    return failure_line(error)


def _say_why_on_stop(output: str, manifest: Manifest) -> None:
    """SIGTERM (a preempted machine, a scheduler's stop) and Ctrl-C end the job with one line saying what is kept,
    instead of a silent exit 143 or a traceback."""
    def stop(signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        print(f"error: stopped by {name}: nothing of run {manifest.run_id} was committed, and {output!r} still "
              f"holds what it held; {saved_so_far(output, manifest)}", file=sys.stderr)
        internals.end_process_now(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def saved_so_far(output: str, manifest: Manifest) -> str:
    """What a rerun of a stopped job starts from: the vectors a classify job saved as it went (transforms.progress),
    counted where that is cheap (a local folder: the files' footers), or nothing."""
    if manifest.job != "classify":
        return "run the same command again"
    folder = files.join(output, manifest.run_id)
    if not is_local(output):  # no request to a store from a signal handler: it may be the reason for the stop
        return (f"the vectors saved as it went ({folder}/{PROGRESS_PREFIX}*.parquet, every few hundred images) are "
                "kept: run the same command again to continue from them")
    try:
        saved = sum(pq.read_metadata(path).num_rows
                    for path in files.glob(files.join(folder, f"{PROGRESS_PREFIX}*.parquet")))
    except Exception:  # noqa: BLE001 - a file cut short by the stop itself: the rerun skips it, and says so
        saved = None
    if saved == 0:
        return "no embedded image had been saved yet, so the same command, run again, starts from the first image"
    counted = "some embedded images" if saved is None else plural(saved, "embedded image")
    return f"{counted} were saved in {folder}: run the same command again to continue from them"


def _if_disk_full(output: str, run_id: str, error: Exception) -> str:
    """For a job that failed because the disk of a local --output filled up: where this run's files are, and what
    to do; '' otherwise."""
    if "No space left on device" not in str(error) or not is_local(output):
        return ""
    folder = os.path.join(output.removeprefix("file://"), run_id)
    size = sum(entry.stat().st_size for entry in os.scandir(folder)) if os.path.isdir(folder) else 0
    return (f"; this run's unfinished files are in {folder} ({size / 1e6:.0f} MB): free space elsewhere and run "
            "again to continue from them, or delete that folder")


def run_job(output: str, beam_args: Sequence[str], manifest: Manifest,
            build: Callable[[beam.Pipeline], None]) -> int:
    """Builds the pipeline with `build`, runs it, and prints the summary and what the committed run holds; a failed
    job ends with one line naming the exception that ended it, and exit status 1."""
    start = time.monotonic()
    pipeline = beam.Pipeline(options=PipelineOptions(with_launcher_versions(beam_args)))
    build(pipeline)
    if pipelines.STARTED_AS_JOB:
        _say_why_on_stop(output, manifest)
    if pipelines.STARTED_AS_JOB:
        internals.resume_garbage_collection()
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as e:  # noqa: BLE001 - a failed job ends with one line, the runner has logged the rest
        why = _why_it_failed(output, manifest, e) + _if_disk_full(output, manifest.run_id, e)
        print(f"error: the job failed: {why}", file=sys.stderr)
        return 1
    print(summary(result, time.monotonic() - start))
    committed = read_manifest(output)
    if committed is None or committed.run_id != manifest.run_id:  # a runner that lost the commit's failure
        print(f"error: the job ended but did not commit its run {manifest.run_id} to {output!r}", file=sys.stderr)
        return 1
    print(f"run {committed.run_id} in {output} ({SUCCESS} written)\n"
          + "\n".join(f"{table}: {written(committed, table)}" for table in committed.shards))
    return 0
