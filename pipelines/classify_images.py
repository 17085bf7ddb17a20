"""Labels every image an input pattern matches with a label set, zero-shot, and writes Parquet.

python -m pipelines.classify_images --input 'photos/*.jpg' --labels everyday --output out/labels [Beam options]
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import logging
import re
import sys
import time
from typing import Any, NamedTuple, Optional, Sequence

# Importing Beam without its optional GCP clients logs a warning through the root logger; swallow such
# import-time chatter so a configuration error stays the single line the user reads. main() sets up logging.
logging.getLogger().addHandler(logging.NullHandler())

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from pipelines.cli import (ConfigError, OneLineParser, add_backend_argument, add_backend_settings,  # noqa: E402
                          failure_line)
from transforms.backends import BACKENDS  # noqa: E402
from transforms.classify import ZeroShotClassify, check_settings  # noqa: E402
from transforms.label_sets import (builtin_label_sets, builtin_templates, load_label_phrases,  # noqa: E402
                                  load_templates)
from transforms.summary import summary  # noqa: E402
from transforms.rank import Decision  # noqa: E402
from transforms.read import MatchFiles, first_match  # noqa: E402
from transforms.records import ERRORS, ERRORS_SCHEMA, RESULTS, RESULTS_SCHEMA  # noqa: E402
from transforms.run_folder import (SUCCESS, CommitRun, new_run_id, read_manifest, run_files,  # noqa: E402
                                   table_prefix, utc_now)
from transforms.skip import TO_LABEL, SkipExisting  # noqa: E402
from transforms.write import FORMATS, WriteRows, probe_writable  # noqa: E402

PROG = "python -m pipelines.classify_images"
# Values of flags with these words in their names never reach the manifest (e.g. Beam's --s3_secret_access_key).
SECRET_FLAG = re.compile(r"secret|token|password|api_key(?!_file)|access_key", re.IGNORECASE)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG, description=__doc__.splitlines()[0],
        epilog="Every standard Beam option is accepted too (--runner, --direct_num_workers, --setup_file, ...).",
        allow_abbrev=False)
    # Required flags are checked in validate(), after unknown ones: a misspelled --lables must be named as such.
    parser.add_argument("--input", help="(required) file, directory or glob, local or any fsspec URL; quote globs "
                                        "so the shell leaves them to the job")
    parser.add_argument("--labels", help="(required) a built-in label set "
                                         f"({', '.join(builtin_label_sets())}) or a file/URL, one label per line")
    parser.add_argument("--output", help="(required) folder of the run: its result and error shards, and the "
                                         f"{SUCCESS} manifest written once they are all final")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the finished run in --output; the old one stays readable until the new one "
                             "has succeeded")
    parser.add_argument("--skip_existing", metavar="RUN_FOLDER",
                        help="keep the rows of a finished run (same model, labels, settings and --format) for "
                             "files whose uri and sha256 are unchanged, and label only the rest; may be --output "
                             "itself, with --overwrite")
    parser.add_argument("--format", default="parquet", choices=FORMATS,
                        help="file format of results and errors; CSV writes list columns as JSON (default parquet)")
    parser.add_argument("--report", metavar="PATH", help="also write an HTML report of the run to PATH")
    parser.add_argument("--top_k", type=int, default=5, help="labels reported per image (default 5)")
    parser.add_argument("--templates", help=f"prompt templates: a built-in name ({', '.join(builtin_templates())}) "
                                           "or a file/URL, one template with {} per line "
                                           "(default: the backend's choice)")
    parser.add_argument("--min_prob", type=float, default=0.0,
                        help="report 'unknown' when the best label's probability is below this")
    parser.add_argument("--multi_label", action="store_true",
                        help="report every label whose probability reaches --threshold, instead of the top_k")
    parser.add_argument("--threshold", type=float, help="probability threshold for --multi_label")
    parser.add_argument("--batch_size", type=int, help="images per model call (default: the backend's choice)")
    parser.add_argument("--explain", type=int, nargs="?", const=5, default=0, metavar="N",
                        help="add an `evidence` column: the N (default 5) things that built each image's vector, "
                             "where the backend has them (local: ImageNet classes and their probabilities)")
    parser.add_argument("--num_shards", type=int, default=0, help="output shards (default: runner decides)")
    add_backend_argument(parser)
    add_backend_settings(parser)
    return parser


def _all_option_classes(cls: type = PipelineOptions):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_option_classes(sub)


def unknown_beam_args(beam_args: Sequence[str]) -> list[str]:
    """Arguments that neither this job nor any Beam options class knows: Beam would silently drop them."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    for options_class in set(_all_option_classes()):
        try:
            options_class._add_argparse_args(parser)  # Beam's own hook for declaring options
        except argparse.ArgumentError:
            pass  # two options classes declaring one flag: the first declaration is enough here
    _, unknown = parser.parse_known_args(list(beam_args))
    return unknown


