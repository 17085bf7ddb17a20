"""Faults: what is a file's own (its error row) and what is the store's (retried within a budget, then the job stops).

A store that refuses connections, times out, throttles, answers 5xx or no longer accepts the job's credentials fails
every file alike: turning that into error rows would commit a run whose rows an outage made. Only a file's own
fault is its row: gone since it was listed, no permission on that object, too large, not a regular file, bytes that
do not decode (decode.py), an image the model refuses (embed.py).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable, Iterator, Optional, TypeVar

import apache_beam as beam
import fsspec
from apache_beam.utils import shared

from transforms.stores import is_local, store_retry_s

# Credentials refused for the whole store, not for one object: the store's fault, though a 403 like a denied object.
_CREDENTIAL_CODES = {"ExpiredToken", "InvalidAccessKeyId", "InvalidToken", "SignatureDoesNotMatch",
                     "TokenRefreshRequired", "AccountProblem", "AllAccessDisabled", "InvalidSecurity",
                     "RequestTimeTooSkewed", "ExpiredTokenException"}
# Exceptions of these libraries are the store's answers (botocore's EndpointConnectionError, gcsfs's HttpError...).
_STORE_CLIENTS = {"botocore", "aiobotocore", "boto3", "aiohttp", "s3fs", "gcsfs", "google", "requests", "urllib3"}
_LOG = logging.getLogger("zero_shot")
T = TypeVar("T")


class StoreError(RuntimeError):
    """The store stayed unreachable or refused the job past the retry budget: the job stops, committing nothing."""


class FileTooLargeError(ValueError):
    """The file is larger than the reader accepts; it would not be decoded safely anyway."""


class NotAFileError(OSError):
    """The path names a FIFO, a socket or a device, not a file with bytes to read."""


class FileChangedError(OSError):
    """The object changed while it was read, twice: its row says so; a rerun reads it again."""


def one_line(error: BaseException) -> str:
    """'ExceptionType: the first line of its message', for errors whose detail (a traceback, a filesystem's
    several-line advice) would break the one line a user reads."""
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def store_of(uri: str) -> str:
    """'s3://bucket' for an object's uri (the part the user can check), the uri itself otherwise."""
    protocol, _, path = uri.partition("://")
    return f"{protocol}://{path.split('/')[0]}" if path else uri


def _error_codes(error: BaseException) -> set[str]:
    """The store's error codes in an exception and its causes (s3fs keeps botocore's ClientError as the cause)."""
    codes = set()
    while error is not None:
        response = getattr(error, "response", None)
        if isinstance(response, dict):
            codes.add(str(response.get("Error", {}).get("Code", "")))
        error = error.__cause__ or error.__context__
    return codes


def is_file_fault(uri: str, error: BaseException) -> bool:
    """Whether `error`, raised reading `uri`, is that file's own fault rather than its store's. A local disk has no
    outage to wait out: its every error is the file's."""
    if is_local(uri):
        return True
    if isinstance(error, PermissionError):
        return not (_error_codes(error) & _CREDENTIAL_CODES)
    return isinstance(error, (FileNotFoundError, FileExistsError, IsADirectoryError, FileTooLargeError,
                              NotAFileError, FileChangedError))


def is_store_fault(uri: str, error: BaseException) -> bool:
    """Whether `error` is a fault of the store `uri` lives in: an OS or network error (refused, reset, timed out,
    a 5xx or throttling answer as s3fs translates it) or one of its client libraries' own, and not the file's."""
    client = type(error).__module__.split(".")[0] in _STORE_CLIENTS
    return (isinstance(error, OSError) or client) and not is_file_fault(uri, error)


def _is_changed(error: BaseException) -> bool:
    """An object rewritten between its listing (or its open) and its read: fsspec's FileExpired, a 412; not the 412
    of a create-if-absent (s3fs's FileExistsError), which is the answer the request asked for."""
    if isinstance(error, FileExistsError):
        return False
    return type(error).__name__ == "FileExpired" or "PreconditionFailed" in _error_codes(error)


_failing_since: dict[str, float] = {}  # store -> since when its requests have gone unanswered, in this process
_answered_at: dict[str, float] = {}  # store -> when it last answered a request, in this process
_lock = threading.Lock()


def reset_store_clocks() -> None:
    """Forgets this process's store failures: a job run in-process after one that ended in an outage starts its
    budget afresh instead of inheriting the old one's clock."""
    with _lock:
        _failing_since.clear()
        _answered_at.clear()


