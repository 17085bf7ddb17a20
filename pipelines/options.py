"""The options jobs share, each declared once with the typed value it settles into: the run folder a job writes
(RunTarget), the labels an image gets (LabelChoice), the run whose kept vectors a job reads (StoredVectors), and the
backend. Each `from_args` is the one place its flags are read; from then on only the typed value travels."""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
from typing import Any, Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.cli import ConfigError, add_backend_argument, add_backend_settings
from pipelines.workers import DIRECT_RUNNERS
from transforms.backends import BACKENDS, Backend
from transforms.examples import DEFAULT_WEIGHT, Example, Examples, ExamplesError, embed_examples, read_examples
from transforms.faults import StoreError, one_line
from transforms.label_sets import builtin_label_sets, builtin_templates, load_label_phrases, load_templates
from transforms.manifest import Manifest
from transforms.rank import Decision
from transforms.records import RESULTS_SCHEMA
from transforms.review import DEFAULT_REVIEW_SIZE
from transforms.run_folder import SUCCESS, ConcurrentRunError, RunFolderError, check_next_claim, read_manifest
from transforms.stored import DEFAULT_BATCH, EmbeddingsMismatch, embeddings_of, stored_vectors_of
from transforms.write import FORMATS, probe_writable

_LOG = logging.getLogger("zero_shot")


def add_run_options(parser: argparse.ArgumentParser, output_help: str) -> None:
    """--output, --overwrite, --format and --num_shards: RunTarget."""
    parser.add_argument("--output", help=output_help)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the finished run in --output; the old one stays readable until the new one "
                             "has succeeded")
    parser.add_argument("--format", default="parquet", choices=FORMATS,
                        help="file format of the rows; CSV writes list columns as JSON (default parquet)")
    parser.add_argument("--num_shards", type=int, default=0, help="output shards (default: runner decides)")


@dataclasses.dataclass(frozen=True)
class RunTarget:
    """Where and how a job writes its run folder: --output, --overwrite, --format and --num_shards."""

    output: str
    overwrite: bool = False
    file_format: str = "parquet"
    num_shards: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RunTarget":
        return cls(args.output, args.overwrite, args.format, args.num_shards)

    def to_replace(self) -> Optional[str]:
        """The id of the finished run this job will replace (--overwrite), or None if none is there; ConfigError
        when one is there and --overwrite was not given, or when another job is committing there."""
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


def finished_run(folder: str, flag: str) -> Optional[Manifest]:
    """The manifest of the finished run in `folder`, or None; an unreadable folder is a ConfigError."""
    try:
        return read_manifest(folder)
    except Exception as e:  # noqa: BLE001 - an unreadable manifest or filesystem: one line, before the job
        raise ConfigError(f"cannot read {flag} {folder!r}: {one_line(e)}") from None


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """--backend and every backend's own settings."""
    add_backend_argument(parser)
    add_backend_settings(parser)


def checked_backend(args: argparse.Namespace, beam_args: Sequence[str]) -> Backend:
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


