"""The runner: the one owner of a job's life. A job (classify, relabel, search, topics, evaluate) declares its options,
settles them into a typed, frozen plan once, and says which tables it makes from a pipeline and that plan; the
runner does the rest, the same way for every job:

    parse -> job.plan (checks; ConfigError: one line, exit 2) -> manifest -> resume lookup, probe, _STARTED
    -> build (job.tables) -> write the tables and review.csv -> commit -> run, with signals -> summary -> job.after

`main(job, argv)` is a job's command line; `execute(job, plan)` runs a plan built in code (tests, notebooks).
"""
from __future__ import annotations

import abc
import argparse
import dataclasses
import difflib
import logging
import os
import signal
import sys
import time
from typing import Callable, ClassVar, Mapping, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

import pipelines
from pipelines.cli import ConfigError, OneLineParser, failure_line, unknown_beam_args
from pipelines.options import RunTarget, add_run_options
from pipelines.redact import redacted, scrubbed
from pipelines.workers import with_launcher_versions, workers_in_this_process
from transforms import faults, files, internals
from transforms.backends import Backend
from transforms.faults import one_line
from transforms.manifest import Manifest
from transforms.progress import PROGRESS_PREFIX, resumable, write_started
from transforms.records import EMBEDDINGS, REVIEW
from transforms.review import WriteReview
from transforms.run_folder import SUCCESS, CommitRun, new_run_id, read_manifest, table_prefix, unfinished_runs, utc_now
from transforms.stores import is_local, use_job_options
from transforms.summary import plural, summary
from transforms.write import Shard, WriteEmbeddings, WriteRows

# Old flag names removed in 0.2.0 (each collided with a live flag of a sibling job): the did-you-mean names the new.
RENAMED_IN_0_2 = {"--embeddings": "--keep_embeddings", "--batch_size": "--vectors_per_batch",
                  "--top_k": "--images_per_query"}
BEAM_EPILOG = ("Every standard Beam option is accepted too (--runner, --direct_num_workers, --setup_file, ...), and "
               "--store_retry_s S: how long a store that fails (unreachable, timing out, throttling, refusing the "
               "credentials) is retried before the job stops, committing nothing (default 60).")
RUN_FOLDER_HELP = (f"(required) folder of the run: its shards, and the {SUCCESS} manifest written once they are all "
                   "final")
_LOG = logging.getLogger("zero_shot")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """What every job's plan holds: the fields the runner reads. A job's own plan adds its fields to these."""

    target: RunTarget
    backend: Optional[Backend] = None  # the model, for the jobs that embed or rank; the manifest names it
    resume: bool = True  # a job that embeds images goes on from the vectors unfinished runs saved (not --fresh)

    @property
    def settings(self) -> Mapping:
        """What a result row depends on (LabelChoice.settings), for the jobs that label: the manifest keeps them,
        and resume and --skip_existing compare them (manifest.differing_setting)."""
        return {}


@dataclasses.dataclass(frozen=True)
class Run:
    """The run the runner started for a plan: its manifest, the finished run it replaces (--overwrite), and the
    progress files of the unfinished runs it goes on from (a job that embeds images)."""

    manifest: Manifest
    replaces: Optional[str] = None
    progress: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.manifest.run_id


@dataclasses.dataclass(frozen=True)
class Derived:
    """A file a job makes from one of its tables once every shard of it is final (the index's FAISS file from its
    rows): `make(shards)` writes it and returns its one shard and what it measured, which the manifest's `details`
    keep under the derived table's name."""

    source: str
    make: Callable[[list[Shard]], tuple[Shard, Mapping]]


@dataclasses.dataclass(frozen=True)
class Outputs:
    """What a job's pipeline makes: table -> (rows, schema), written as --format says; tables the job wrote itself,
    file by file (table -> the Shards it wrote); files derived from a written table; the kept vectors, written as
    Parquet vectors of `embeddings_dtype`; and the result rows review.csv is chosen from."""

    tables: Mapping[str, tuple[beam.PCollection, pa.Schema]]
    embeddings: Optional[beam.PCollection] = None
    embeddings_dtype: str = "float32"
    review: Optional[beam.PCollection] = None
    review_size: int = 0
    shards: Mapping[str, beam.PCollection] = dataclasses.field(default_factory=dict)
    derived: Mapping[str, Derived] = dataclasses.field(default_factory=dict)