def _option_hint(flag: str, parser: argparse.ArgumentParser) -> str:
    close = difflib.get_close_matches(flag.split("=")[0], list(parser._option_string_actions), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


class Plan(NamedTuple):
    """What validate() settled: everything build_pipeline needs besides the parsed flags."""

    labels: dict[str, list[str]]
    templates: list[str]
    backend: Any
    decision: Decision
    settings: dict[str, Any]
    replaces: Optional[str]  # the run id --overwrite replaces
    previous_shards: Optional[list[str]]  # --skip_existing's result shards


def validate(args: argparse.Namespace, beam_args: Sequence[str], parser: argparse.ArgumentParser) -> Plan:
    """Everything that can be checked before the job starts; raises ConfigError with one readable line."""
    unknown = unknown_beam_args(beam_args)
    if flags := [arg for arg in unknown if arg.startswith("-")]:
        raise ConfigError(f"unknown option(s): {' '.join(flags)}{_option_hint(flags[0], parser)} (see --help)")
    if unknown:
        raise ConfigError(f"unexpected argument(s): {' '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; "
                          "a glob must be quoted (--input 'photos/*.jpg'), or the shell expands it into file names")
    if missing := [f"--{name}" for name in ("input", "labels", "output") if getattr(args, name) is None]:
        raise ConfigError(f"the following arguments are required: {', '.join(missing)}")
    if args.multi_label != (args.threshold is not None):
        raise ConfigError("--multi_label and --threshold go together")
    try:
        check_settings(args.top_k, args.batch_size, args.explain)
        decision = Decision(args.min_prob, args.threshold)
    except ValueError as e:  # the library's own checks, worded by setting name; flags have the same names
        raise ConfigError(f"--{e}") from None
    try:
        labels = load_label_phrases(args.labels)
        templates = load_templates(args.templates) if args.templates else None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        match = first_match(args.input)
    except Exception as e:  # noqa: BLE001 - a missing fsspec driver, a refused listing: all stop the job here
        raise ConfigError(f"cannot list --input {args.input!r}: {type(e).__name__}: {e}") from None
    if match is None:
        raise ConfigError(f"--input {args.input!r} matches no file")
    backend = BACKENDS[args.backend].from_options(args)
    try:
        backend.check()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"backend {args.backend!r} cannot run: {e}") from None
    templates = templates or load_templates(backend.default_templates)
    settings = result_settings(args, labels, templates, backend, decision)
    replaces = _finished_run(args.output, "--output")
    if replaces and not args.overwrite:
        raise ConfigError(f"--output {args.output!r} holds a finished run ({replaces['run_id']}, finished "
                          f"{replaces['finished']}); pass --overwrite to replace it once the new run has succeeded")
    previous = _finished_run(args.skip_existing, "--skip_existing") if args.skip_existing else None
    if args.skip_existing and previous is None:
        raise ConfigError(f"--skip_existing {args.skip_existing!r} holds no finished run (no {SUCCESS})")
    if previous:
        check_reusable(previous, settings, args.format)
    # Last, so that a job refused for another reason leaves no output folder behind.
    try:
        probe_writable(args.output)
    except Exception as e:  # noqa: BLE001 - a missing extra, a refused write, a file where a folder must be
        raise ConfigError(f"cannot write --output {args.output!r}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return Plan(labels, templates, backend, decision, settings, replaces and replaces["run_id"],
                previous and run_files(args.skip_existing))


