"""Builds a vector index of a run's kept vectors (or of vectors you bring), for `serve` and `search --index`: each
image with the labels its run gave it, searchable in milliseconds at a million images (transforms/vector_index.py).

python -m pipelines.index --embeddings out/labels --output out/index [--labels_from out/relabeled]
python -m pipelines.index --vectors 'vectors/*.parquet' --backend local --output out/index
    [--skip_existing out/index --overwrite] [Beam options]

Needs the `search` extra: pip install 'beam-zero-shot-labels[search]'.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from typing import Mapping, Optional, Sequence

import apache_beam as beam

from pipelines import runner
from pipelines.cli import ConfigError, exit_job
from pipelines.options import RunTarget, StoredVectors, add_backend_options, checked_backend, finished_run
from transforms import files
from transforms.backends import Backend
from transforms.backends.hf import install_command
from transforms.faults import StoreError, one_line
from transforms.manifest import Manifest, differing_setting
from transforms.records import RESULTS
from transforms.run_folder import finished_manifest, manifest_files
from transforms.stores import use_worker_options
from transforms.vector_index import (
    ANN,
    EXACT_BELOW,
    ROWS,
    IndexFacts,
    build_ann,
    index_files,
    indexed_uris,
    read_labels,
    vector_dimension,
    write_rows_shards,
)
from transforms.write import Shard


@dataclasses.dataclass(frozen=True)
class PreviousIndex:
    """The finished index --skip_existing names: its rows are kept, and its FAISS file grows by the new vectors."""

    folder: str
    manifest: Manifest
    facts: IndexFacts
    rows: tuple[Shard, ...]  # its rows shards, in the order of its FAISS ids
    ann: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class IndexPlan(runner.Plan):
    sources: tuple[str, ...]  # files of vectors: a kept run's embeddings shards, or --vectors
    source_run: Optional[str] = None  # the kept run's id
    labeled: tuple[str, ...] = ()  # result shards whose labels the rows carry
    labels_run: Optional[str] = None
    dimension: int
    exact_below: int = EXACT_BELOW
    previous: Optional[PreviousIndex] = None


class Index(runner.Job):
    name, module, required = "index", "index", ("output",)
    output_help = "(required) folder of the index: local or a bucket"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--embeddings", help="folder of a finished classify run kept with --keep_embeddings")
        parser.add_argument("--vectors", help="instead: Parquet file(s) (a glob) of vectors you bring, with `uri` and "
                                              "`embedding` columns (and width, height where known), made by the "
                                              "model --backend names, whose text tower answers text queries")
        parser.add_argument("--labels_from", metavar="RUN_FOLDER",
                            help="the labels the rows carry: a relabel run of --embeddings (default: the labels of "
                                 "the --embeddings run itself)")
        parser.add_argument("--skip_existing", metavar="INDEX",
                            help="a finished index to grow: its images are kept, and only vectors of uris it lacks "
                                 "are added, without training it again")
        parser.add_argument("--exact_below", type=int, default=EXACT_BELOW,
                            help=f"search exactly below this many vectors (default {EXACT_BELOW:,}); from there "
                                 "on an inverted file of k-means lists, probing enough of them for recall@10 >= 0.99")
        add_backend_options(parser)

    def plan(self, args: argparse.Namespace, beam_args: Sequence[str]) -> IndexPlan:
        check_search_extra()
        if (args.embeddings is None) == (args.vectors is None):
            raise ConfigError("give --embeddings (a kept run) or --vectors (files of vectors), one of them")
        if args.format != "parquet":
            raise ConfigError(f"an index is written as Parquet; --format {args.format} is for the jobs that label")
        if args.exact_below < 0:
            raise ConfigError(f"--exact_below must be at least 0, got {args.exact_below}")
        backend = checked_backend(args, beam_args)
        if args.embeddings is not None:
            stored = StoredVectors.of(args.embeddings, backend)
            sources, source_run = stored.shards, stored.manifest.run_id
            labels_run = labels_of(args.labels_from or args.embeddings, stored, args.labels_from is not None)
        else:
            if args.labels_from:
                raise ConfigError("--labels_from labels the images of --embeddings; --vectors carry no labels")
            sources, source_run, labels_run = vector_files(args.vectors), None, None
        dimension = checked_dimension(sources, backend.embedding_dim, args.vectors or args.embeddings)
        return IndexPlan(target=RunTarget.from_args(args), backend=backend, sources=tuple(sources),
                         source_run=source_run, labeled=labels_run[1] if labels_run else (),
                         labels_run=labels_run[0] if labels_run else None, dimension=dimension,
                         exact_below=args.exact_below, previous=previous_index(args.skip_existing, backend))

    def record(self, plan: IndexPlan) -> dict:
        return {"embeddings_run": plan.source_run, "skip_existing": plan.previous and plan.previous.manifest.run_id,
                "details": {"labels_run": plan.labels_run, "vector_files": len(plan.sources)}}

    def tables(self, pipeline: beam.Pipeline, plan: IndexPlan, run: runner.Run) -> runner.Outputs:
        folder = files.join(plan.target.output, run.id)
        new = (pipeline
               | "Sources" >> beam.Create(list(plan.sources))
               | "Spread" >> beam.Reshuffle()
               | "WriteRows" >> beam.ParDo(WriteRowsShards(
                   folder, plan.labeled, plan.dimension, [shard.path for shard in plan.previous.rows]
                   if plan.previous else ())))
        rows = new
        if plan.previous:
            kept = (pipeline
                    | "Kept" >> beam.Create(list(plan.previous.rows))
                    | "CopyKept" >> beam.Map(copy_shard, folder))
            rows = (new, kept) | "AllRows" >> beam.Flatten()
        make = MakeAnn(folder, plan.dimension, plan.exact_below, plan.previous)
        return runner.Outputs({}, shards={ROWS: rows}, derived={ANN: runner.Derived(ROWS, make)})

    def after(self, plan: IndexPlan, manifest: Manifest) -> None:
        facts = IndexFacts.of(finished_manifest(plan.target.output))  # `manifest` is the run as it started
        how = (f"searched exactly (under --exact_below {plan.exact_below:,})" if facts.kind == "exact" else
               f"{facts.lists:,} lists, {facts.probes} probed per query: recall@10 {facts.recall_at_10:.3f} against "
               f"exact search on {facts.recall_queries} of its vectors")
        grown = f"; {facts.added:,} added to the previous index" if plan.previous else ""
        print(f"index: {facts.vectors:,} vectors, {how}{grown}\nserve it: zero-shot-labels serve --index "
              f"{plan.target.output}")


class WriteRowsShards(beam.DoFn):
    """A file of vectors -> the Shards of its images as index rows, labeled from the labeling run's results (read
    once per worker)."""

    def __init__(self, folder: str, labeled: Sequence[str], dimension: int, kept: Sequence[str]):
        self.folder, self.labeled, self.dimension, self.kept = folder, list(labeled), dimension, list(kept)

    def setup(self):
        self._labels = read_labels(self.labeled) if self.labeled else None
        self._skip = indexed_uris(self.kept) if self.kept else None

    def process(self, source: str):
        yield from write_rows_shards(source, self.folder, self._labels, self.dimension, self._skip)


def copy_shard(kept: Shard, folder: str) -> Shard:
    """A rows shard of the previous index, copied into this run's folder under its own name."""
    destination = files.join(folder, kept.path.rsplit("/", 1)[-1])
    files.copy(kept.path, destination)
    return Shard(destination, kept.rows)


