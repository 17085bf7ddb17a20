"""Run folder: each job writes into its own folder under the output, and a `_SUCCESS` manifest written last names it.

    OUTPUT/_SUCCESS                                    JSON (manifest.py): job, run id, times, command, model, shards
    OUTPUT/run-20261125T160102.481516Z-3f9a1c/results-4c1e9a07d2b35f18.parquet
    OUTPUT/run-20261125T160102.481516Z-3f9a1c/errors-9b03e6d1a4c87f52.parquet

A reader goes through `_SUCCESS`, so it reads exactly one finished run or nothing: shards of a killed run and the
previous run (until the new one is committed) sit in folders no manifest names. That is also why the sinks write
each shard straight into the run folder, under its final name (write.py).
Committing is one write of `_SUCCESS`, so `--overwrite` switches readers from the old run to the new one at once and
only then deletes the old folder. Each manifest has a generation; a commit first claims the next one by creating
OUTPUT/_COMMIT-<generation> exclusively, so of two jobs that finish at once into one folder exactly one commits and
the other fails. Shards and the manifest go through transforms.files (fsspec; a store's outage is retried for
--store_retry_s, then ends the job); the claim is a hard link on a local disk and a conditional PUT (fsspec's "xb"
mode) on an object store.
"""
from __future__ import annotations

import dataclasses
import datetime
import itertools
import logging
import os
import uuid
from collections import Counter
from typing import Any, Optional

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq

from transforms import files
from transforms.faults import StoreError, one_line, over_error_budget, with_retries
from transforms.manifest import Manifest, ManifestError, NewerLayoutError
from transforms.records import ERRORS, RESULTS
from transforms.stores import is_local, use_worker_options
from transforms.write import Shard, read_rows

SUCCESS = "_SUCCESS"
RUN_PREFIX = "run-"
CLAIM_PREFIX = "_COMMIT-"
# Error rows read to name the commonest causes when a run has too many.
_CAUSES_SAMPLE = 10_000

_LOG = logging.getLogger("zero_shot")


class RunFolderError(ValueError):
    """A run folder that cannot be read as one finished run; the message says why in one line."""


class NoFinishedRun(RunFolderError):
    """The folder holds no `_SUCCESS`: no run finished there, or one is still being written."""


class DamagedRun(RunFolderError):
    """`_SUCCESS` is there but cannot be trusted: not a manifest, or it names a shard that is missing, outside its
    run folder, or holds another number of rows."""


class ConcurrentRunError(RuntimeError):
    """Another job committed, or is committing, a run into the same folder: this one's rows stay uncommitted."""


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    """run-<UTC time to the microsecond>-<random>: sorts by start time, unique across concurrent launchers."""
    return f"{RUN_PREFIX}{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:6]}"


def table_prefix(output: str, run_id: str, table: str) -> str:
    """The shard prefix of one table of one run: OUTPUT/RUN_ID/results, giving results-*.FORMAT."""
    return files.join(output, run_id, table)


def _damaged(output: str, why: str) -> DamagedRun:
    return DamagedRun(f"{files.join(output, SUCCESS)} is damaged ({why}); delete it and the {CLAIM_PREFIX}* files "
                      "beside it to start over (the next run that finishes there cleans up the run folders)")


def read_manifest(output: str) -> Optional[Manifest]:
    """The finished run's manifest under `output`, or None if there is none; DamagedRun if it is not a whole one,
    or one of a layout this version does not read."""
    try:
        data = files.read(files.join(output, SUCCESS))
    except (FileNotFoundError, NotADirectoryError):  # no run there; a file where the folder should be
        return None
    try:
        manifest = Manifest.from_json(data)
    except NewerLayoutError as e:  # not damaged: deleting it would lose a finished run
        raise RunFolderError(f"{files.join(output, SUCCESS)} has {e}") from None
    except ManifestError as e:
        raise _damaged(output, str(e)) from None
    shards = [shard.path for listed in manifest.shards.values() for shard in listed]
    if foreign := [path for path in shards if not path.startswith(f"{manifest.run_id}/") or ".." in path.split("/")]:
        raise _damaged(output, f"it names {foreign[0]!r}, outside its run folder {manifest.run_id}/")
    return manifest