def _finished_run(folder: str, flag: str) -> Optional[dict[str, Any]]:
    try:
        return read_manifest(folder)
    except Exception as e:  # noqa: BLE001 - an unreadable manifest or filesystem: one line, before the job
        raise ConfigError(f"cannot read {flag} {folder!r}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None


def result_settings(args: argparse.Namespace, labels: dict[str, list[str]], templates: Sequence[str], backend,
                    decision: Decision) -> dict[str, Any]:
    """Everything an output row depends on: two runs with equal settings give a file the same row."""
    label_set = json.dumps({"labels": labels, "templates": list(templates)}, sort_keys=True).encode("utf-8")
    return {"backend": args.backend, "model": backend.model_id,
            "label_set_sha256": hashlib.sha256(label_set).hexdigest(), "top_k": args.top_k,
            "min_prob": decision.min_prob, "multi_label_threshold": decision.multi_label_threshold,
            "explain": args.explain,
            "backend_settings": backend.result_settings()}


def check_reusable(previous: dict[str, Any], settings: dict[str, Any], file_format: str) -> None:
    """Raises ConfigError unless the rows of the `previous` run are the rows this run would write."""
    if differ := [name for name in settings if previous["settings"].get(name) != settings[name]]:
        raise ConfigError(f"--skip_existing: run {previous['run_id']} was made with another {differ[0]} "
                          f"({previous['settings'].get(differ[0])!r}, now {settings[differ[0]]!r}); its rows "
                          "cannot be reused")
    if previous["format"] != file_format:
        raise ConfigError(f"--skip_existing: run {previous['run_id']} is in {previous['format']}; "
                          f"write this run with --format {previous['format']} too")


def redacted(argv: Sequence[str]) -> list[str]:
    """The command line with the value of every secret-looking flag replaced, as the manifest records it."""
    out, hide_next = [], False
    for arg in argv:
        flag, equals, _ = arg.partition("=")
        secret = arg.startswith("-") and bool(SECRET_FLAG.search(flag))
        out.append("<redacted>" if hide_next else f"{flag}=<redacted>" if secret and equals else arg)
        hide_next = secret and not equals
    return out


def build_pipeline(pipeline: beam.Pipeline, args: argparse.Namespace, plan: Plan, manifest: dict[str, Any]) -> None:
    """Match -> [keep unchanged rows of a previous run] -> classify -> write results and errors -> commit."""
    uris = pipeline | "Match" >> MatchFiles(args.input)
    kept, hash_errors = [], []
    if plan.previous_shards is not None:
        split = uris | "SkipExisting" >> SkipExisting(plan.previous_shards)
        uris, kept, hash_errors = split[TO_LABEL], [split[RESULTS]], [split[ERRORS]]
    outputs = uris | "Classify" >> ZeroShotClassify(
        plan.labels, plan.backend, plan.templates, top_k=args.top_k, batch_size=args.batch_size,
        decision=plan.decision, explain=args.explain)
    results = [outputs[RESULTS], *kept] | "AllResults" >> beam.Flatten()
    errors = [outputs[ERRORS], *hash_errors] | "AllErrors" >> beam.Flatten()
    run_id = manifest["run_id"]
    written = {
        RESULTS: results | "WriteResults" >> WriteRows(table_prefix(args.output, run_id, RESULTS), RESULTS_SCHEMA,
                                                       args.format, args.num_shards),
        ERRORS: errors | "WriteErrors" >> WriteRows(table_prefix(args.output, run_id, ERRORS), ERRORS_SCHEMA,
                                                    args.format, args.num_shards),
    }
    written | "Commit" >> CommitRun(args.output, manifest, plan.replaces)


def new_manifest(args: argparse.Namespace, argv: Sequence[str], plan: Plan) -> dict[str, Any]:
    """What `_SUCCESS` says about a run, less what only its end knows (finish time, shards and row counts)."""
    previous = read_manifest(args.skip_existing) if args.skip_existing else None
    return {"version": 1, "run_id": new_run_id(), "started": utc_now(), "command": [PROG, *redacted(argv)],
            "input": args.input, "labels": args.labels, "format": args.format, "model": plan.backend.model_id,
            "settings": plan.settings, "skip_existing": previous and previous["run_id"]}


def written(manifest: dict[str, Any], table: str) -> str:
    """'N rows in FILE, FILE' for one table of a committed run."""
    shards = manifest[table]
    return f"{sum(s['rows'] for s in shards)} rows in {', '.join(s['path'] for s in shards) or '(no file)'}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("zero_shot").setLevel(logging.INFO)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    try:
        plan = validate(args, beam_args, parser)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.monotonic()
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    manifest = new_manifest(args, argv, plan)
    build_pipeline(pipeline, args, plan, manifest)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as e:  # noqa: BLE001 - a failed job ends with one line, the runner has logged the rest
        print(f"error: the job failed: {failure_line(e)}", file=sys.stderr)
        return 1
    print(summary(result, time.monotonic() - start))
    committed = read_manifest(args.output)
    print(f"run {committed['run_id']} in {args.output} ({SUCCESS} written)\n"
          f"results: {written(committed, RESULTS)}\nerrors: {written(committed, ERRORS)}")
    if args.report:
        from pipelines.report import write_report  # only runs that ask for a report import its renderer

        write_report(args.output, args.report, title=f"labels: {args.labels}")
        print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