class _StoreClock:
    """One caller's view of its store's failures: the budget's clock is per store and shared by every request of
    the process, so an outage costs one budget, not one per remaining file."""

    def __init__(self, uri: str):
        self.store, self.wait = store_of(uri), 0.5

    def answered(self) -> None:
        with _lock:
            _failing_since.pop(self.store, None)
            _answered_at[self.store] = time.monotonic()

    def failed(self, error: Exception, asked: float) -> None:
        """Waits before the next try, or raises StoreError once the store has failed for --store_retry_s. A stalled
        store fails a request only when the client's timeouts (and its own retries) run out: the store has been
        failing since the request was made, or since it last answered, not since the timeout."""
        now = time.monotonic()
        with _lock:
            first = self.store not in _failing_since
            since = _failing_since.setdefault(self.store, max(asked, _answered_at.get(self.store, asked)))
        budget_s = store_retry_s()
        if now - since >= budget_s:
            raise StoreError(f"the store {self.store} failed for {now - since:.0f} s ({one_line(error)}); the job "
                             "stops and commits nothing (--store_retry_s sets how long to retry; a rerun "
                             "resumes)") from None
        if first:
            _LOG.warning("the store %s failed (%s); retrying for up to %.0f s", self.store, one_line(error),
                         since + budget_s - now)
        time.sleep(min(self.wait, max(0.0, since + budget_s - now)))
        self.wait = min(self.wait * 2, 10.0)


def with_retries(uri: str, request: Callable[[], T]) -> T:
    """`request()` (a request for `uri`), made again while its store fails, for at most --store_retry_s seconds of
    failing in this process (a success resets the clock), then StoreError naming the store, the cause and how long
    it tried. Anything else is raised at once; an object that changed while it was read is read once more, with
    fresh metadata, then FileChangedError."""
    clock, changed = _StoreClock(uri), False
    while True:
        asked = time.monotonic()
        try:
            result = request()
        except Exception as e:  # noqa: BLE001 - sorted below: the file's own fault goes back to the caller
            if _is_changed(e) and not changed:
                changed = True  # the listing's metadata was stale
                fs, path = fsspec.core.url_to_fs(uri)
                fs.invalidate_cache(path)
                continue
            if _is_changed(e):
                raise FileChangedError(f"the object changed while it was read, twice: {e}") from e
            if not is_store_fault(uri, e):
                raise  # the file's own fault, or a bug: not something waiting helps
            clock.failed(e, asked)
            continue
        clock.answered()
        return result


def stream_with_retries(uri: str, items_from: Callable[[int], Iterator[T]]) -> Iterator[T]:
    """The items `items_from(0)` yields, read from `uri` as a stream: when the store fails mid-stream, it is opened
    again as with_retries says and `items_from(n)` goes on after the n items already given, so a shard of a million
    rows is neither read twice nor held in memory."""
    clock, given = _StoreClock(uri), 0
    while True:
        asked = time.monotonic()
        try:
            for item in items_from(given):
                clock.answered()
                yield item
                given += 1
                asked = time.monotonic()
            return
        except Exception as e:  # noqa: BLE001 - sorted below, as with_retries does
            if not is_store_fault(uri, e):
                raise
            clock.failed(e, asked)


class TooManyErrorsError(RuntimeError):
    """More of the inputs failed than --max_error_fraction allows: the run is not committed."""


# The error fraction is watched while the job runs, and the job stops as soon as it is certain to end over the
# limit: when the error rows one worker has seen are more than the limit's share of all the job's inputs, whatever
# the rest do. Only a certain bound will do: the inputs do not come in random order (the DirectRunner hands them on
# in the listing's order), so the first few hundred of them say nothing sure of the rest: a folder of sidecar files
# that sorts first would look like a broken bucket.
def commonest(causes: Counter, n: int = 3) -> str:
    return ", ".join(f"{cause} ({count})" for cause, count in causes.most_common(n))


def over_error_budget(errors: int, inputs: int, limit: float, causes: Counter) -> Optional[TooManyErrorsError]:
    """The one check and the one message of --max_error_fraction, while the job runs (the errors one process has
    seen so far) and at its commit (all of them): the error to raise, or None while `errors` are within `limit` of
    `inputs`."""
    if errors <= limit * inputs:
        return None
    return TooManyErrorsError(
        f"{errors} of the job's {inputs} inputs failed, more than --max_error_fraction {limit:g} of them; "
        f"commonest: {commonest(causes)}. Nothing is committed and the images already embedded are kept: fix the "
        "cause, or raise --max_error_fraction, and run the same command again to continue")


class ErrorTally:
    """The error rows the workers of one process have seen for one job's classify step, and the check on them."""

    def __init__(self, limit: float):
        self.limit, self.errors, self.causes = limit, 0, Counter()
        self._lock = threading.Lock()

    def add_error(self, row: dict[str, str], inputs: int) -> None:
        """Counts one error row of a job with `inputs` inputs in all; TooManyErrorsError once the job is sure to end
        over the limit."""
        with self._lock:
            self.errors += 1
            self.causes[f"{row['stage']} {row['error']}"] += 1
            error = over_error_budget(self.errors, inputs, self.limit, self.causes)
        if error:
            raise error


class WatchErrors(beam.DoFn):
    """Error rows -> the same, passed on, each counted in one tally per process (Beam's `Shared`: the DoFn
    instances of one step share it, and it goes when they do) against the job's number of inputs (a side input),
    which stops the job once it is sure to end over the limit (TooManyErrorsError)."""

    def __init__(self, tally: shared.Shared, limit: float):
        self.shared_tally, self.limit = tally, limit

    def setup(self):
        self.tally = self.shared_tally.acquire(lambda: ErrorTally(self.limit))

    def process(self, row: dict[str, str], inputs: int):
        self.tally.add_error(row, inputs)
        yield row