def finished_manifest(output: str) -> Manifest:
    """The finished run's manifest under `output`; NoFinishedRun if there is none."""
    manifest = read_manifest(output)
    if manifest is None:
        raise NoFinishedRun(f"{output!r} holds no finished run (no {SUCCESS} in it)")
    return manifest


def _present_files(output: str, manifest: Manifest, table: str) -> list[str]:
    """manifest_files, after checking that each is there; DamagedRun if one is missing."""
    shards = manifest_files(output, manifest, table)
    if missing := [path for path in shards if not files.exists(path)]:
        raise _damaged(output, f"its shard {missing[0]!r} is missing")
    return shards


def _footer_rows(path: str) -> int:
    use_worker_options()
    with fsspec.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def check_shard(output: str, path: str, rows: int) -> None:
    """DamagedRun unless the Parquet shard `path` is there, whole (its footer reads) and holds `rows` rows: read
    from its footer alone, so a job can check every shard it will read before it starts."""
    try:
        found = with_retries(path, lambda: _footer_rows(path))
    except StoreError:
        raise
    except FileNotFoundError:
        raise _damaged(output, f"its shard {path!r} is missing") from None
    except Exception as e:  # noqa: BLE001 - cut short, overwritten: not a shard this run wrote
        raise _damaged(output, f"its shard {path!r} cannot be read ({one_line(e)})") from None
    if found != rows:
        raise _damaged(output, f"its shard {path!r} holds {found} rows, the manifest says {rows}")


def run_files(output: str, table: str = "results") -> list[str]:
    """The shard files of the finished run under `output` (`table`: results, errors or embeddings), as its manifest
    lists them; DamagedRun if one of them is missing."""
    return _present_files(output, finished_manifest(output), table)


def manifest_files(output: str, manifest: Manifest, table: str) -> list[str]:
    """The shard files of one table that `manifest`, read from folder `output`, lists (none: an empty list)."""
    return [files.join(output, shard.path) for shard in manifest.shards.get(table, ())]


def read_run(output: str, table: str = "results") -> list[dict[str, Any]]:
    """Every row of one table of the finished run under `output`, whatever its format.

    Args:
        output: the run's folder (a job's --output), local or any fsspec URL.
        table: results, errors, embeddings (with --keep_embeddings); search writes results, topics topics and
            images.

    Raises NoFinishedRun where no run finished there, DamagedRun where a shard is missing, cannot be read or holds
    another number of rows than the manifest says.
    """
    manifest = finished_manifest(output)
    rows: list[dict[str, Any]] = []
    for path, shard in zip(_present_files(output, manifest, table), manifest.shards.get(table, ())):
        before = len(rows)
        try:
            rows.extend(read_rows(path))
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - cut short, overwritten: not the shard this run wrote
            raise _damaged(output, f"its shard {path!r} cannot be read ({one_line(e)})") from None
        if len(rows) - before != shard.rows:
            raise _damaged(output, f"its shard {path!r} holds {len(rows) - before} rows, the manifest says "
                                   f"{shard.rows}")
    return rows


def _run_folders(output: str) -> list[str]:
    """The ids of the run folders under `output`, finished or not."""
    return [path.rstrip("/").rsplit("/", 1)[-1] for path in files.glob(files.join(output, f"{RUN_PREFIX}*"))]


def unfinished_runs(output: str) -> list[str]:
    """The ids of the run folders under `output` that its `_SUCCESS` does not name: runs that failed, were killed,
    or are still running."""
    finished = read_manifest(output)
    return sorted(run_id for run_id in _run_folders(output) if not finished or run_id != finished.run_id)


