"""Run folder: each job writes into its own folder under the output, and a `_SUCCESS` manifest written last names it.

    OUTPUT/_SUCCESS                                    JSON: run id, times, command, model, label set, shards
    OUTPUT/run-20261125T160102.481516Z-3f9a1c/results-00000-of-00002.parquet
    OUTPUT/run-20261125T160102.481516Z-3f9a1c/errors-00000-of-00001.parquet

A reader goes through `_SUCCESS`, so it reads exactly one finished run or nothing: shards of a killed run, Beam's
`beam-temp-*` folders and the previous run (until the new one is committed) sit in folders no manifest names.
Committing is one write of `_SUCCESS`, so `--overwrite` switches readers from the old run to the new one at once and
only then deletes the old folder. Everything goes through Beam's FileSystems, the layer the sinks write with.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import time
import uuid
from typing import Any, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.write import count_rows, read_rows

SUCCESS = "_SUCCESS"
RUN_PREFIX = "run-"
MANIFEST_VERSION = 1
# Test hook: seconds the commit step waits after every shard is final and before `_SUCCESS` is written, so a test
# can kill a job inside that window.
PAUSE_BEFORE_COMMIT_ENV = "ZERO_SHOT_TEST_PAUSE_BEFORE_COMMIT"

_LOG = logging.getLogger("zero_shot")


class NoFinishedRun(ValueError):
    """The folder holds no `_SUCCESS`: no run finished there, or one is still being written."""


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_run_id() -> str:
    """run-<UTC time to the microsecond>-<random>: sorts by start time, unique across concurrent launchers."""
    return f"{RUN_PREFIX}{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:6]}"


def _join(output: str, *names: str) -> str:
    return "/".join([output.rstrip("/"), *names])


def table_prefix(output: str, run_id: str, table: str) -> str:
    """The shard prefix of one table of one run: OUTPUT/RUN_ID/results, giving results-SSSSS-of-NNNNN.FORMAT."""
    return _join(output, run_id, table)


def read_manifest(output: str) -> Optional[dict[str, Any]]:
    """The finished run's manifest under `output`, or None if there is none."""
    path = _join(output, SUCCESS)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return json.loads(f.read().decode("utf-8"))


def run_files(output: str, table: str = "results") -> list[str]:
    """The shard files of the finished run under `output` (`table`: results, errors or embeddings), as its manifest
    lists them."""
    manifest = read_manifest(output)
    if manifest is None:
        raise NoFinishedRun(f"{output!r} holds no finished run (no {SUCCESS} in it)")
    return manifest_files(output, manifest, table)


def manifest_files(output: str, manifest: dict[str, Any], table: str) -> list[str]:
    """The shard files of one table that `manifest`, read from folder `output`, lists (none: an empty list)."""
    return [_join(output, shard["path"]) for shard in manifest.get(table, [])]


def read_run(output: str, table: str = "results") -> list[dict[str, Any]]:
    """Every row of one table of the finished run under `output`, whatever its format."""
    return [row for path in run_files(output, table) for row in read_rows(path)]


def _run_folders(output: str) -> dict[str, list[str]]:
    """run id -> the files under OUTPUT/run-*/: on object stores the files are all there is; a local folder may also
    hold run folders with no file left in them."""
    found: dict[str, list[str]] = {}
    for metadata in FileSystems.match([_join(output, f"{RUN_PREFIX}*", "**")])[0].metadata_list:
        run_id = metadata.path[len(output.rstrip("/")) + 1:].split("/")[0]
        found.setdefault(run_id, []).append(metadata.path)
    if "://" not in output and os.path.isdir(output):  # a local folder can outlive its files (a killed run's temp)
        for name in os.listdir(output):
            if name.startswith(RUN_PREFIX):
                found.setdefault(name, [])
    return found


def remove_runs_before(output: str, run_id: str, replaced: Optional[str]) -> list[str]:
    """Deletes the folder of the `replaced` run and of runs that started before `run_id` (killed runs); never a
    later one, which may be a job still running. Returns the run ids removed."""
    removed = []
    for old, files in sorted(_run_folders(output).items()):
        if old < run_id or old == replaced:
            if files:
                FileSystems.delete(files)
            if FileSystems.exists(_join(output, old)):  # a local folder outlives its files
                FileSystems.delete([_join(output, old)])
            removed.append(old)
    return removed


def _write_atomically(path: str, data: bytes) -> None:
    # Written beside, then renamed over the old one: a reader sees the old manifest or the new one, never half of
    # one and never none (a local rename replaces atomically; an object store's copy replaces the object whole).
    staging = f"{path}.{uuid.uuid4().hex}.tmp"
    handle = FileSystems.create(staging)
    handle.write(data)
    handle.close()
    FileSystems.rename([staging], [path])


def commit(output: str, manifest: dict[str, Any], replaces: Optional[str],
           shards: dict[str, list[str]]) -> dict[str, Any]:
    """Writes `_SUCCESS` for the run whose final shards are `shards` (table -> files), then removes older runs.

    `replaces`: the run id that held the folder when the job started (None: none did); any other committed run
    means a second job wrote here meanwhile, and this one fails rather than hide it."""
    pause = float(os.environ.get(PAUSE_BEFORE_COMMIT_ENV, "0") or 0)
    if pause:
        _LOG.warning("test hook: waiting %.0f s before committing %s", pause, manifest["run_id"])
        time.sleep(pause)
    current = read_manifest(output)
    if current and current["run_id"] == manifest["run_id"]:
        return current  # a retried commit: the first attempt got through
    if (current and current["run_id"]) != replaces:
        raise RuntimeError(f"another job committed run {current['run_id'] if current else None} to {output!r} "
                           f"while this one ran; this run stays uncommitted in {manifest['run_id']}/")
    start = len(output.rstrip("/")) + 1
    manifest = dict(manifest, finished=utc_now(), tables=list(shards), **{
        table: [{"path": path[start:], "rows": count_rows(path)} for path in sorted(files)]
        for table, files in shards.items()})
    _write_atomically(_join(output, SUCCESS), json.dumps(manifest, indent=2).encode("utf-8"))
    if stale := [m.path for m in FileSystems.match([_join(output, f"{SUCCESS}.*.tmp")])[0].metadata_list]:
        FileSystems.delete(stale)  # a manifest half-written by a commit that was killed
    removed = remove_runs_before(output, manifest["run_id"], replaces)
    if removed:
        _LOG.info("removed older run folders under %s: %s", output, ", ".join(removed))
    return manifest


class CommitRun(beam.PTransform):
    """{table: PCollection of the final shard names its sink returned} -> writes `_SUCCESS` once all are final.

    The shard names arrive as side inputs, so the commit runs only after every sink has finalized, on any runner,
    whether or not the launcher waits for the job."""

    def __init__(self, output: str, manifest: dict[str, Any], replaces: Optional[str]):
        super().__init__()
        self.output, self.manifest, self.replaces = output, manifest, replaces

    def expand(self, written: dict[str, Any]):
        tables = sorted(written)

        def commit_all(_, *shard_lists):
            return commit(self.output, self.manifest, self.replaces, dict(zip(tables, shard_lists)))

        side_inputs = [beam.pvalue.AsList(written[table]) for table in tables]
        return (written[tables[0]].pipeline
                | "Once" >> beam.Create([None])
                | "WriteSuccess" >> beam.Map(commit_all, *side_inputs))