class Job(abc.ABC):
    """One kind of job. Subclasses declare their options, build their plan from them (the one place their flags are
    read), record what the manifest says of it, and make their tables; `after` writes what comes once the run is
    committed (a report)."""

    name: ClassVar[str]  # the manifest's `job`, and `zero-shot-labels NAME`
    module: ClassVar[str]  # pipelines/<module>.py: `python -m pipelines.<module>`
    required: ClassVar[tuple[str, ...]]  # flags that must be given, checked after the unknown ones
    output_help: ClassVar[str] = RUN_FOLDER_HELP
    embeds_images: ClassVar[bool] = False  # saves its vectors as it goes, resumes from them, warms the model up

    @abc.abstractmethod
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """This job's flags (the runner adds --output, --overwrite, --format, --num_shards)."""

    @abc.abstractmethod
    def plan(self, args: argparse.Namespace, beam_args: Sequence[str]) -> Plan:
        """Everything that can be checked before the job starts; ConfigError with one line otherwise."""

    def record(self, plan: Plan) -> dict:
        """Manifest fields of this job's runs (and `details`, what only people read)."""
        return {}

    @abc.abstractmethod
    def tables(self, pipeline: beam.Pipeline, plan: Plan, run: Run) -> Outputs:
        """The pipeline's tables; the runner writes and commits them."""

    def after(self, plan: Plan, manifest: Manifest) -> None:
        """What the job writes once its run (`manifest`) is committed: a report, a label file."""

    @property
    def prog(self) -> str:
        return pipelines.prog(self.module)

    def parser(self) -> argparse.ArgumentParser:
        doc = getattr(sys.modules.get(type(self).__module__), "__doc__", None) or type(self).__doc__ or ""
        parser = OneLineParser(prog=self.prog, description=doc.strip().splitlines()[0] if doc.strip() else None,
                               epilog=BEAM_EPILOG, allow_abbrev=False)
        self.add_options(parser)
        add_run_options(parser, self.output_help)
        return parser


def main(job: Job, argv: Optional[Sequence[str]] = None) -> int:
    """A job's command line: its exit status (0: committed; 1: the job failed; 2: refused before it started)."""
    faults.reset_store_clocks()  # before the checks, which read the stores too
    with internals.job_logging(pipelines.STARTED_AS_JOB):
        try:
            argv, args, beam_args = parse(job.parser(), argv, job.required)
            plan = job.plan(args, beam_args)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return _run(job, plan, beam_args, (job.prog, *redacted(argv)))


def execute(job: Job, plan: Plan, beam_args: Sequence[str] = ()) -> int:
    """Runs a plan built in code to a committed run, as `main` runs the one it builds from flags: the exit status,
    and the same log."""
    faults.reset_store_clocks()
    with internals.job_logging(pipelines.STARTED_AS_JOB):
        use_job_options(PipelineOptions(list(beam_args)))  # the run folder's checks reach the store the job will
        return _run(job, plan, beam_args, ())


def _run(job: Job, plan: Plan, beam_args: Sequence[str], command: Sequence[str]) -> int:
    manifest = new_manifest(job.name, command, plan, **job.record(plan))
    try:
        run = start(job, plan, manifest)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if job.embeds_images and workers_in_this_process(beam_args):
        plan.backend.warm_up()
    status = run_pipeline(plan.target.output, beam_args, manifest, job.embeds_images,
                          lambda pipeline: write(job.tables(pipeline, plan, run), plan, run))
    if status == 0:
        job.after(plan, manifest)
    return status


def start(job: Job, plan: Plan, manifest: Manifest) -> Run:
    """The checks of the run folder (the finished run it replaces, a commit under way, the unfinished runs to go on
    from, a probe write), then `_STARTED` for a job that saves its progress: what a rerun compares its settings to."""
    output = plan.target.output
    replaces = plan.target.to_replace()
    progress = resume_from(output, plan.settings) if job.embeds_images and plan.resume else []
    plan.target.probe()
    if job.embeds_images:
        try:
            write_started(output, manifest)
        except Exception as e:  # noqa: BLE001 - the probe wrote there a moment ago; say what changed
            raise ConfigError(f"cannot write --output {output!r}: {one_line(e)}") from None
    return Run(manifest, replaces, tuple(progress))


def resume_from(output: str, settings: Mapping) -> list[str]:
    """The progress files of the unfinished runs under `output` made with the same model, said in the log."""
    try:
        runs, found = resumable(output, unfinished_runs(output), dict(settings))
    except Exception as e:  # noqa: BLE001 - a folder that cannot be listed cannot be written either
        raise ConfigError(f"cannot read --output {output!r}: {one_line(e)}") from None
    if found:
        _LOG.info("resuming: %d progress files of the unfinished run(s) %s; only the images they do not hold are "
                  "read and embedded (--fresh embeds everything again)", len(found), ", ".join(runs))
    return found