def remove_runs_before(output: str, run_id: str, replaced: Optional[str]) -> list[str]:
    """Deletes the folder of the `replaced` run and of runs that started before `run_id` (killed runs); never a
    later one, which may be a job still running. Returns the run ids removed."""
    removed = [old for old in sorted(_run_folders(output)) if old < run_id or old == replaced]
    files.delete([files.join(output, old) for old in removed])
    return removed


def _link_new(path: str, data: bytes) -> None:
    """Creates the local file `path` holding `data`, whole, only if it does not exist (FileExistsError): a hard link
    of a finished file, so a reader never sees the claim empty, as it could between an exclusive create and the
    write."""
    staging = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(staging, "wb") as f:
        f.write(data)
    try:
        os.link(staging, path)
    finally:
        os.unlink(staging)


def _put_new(path: str, data: bytes) -> None:
    with fsspec.open(path, "xb") as f:
        f.write(data)


def _claim(output: str, generation: int, run_id: str) -> None:
    """Creates OUTPUT/_COMMIT-<generation> holding `run_id`, only if no such file exists: the one step two
    committing jobs cannot both pass. Where fsspec has no exclusive create for the store (no driver installed, or
    none for "xb"), it is written after a look: best effort, as a store without it allows."""
    path = _claim_path(output, generation)
    use_worker_options()
    try:
        if is_local(output):
            _link_new(path.removeprefix("file://"), run_id.encode("utf-8"))
        else:  # a conditional PUT: created whole with its content, or refused
            with_retries(path, lambda: _put_new(path, run_id.encode("utf-8")))
        return
    except FileExistsError:
        pass
    except (ImportError, NotImplementedError, ValueError) as e:
        if not files.exists(path):
            _LOG.warning("no exclusive create on %s (%s): claiming commit %d without it", output,
                         type(e).__name__, generation)
            files.write(path, run_id.encode("utf-8"))
            return
    holder = files.read(path).decode("utf-8")
    if holder != run_id:  # else: this run's own commit, retried after it claimed
        raise _claimed(output, path, holder, f"this run stays uncommitted in {run_id}/")


def _claim_path(output: str, generation: int) -> str:
    return files.join(output, f"{CLAIM_PREFIX}{generation:08d}")


def _claimed(output: str, path: str, holder: str, outcome: str) -> ConcurrentRunError:
    return ConcurrentRunError(f"another job (run {holder}) is committing to {output!r}, or was killed while it did: "
                              f"{outcome}. If no job is running there, delete {path} and run again")


def check_next_claim(output: str, current: Optional[Manifest]) -> None:
    """ConcurrentRunError if the claim that the next commit to `output` takes (after the finished run `current`)
    is held already, by a job committing there now or one killed while it did: checked before a job starts, so
    that a stale claim costs no work."""
    path = _claim_path(output, (current.generation if current else 0) + 1)
    try:
        holder = files.read(path)
    except (FileNotFoundError, NotADirectoryError):  # no claim; a file where the folder should be (refused later)
        return
    raise _claimed(output, path, holder.decode("utf-8", "replace"), "this job does not start")


def check_error_fraction(output: str, manifest: Manifest) -> None:
    """Raises TooManyErrorsError when the error rows exceed the manifest's `max_error_fraction` of all inputs,
    naming the commonest causes."""
    limit = manifest.max_error_fraction
    errors, inputs = manifest.rows(ERRORS), manifest.rows(ERRORS) + manifest.rows(RESULTS)
    if limit is None or over_error_budget(errors, inputs, limit, Counter()) is None:
        return
    error_rows = (row for path in manifest_files(output, manifest, ERRORS) for row in read_rows(path))
    causes = Counter(f"{row['stage']} {row['error']}" for row in itertools.islice(error_rows, _CAUSES_SAMPLE))
    raise over_error_budget(errors, inputs, limit, causes)