class MakeAnn:
    """Derived: the FAISS file over every rows shard; the previous index's shards first, in its order."""

    def __init__(self, folder: str, dimension: int, exact_below: int, previous: Optional[PreviousIndex]):
        self.folder, self.dimension, self.exact_below, self.previous = folder, dimension, exact_below, previous

    def __call__(self, shards: list[Shard]) -> tuple[Shard, Mapping]:
        use_worker_options()
        order = list(self.previous.facts.order) if self.previous else []
        rank = {name: i for i, name in enumerate(order)}
        shards = sorted(shards, key=lambda shard: (rank.get(shard.path.rsplit("/", 1)[-1], len(rank)), shard.path))
        previous = (self.previous.ann, self.previous.facts) if self.previous else None
        shard, facts = build_ann(shards, self.folder, self.dimension, self.exact_below, previous)
        return shard, facts.as_details()


def check_search_extra(*modules: str) -> None:
    """ConfigError naming the extra to install (the way this package was installed) when FAISS, or one of
    `modules`, is missing."""
    for module in ("faiss", *modules):
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{module} is missing: the index and its server need the `search` extra: "
                              f"{install_command('search')}")


def labels_of(folder: str, stored: StoredVectors, given: bool) -> Optional[tuple[str, tuple[str, ...]]]:
    """(run id, result shards) of the run whose labels the rows carry: the kept run itself, or a relabel run of its
    vectors (--labels_from); None for a kept run without results."""
    manifest = finished_run(folder, "--labels_from") if given else stored.manifest
    if manifest is None:
        raise ConfigError(f"--labels_from {folder!r} holds no finished run")
    if given and manifest.job not in ("classify", "relabel"):
        raise ConfigError(f"--labels_from: run {manifest.run_id} was made by `{manifest.job}`; give a classify or "
                          "relabel run of the --embeddings vectors")
    if given and manifest.run_id != stored.manifest.run_id and manifest.embeddings_run != stored.manifest.run_id:
        raise ConfigError(f"--labels_from: run {manifest.run_id} did not label the vectors of run "
                          f"{stored.manifest.run_id} (--embeddings); relabel them, then index with its run")
    if manifest.format != "parquet" and manifest.shards.get(RESULTS):
        raise ConfigError(f"the labels of run {manifest.run_id} are {manifest.format}; index a run written as "
                          "Parquet (--format parquet, the default)")
    shards = manifest_files(folder, manifest, RESULTS)
    return (manifest.run_id, tuple(shards)) if shards else None