def write(outputs: Outputs, plan: Plan, run: Run) -> None:
    """Writes each table in --format, the vectors and review.csv, and commits the run once they are all final."""
    target, run_id = plan.target, run.id
    written = {table: rows | f"Write{table.title()}" >> WriteRows(
                   table_prefix(target.output, run_id, table), schema, target.file_format, target.num_shards)
               for table, (rows, schema) in outputs.tables.items()}
    if outputs.review is not None and outputs.review_size:
        written[REVIEW] = outputs.review | "WriteReview" >> WriteReview(files.join(target.output, run_id),
                                                                         outputs.review_size)
    if outputs.embeddings is not None:
        written[EMBEDDINGS] = outputs.embeddings | "WriteEmbeddings" >> WriteEmbeddings(
            table_prefix(target.output, run_id, EMBEDDINGS), plan.backend.embedding_dim, outputs.embeddings_dtype,
            target.num_shards)
    written.update(outputs.shards)
    measured = []
    for table, derived in outputs.derived.items():
        made = (written[derived.source]
                | f"All{table.title()}Sources" >> beam.combiners.ToList()
                | f"Make{table.title()}" >> beam.Map(derived.make))
        written[table] = made | f"{table.title()}Shard" >> beam.Map(lambda shard_and_facts: shard_and_facts[0])
        measured.append(made | f"{table.title()}Facts" >> beam.Map(lambda made, table=table: (table, made[1])))
    details = measured | "Measured" >> beam.Flatten() if measured else None
    written | "Commit" >> CommitRun(target.output, run.manifest, run.replaces, details)


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
          required: Sequence[str]) -> tuple[list[str], argparse.Namespace, list[str]]:
    """(the command line, this job's flags, the rest for Beam); ConfigError for an unknown flag, a stray argument
    or a `required` flag missing."""
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


def new_manifest(job: str, command: Sequence[str], plan: Plan, *, details: Optional[Mapping] = None,
                 **fields) -> Manifest:
    """What `_SUCCESS` will say about a run of `job`, less what only its end knows (finish time, shards); `fields`
    are Manifest's, `details` what only people read. Strings a user typed are scrubbed of credentials."""
    def scrub(value):
        return (scrubbed(value) if isinstance(value, str) else
                [scrub(item) for item in value] if isinstance(value, (list, tuple)) else value)

    model = plan.backend.model_id if plan.backend else ""
    return Manifest(job, new_run_id(), utc_now(), tuple(command), plan.target.file_format, model,
                    details={name: scrub(value) for name, value in (details or {}).items()},
                    **{name: scrub(value) for name, value in fields.items()})


def written(manifest: Manifest, table: str) -> str:
    """'N rows in FILE, FILE' for one table of a committed run."""
    shards = manifest.shards.get(table, ())
    return f"{plural(manifest.rows(table), 'row')} in {', '.join(shard.path for shard in shards) or '(no file)'}"


def run_pipeline(output: str, beam_args: Sequence[str], manifest: Manifest, saves_progress: bool,
                 build: Callable[[beam.Pipeline], None]) -> int:
    """Builds the pipeline with `build`, runs it, and prints the summary and what the committed run holds; a failed
    job ends with one line naming the exception that ended it, and exit status 1."""
    start_time = time.monotonic()
    pipeline = beam.Pipeline(options=PipelineOptions(with_launcher_versions(beam_args)))
    build(pipeline)
    if pipelines.STARTED_AS_JOB:
        _say_why_on_stop(output, manifest, saves_progress)
        internals.resume_garbage_collection()
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as e:  # noqa: BLE001 - a failed job ends with one line, the runner has logged the rest
        why = _why_it_failed(output, manifest, e) + _if_disk_full(output, manifest.run_id, e)
        print(f"error: the job failed: {why}", file=sys.stderr)
        return 1
    print(summary(result, time.monotonic() - start_time))
    committed = read_manifest(output)
    if committed is None or committed.run_id != manifest.run_id:  # a runner that lost the commit's failure
        print(f"error: the job ended but did not commit its run {manifest.run_id} to {output!r}", file=sys.stderr)
        return 1
    print(f"run {committed.run_id} in {output} ({SUCCESS} written)\n"
          + "\n".join(f"{table}: {written(committed, table)}" for table in committed.shards))
    return 0


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


def _say_why_on_stop(output: str, manifest: Manifest, saves_progress: bool) -> None:
    """SIGTERM (a preempted machine, a scheduler's stop) and Ctrl-C end the job with one line saying what is kept,
    instead of a silent exit 143 or a traceback."""
    def stop(signum: int, _frame) -> None:
        kept = saved_so_far(output, manifest) if saves_progress else "run the same command again"
        print(f"error: stopped by {signal.Signals(signum).name}: nothing of run {manifest.run_id} was committed, and "
              f"{output!r} still holds what it held; {kept}", file=sys.stderr)
        internals.end_process_now(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def saved_so_far(output: str, manifest: Manifest) -> str:
    """What a rerun of a stopped job that saves its progress starts from: the vectors it saved as it went
    (transforms.progress), counted where that is cheap (a local folder: the files' footers)."""
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


def write_page(path: Optional[str], render: Callable[[], None]) -> None:
    """After a committed run, the HTML page it was asked for (--report), said on stdout."""
    if path:
        render()
        print(f"report: {path}")