def add_label_options(parser: argparse.ArgumentParser) -> None:
    """--labels, --templates, the decision options, --examples and --review: LabelChoice."""
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
    examples_file: Optional[str] = None  # --examples as given

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
            return cls.of(args.labels, decision, args.templates, args.examples, args.examples_weight, args.review)
        except ValueError as e:  # ExamplesError and the label sets' errors say which flag
            raise ConfigError(str(e)) from None

    @classmethod
    def of(cls, labels: str, decision: Decision = Decision(), templates: Optional[str] = None,
           examples: Optional[str] = None, examples_weight: float = DEFAULT_WEIGHT,
           review: int = DEFAULT_REVIEW_SIZE) -> "LabelChoice":
        """The labels of a built-in set or a label file (and templates and examples by name or file), read and
        checked; ValueError (LabelSetError, ExamplesError) naming what is wrong."""
        phrases = load_label_phrases(labels)
        return cls(labels, phrases, load_templates(templates) if templates else None, decision,
                   tuple(read_examples(examples, list(phrases))) if examples else (), examples_weight, review,
                   examples)

    def templates_for(self, backend: Backend) -> list[str]:
        return self.templates or load_templates(backend.default_templates)

    def embedded_examples(self, backend: Backend, stored: Optional[StoredVectors] = None) -> Optional[Examples]:
        """The examples with their image vectors (embed_examples: those the `stored` run kept as they are, the
        others read and embedded now), or None without --examples; ConfigError with one line."""
        if not self.examples:
            return None
        known = stored.vectors_of([example.uri for example in self.examples]) if stored else None
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

    def settings(self, backend: Backend, explain: int = 0, examples: Optional[Examples] = None) -> dict[str, Any]:
        """Everything a result row depends on: two runs with equal settings give a file the same row (compared by
        manifest.differing_setting). The row's columns are among them, so a run made before a column was added or
        changed is never reused as if it had it; so are the examples (their digest) and their weight."""
        label_set = json.dumps({"labels": self.phrases, "templates": self.templates_for(backend)},
                               sort_keys=True).encode("utf-8")
        return {"row_columns": hashlib.sha256(str(RESULTS_SCHEMA).encode("utf-8")).hexdigest()[:16],
                "backend": backend.name, "model": backend.model_id,
                "label_set_sha256": hashlib.sha256(label_set).hexdigest(), "top_k": self.decision.top_k,
                "min_prob": self.decision.min_prob, "multi_label_threshold": self.decision.multi_label_threshold,
                "explain": explain, "backend_settings": backend.result_settings(),
                "examples_sha256": examples.digest if examples else None,
                "examples_weight": examples.weight if examples else None}

    def details(self, examples: Optional[Examples]) -> dict[str, Any]:
        """What a run's manifest says of its --examples for people (the settings hold their digest)."""
        if examples is None:
            return {}
        return {"examples": self.examples_file, "examples_images": len(examples.labels),
                "examples_labels": len(set(examples.labels))}


def add_stored_options(parser: argparse.ArgumentParser, what: str, report: str,
                       embeddings_help: str = "(required) folder of a finished classify_images run kept with "
                                              "--keep_embeddings") -> None:
    """What the jobs over stored vectors (relabel, search, topics) add: --embeddings, --report, --vectors_per_batch
    and the backend."""
    parser.add_argument("--embeddings", help=embeddings_help)
    parser.add_argument("--report", metavar="PATH", help=f"also write {report} to PATH")
    parser.add_argument("--vectors_per_batch", type=int, default=DEFAULT_BATCH,
                        help=f"stored vectors {what} per matrix product (default {DEFAULT_BATCH})")
    add_backend_options(parser)


@dataclasses.dataclass(frozen=True)
class StoredVectors:
    """The finished run whose kept vectors a job reads (--embeddings), checked against the job's model."""

    folder: str
    manifest: Manifest
    shards: tuple[str, ...]

    @classmethod
    def of(cls, folder: str, backend: Backend) -> "StoredVectors":
        """ConfigError with one line unless `folder` holds a finished run that kept vectors of `backend`'s model."""
        try:
            manifest, shards = embeddings_of(folder, backend)
        except (EmbeddingsMismatch, RunFolderError) as e:
            raise ConfigError(f"--embeddings: {e}") from None
        except StoreError as e:
            raise ConfigError(f"cannot read --embeddings {folder!r}: {one_line(e)}") from None
        return cls(folder, manifest, tuple(shards))

    def vectors_of(self, uris: Sequence[str]) -> dict[str, tuple]:
        """uri -> (sha256, vector) of those of `uris` the run kept: an example among them needs no image model."""
        return stored_vectors_of(self.shards, uris)


def check_skip_existing(folder: Optional[str]) -> Optional[Manifest]:
    """The finished run --skip_existing names, or None without the flag; ConfigError when it holds none."""
    if not folder:
        return None
    previous = finished_run(folder, "--skip_existing")
    if previous is None:
        raise ConfigError(f"--skip_existing {folder!r} holds no finished run (no {SUCCESS})")
    return previous