def commit(output: str, manifest: Manifest, replaces: Optional[str], shards: dict[str, list[Shard]],
           measured: Optional[dict[str, Any]] = None) -> Manifest:
    """Writes `_SUCCESS` for the run whose shards are `shards` (table -> what its sink wrote), then removes older
    runs and the files of this run that no shard names (partial shards of bundles that failed and were retried).

    `replaces`: the run id that held the folder when the job started (None: none did); any other committed run
    means a second job wrote here meanwhile, and this one fails rather than hide it. `measured`: what the pipeline
    measured of its outputs, added to the manifest's details."""
    current = read_manifest(output)
    if current and current.run_id == manifest.run_id:
        return current  # a retried commit: the first attempt got through
    if (current and current.run_id) != replaces:
        raise ConcurrentRunError(f"another job committed run {current.run_id if current else None} to "
                                 f"{output!r} while this one ran; this run stays uncommitted in {manifest.run_id}/")
    start = len(output.rstrip("/")) + 1
    manifest = dataclasses.replace(manifest, details={**manifest.details, **(measured or {})}, shards={
        table: tuple(Shard(shard.path[start:], shard.rows) for shard in sorted(written))
        for table, written in shards.items()})
    check_error_fraction(output, manifest)
    if ERRORS in manifest.shards:
        inputs = manifest.rows(ERRORS) + manifest.rows(RESULTS)
        manifest = dataclasses.replace(manifest, error_fraction=manifest.rows(ERRORS) / max(1, inputs))
    manifest = dataclasses.replace(manifest, generation=(current.generation if current else 0) + 1)
    _claim(output, manifest.generation, manifest.run_id)
    manifest = dataclasses.replace(manifest, finished=utc_now())
    files.write(files.join(output, SUCCESS), manifest.to_json())
    stale = files.glob(files.join(output, f"{SUCCESS}.*.tmp"))
    stale += [path for path in files.glob(files.join(output, f"{CLAIM_PREFIX}*"))
              if path.rsplit("/", 1)[-1] < f"{CLAIM_PREFIX}{manifest.generation:08d}"]
    files.delete(stale)  # a manifest half-written by a commit that was killed; claims of earlier commits
    removed = remove_runs_before(output, manifest.run_id, replaces)
    if removed:
        _LOG.info("removed older run folders under %s: %s", output, ", ".join(removed))
    named = {shard.path.rsplit("/", 1)[-1] for listed in manifest.shards.values() for shard in listed}
    files.delete([path for path in files.glob(files.join(output, manifest.run_id, "*"))
                  if path.rsplit("/", 1)[-1] not in named])
    return manifest


class CommitRun(beam.PTransform):
    """{table: PCollection of the Shards its sink wrote} -> writes `_SUCCESS` once all are written.

    The shards arrive as side inputs, so the commit runs only after every sink has written all of its own, on any
    runner, whether or not the launcher waits for the job."""

    def __init__(self, output: str, manifest: Manifest, replaces: Optional[str],
                 measured: Optional[beam.PCollection] = None):
        """`measured`: (name, what was measured) pairs the manifest's details keep (Derived files' facts)."""
        super().__init__()
        self.output, self.manifest, self.replaces, self.measured = output, manifest, replaces, measured

    # `written` (table -> its written shards' PCollection) carries no annotation: Beam 2.78 reads one on expand's
    # input as a type hint and warns on every job that a dict is not one it can check.
    def expand(self, written):
        tables = sorted(written)

        def commit_all(_, measured, *shard_lists):
            return commit(self.output, self.manifest, self.replaces, dict(zip(tables, shard_lists)), measured)

        side_inputs = [beam.pvalue.AsDict(self.measured) if self.measured is not None else None]
        side_inputs += [beam.pvalue.AsList(written[table]) for table in tables]
        return (written[tables[0]].pipeline
                | "Once" >> beam.Impulse()
                | "WriteSuccess" >> beam.Map(commit_all, *side_inputs))
