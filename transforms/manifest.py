"""Manifest: what `_SUCCESS` says about a finished run (and `_STARTED` about one that began), typed and versioned.

Every reader of a run (the commit, --skip_existing, resume, stored vectors, relabel, search, topics, the report,
read_run) goes through `Manifest.from_json`, so the layout is read in one place: an older layout is read by a named
migration, a newer one is refused with one line naming the version.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import json
import typing
from typing import Any, Mapping, Optional, Sequence

from transforms.faults import one_line
from transforms.write import Shard

LAYOUT = 4
# 1: 0.1.0; 2: a generation per commit, and the error fraction; 3: `embeddings_run` names the run whose vectors a
# job read (relabel stored it as `embeddings`, the name of a table); 4: typed: `job`, and one `shards` map.
# How layouts 1-3 named the job: only by the module in the first word of the command.
_JOB_OF_MODULE = {"pipelines.classify_images": "classify", "pipelines.relabel": "relabel",
                  "pipelines.search": "search", "pipelines.topics": "topics"}


# All an image's vector depends on (the model id names the backend's image settings): the vectors an unfinished run
# saved are reused under other labels, templates, examples or decision options, and ranked again.
VECTOR_SETTINGS = ("backend", "model")


def differing_setting(before: Mapping[str, Any], now: Mapping[str, Any],
                      names: Optional[Sequence[str]] = None) -> Optional[str]:
    """The first of `names` (default: every setting in `now`) whose value in a run's settings `before` is not the
    one in `now`, or None: the one comparison of settings behind resume, --skip_existing and the model check of
    relabel, search and topics."""
    return next((name for name in (names or now) if before.get(name) != now.get(name)), None)


class ManifestError(ValueError):
    """JSON that is not a manifest; the message says why in a few words."""


class NewerLayoutError(ManifestError):
    """A manifest of a layout newer than this version reads: written by a later zero-shot-labels."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """One run: which job made it with what, and, once committed, its shards per table."""

    job: str  # classify, relabel, search or topics (evaluate runs classify)
    run_id: str  # also the name of the run's folder under the output
    started: str  # UTC, ISO 8601
    command: tuple[str, ...]  # the command line, secrets redacted
    format: str  # of the shards: parquet, csv or jsonl
    model: str  # the backend's model id: vectors of two runs compare only when equal
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # everything a result row depends on
    input: Optional[str] = None  # classify: the --input pattern
    labels: Optional[str] = None  # classify, relabel: --labels as given
    embeddings_run: Optional[str] = None  # relabel, search, topics: the run whose vectors were read
    embeddings_dtype: Optional[str] = None  # classify --keep_embeddings: float32 or float16
    skip_existing: Optional[str] = None  # classify: the run whose rows were kept
    max_error_fraction: Optional[float] = None
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # for people: search's queries, topics' seed
    shards: Mapping[str, tuple[Shard, ...]] = dataclasses.field(default_factory=dict)  # paths relative to the output
    generation: int = 0  # of the commit; 0 until committed
    finished: Optional[str] = None
    error_fraction: Optional[float] = None
    version: int = LAYOUT

    def rows(self, table: str) -> int:
        """The rows of one table (0 for a table the run does not have)."""
        return sum(shard.rows for shard in self.shards.get(table, ()))

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        data["shards"] = {table: [shard._asdict() for shard in listed] for table, listed in self.shards.items()}
        return json.dumps(data, indent=2).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Manifest":
        """The manifest `data` holds, of any layout up to LAYOUT; ManifestError otherwise (NewerLayoutError for a
        later layout, however its number is written)."""
        try:
            fields = json.loads(data.decode("utf-8"))
            version = _layout_number(fields.get("version", 1))
        except (ValueError, AttributeError) as e:
            raise ManifestError(f"not a manifest: {type(e).__name__}") from None
        if version is not None and version > LAYOUT:
            raise NewerLayoutError(f"manifest layout {version}, newer than the layouts 1-{LAYOUT} this version of "
                                   "zero-shot-labels reads: upgrade it to read or replace this run")
        if version not in range(1, LAYOUT + 1):
            raise ManifestError(f"not a manifest: layout {fields.get('version')!r}")
        fields = dict(fields, version=version)
        if version < LAYOUT:
            fields = migrated_from_layout_3(fields)
        try:
            shards = {table: tuple(Shard(str(shard["path"]), shard["rows"]) for shard in listed)
                      for table, listed in fields.pop("shards").items()}
            fields = dict(fields, shards=shards)
            if wrong := next((name for name, value in fields.items() if not _is_a(value, _FIELD_TYPES[name])), None):
                raise TypeError(f"{wrong} is {type(fields[wrong]).__name__}, not {_FIELD_TYPES[wrong]}")
            manifest = cls(**dict(fields, command=tuple(fields["command"])))
        except (KeyError, TypeError, AttributeError) as e:
            raise ManifestError(f"not a manifest: {one_line(e)}") from None
        if not manifest.job.strip() or not all(isinstance(shard.rows, int) for listed in shards.values()
                                                for shard in listed):
            raise ManifestError(f"not a manifest: job {manifest.job!r}, or a shard's row count is not a number")
        return manifest


def _layout_number(version: Any) -> Optional[int]:
    """The layout a manifest's `version` names: 4, 4.0 and "4" alike (a hand edit, another writer); None if it is
    no whole number."""
    if isinstance(version, bool):
        return None
    if isinstance(version, str) and version.strip().isdigit():
        return int(version)
    if isinstance(version, (int, float)) and float(version).is_integer():
        return int(version)
    return None


_FIELD_TYPES = typing.get_type_hints(Manifest)


def _is_a(value: Any, hint: Any) -> bool:
    """Whether a field read from JSON is of its declared type, as far as JSON can say (lists for tuples)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_is_a(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin in (tuple, collections.abc.Mapping, dict):
        return isinstance(value, dict if origin is not tuple else (list, tuple))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint) and not (hint is int and isinstance(value, bool))


def migrated_from_layout_3(fields: dict[str, Any]) -> dict[str, Any]:
    """Layouts 1-3 (0.1.x) as layout 4: the job from the command's module, each table's shards from the top-level
    key named after it, the run relabel read from `embeddings` where it was a string, and what only people read
    under `details`."""
    fields = dict(fields)
    tables = fields.pop("tables", [])
    shards = {table: fields.pop(table) for table in tables}
    if isinstance(fields.get("embeddings"), str):  # layout 2's relabel: the run it read, not a table
        fields["embeddings_run"] = fields.pop("embeddings")
    module = str(fields.get("command", [""])[0]).rsplit(" ", 1)[-1]
    known = {field.name for field in dataclasses.fields(Manifest)}
    details = {name: fields.pop(name) for name in list(fields) if name not in known}
    return dict(fields, job=_JOB_OF_MODULE.get(module, module), shards=shards, details=details, version=LAYOUT)
