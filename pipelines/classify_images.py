"""Labels every image an input pattern matches with a label set, zero-shot, and writes Parquet.

python -m pipelines.classify_images --input 'photos/*.jpg' --labels everyday --output out/labels [Beam options]
"""
from __future__ import annotations

import argparse
import difflib
import logging
import sys
import time
from typing import Optional, Sequence

# Importing Beam without its optional GCP clients logs a warning through the root logger; swallow such
# import-time chatter so a configuration error stays the single line the user reads. main() sets up logging.
logging.getLogger().addHandler(logging.NullHandler())

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

from pipelines.cli import ConfigError, OneLineParser, add_backend_argument, add_backend_settings  # noqa: E402
from transforms.backends import BACKENDS  # noqa: E402
from transforms.classify import ZeroShotClassify, check_settings  # noqa: E402
from transforms.label_sets import (builtin_label_sets, builtin_templates, load_label_phrases,  # noqa: E402
                                  load_templates)
from transforms.summary import summary  # noqa: E402
from transforms.rank import Decision  # noqa: E402
from transforms.read import MatchFiles, first_match  # noqa: E402
from transforms.records import ERRORS, ERRORS_SCHEMA, RESULTS, RESULTS_SCHEMA  # noqa: E402
from transforms.write import (FORMATS, WriteRows, check_prefixes, count_rows, default_errors_prefix,  # noqa: E402
                              output_files, probe_writable)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m pipelines.classify_images", description=__doc__.splitlines()[0],
        epilog="Every standard Beam option is accepted too (--runner, --direct_num_workers, --setup_file, ...).",
        allow_abbrev=False)
    # Required flags are checked in validate(), after unknown ones: a misspelled --lables must be named as such.
    parser.add_argument("--input", help="(required) file, directory or glob, local or any fsspec URL; quote globs "
                                        "so the shell leaves them to the job")
    parser.add_argument("--labels", help="(required) a built-in label set "
                                         f"({', '.join(builtin_label_sets())}) or a file/URL, one label per line")
    parser.add_argument("--output", help="(required) prefix of the result shards")
    parser.add_argument("--errors_output", help="prefix of the error shards (default: OUTPUT_errors)")
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


def validate(args: argparse.Namespace, beam_args: Sequence[str], parser: argparse.ArgumentParser):
    """Everything that can be checked before the job starts; raises ConfigError with one readable line."""
    unknown = unknown_beam_args(beam_args)
    if flags := [arg for arg in unknown if arg.startswith("-")]:
        raise ConfigError(f"unknown option(s): {' '.join(flags)}{_option_hint(flags[0], parser)} (see --help)")
    if unknown:
        raise ConfigError(f"unexpected argument(s): {' '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; "
                          "a glob must be quoted (--input 'photos/*.jpg'), or the shell expands it into file names")
    if missing := [f"--{name}" for name in ("input", "labels", "output") if getattr(args, name) is None]:
        raise ConfigError(f"the following arguments are required: {', '.join(missing)}")
    try:
        check_prefixes(args.output, errors_prefix(args))
    except ValueError as e:
        raise ConfigError(str(e)) from None
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
    # Last, so that a job refused for another reason leaves no output folder behind.
    for flag, prefix in (("--output", args.output), ("--errors_output", errors_prefix(args))):
        try:
            probe_writable(prefix)
        except Exception as e:  # noqa: BLE001 - a missing extra, a refused write, a file where a folder must be
            raise ConfigError(f"cannot write {flag} {prefix!r}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return labels, templates, backend, decision


def build_pipeline(pipeline: beam.Pipeline, args: argparse.Namespace, labels, templates, backend,
                   decision: Decision) -> None:
    outputs = (
        pipeline
        | "Match" >> MatchFiles(args.input)
        | "Classify" >> ZeroShotClassify(labels, backend, templates, top_k=args.top_k,
                                         batch_size=args.batch_size, decision=decision, explain=args.explain)
    )
    outputs[RESULTS] | "WriteResults" >> WriteRows(args.output, RESULTS_SCHEMA, args.format, args.num_shards)
    outputs[ERRORS] | "WriteErrors" >> WriteRows(errors_prefix(args), ERRORS_SCHEMA, args.format, args.num_shards)


def errors_prefix(args: argparse.Namespace) -> str:
    return args.errors_output or default_errors_prefix(args.output)


def written(prefix: str) -> str:
    """'N rows in FILE, FILE' for the shards a finished run wrote under `prefix`."""
    files = output_files(prefix)
    return f"{sum(count_rows(f) for f in files)} rows in {', '.join(files) or '(no file)'}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("zero_shot").setLevel(logging.INFO)
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    try:
        labels, templates, backend, decision = validate(args, beam_args, parser)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.monotonic()
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    build_pipeline(pipeline, args, labels, templates, backend, decision)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as e:  # noqa: BLE001 - a failed job ends with one line, the runner has logged the rest
        print(f"error: the job failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        return 1
    print(summary(result, time.monotonic() - start))
    print(f"results: {written(args.output)}\nerrors: {written(errors_prefix(args))}")
    if args.report:
        from pipelines.report import write_report  # only runs that ask for a report import its renderer

        write_report(args.output, errors_prefix(args), args.report, title=f"labels: {args.labels}")
        print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