def vector_files(pattern: str) -> list[str]:
    try:
        found = [path for path in files.glob(pattern) if path.endswith(".parquet")]
    except StoreError as e:
        raise ConfigError(f"cannot read --vectors {pattern!r}: {one_line(e)}") from None
    if not found:
        raise ConfigError(f"--vectors {pattern!r} matches no Parquet file")
    return found


def checked_dimension(sources: Sequence[str], dimension: int, given: str) -> int:
    """ConfigError unless every file of vectors holds vectors of the backend's length."""
    for path in sources:
        try:
            found = vector_dimension(path)
        except Exception as e:  # noqa: BLE001 - unreadable, not Parquet, no vectors: one line
            raise ConfigError(f"cannot read the vectors of {given!r}: {one_line(e)}") from None
        if found != dimension:
            raise ConfigError(f"{path} holds vectors of {found} numbers; the backend's have {dimension} (give the "
                              "--backend, and its settings, that made them)")
    return dimension


def finished_index(folder: str, flag: str, backend: Backend) -> tuple[Manifest, IndexFacts]:
    """The manifest and facts of the finished index `flag` names (--skip_existing, search's --index), made by the
    model of `backend` as configured; ConfigError otherwise."""
    manifest = finished_run(folder, flag)
    if manifest is None:
        raise ConfigError(f"{flag} {folder!r} holds no finished index (no _SUCCESS)")
    try:
        facts = IndexFacts.of(manifest)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{flag}: {e}") from None
    if differing_setting({"model": manifest.model}, {"model": backend.model_id}):
        raise ConfigError(f"{flag}: the index holds vectors of model {manifest.model!r}; backend {backend.name!r} "
                          f"as configured is {backend.model_id!r}")
    return manifest, facts


def previous_index(folder: Optional[str], backend: Backend) -> Optional[PreviousIndex]:
    """The finished index --skip_existing names, checked against the backend's model; None without the flag."""
    if not folder:
        return None
    manifest, facts = finished_index(folder, "--skip_existing", backend)
    rows, ann = index_files(folder, manifest, facts)
    return PreviousIndex(folder, manifest, facts, tuple(rows), ann)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return runner.main(Index(), argv)


if __name__ == "__main__":
    exit_job(main())
