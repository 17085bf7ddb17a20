"""Object stores: the job's own options (Beam's --s3_* flags, --project) given to fsspec too, so that listing and
reading inputs, label files, thumbnails and the commit's claim reach the store Beam's sinks write to."""
from __future__ import annotations

import importlib.util
from typing import Any, Optional

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, S3Options

from transforms import internals

_applied: Optional[PipelineOptions] = None  # the options last given to fsspec in this process
DEFAULT_STORE_RETRY_S = 60.0  # with the store client's own retries of the last attempt (s3fs: about 20 s), an
# outage ends the job within 2 minutes
_retry_s = DEFAULT_STORE_RETRY_S  # this process's --store_retry_s


class StoreOptions(PipelineOptions):
    """--store_retry_s, a pipeline option so that every worker has it: how long a failing store is retried."""

    @classmethod
    def _add_argparse_args(cls, parser):  # Beam's hook for declaring options
        parser.add_argument("--store_retry_s", type=float, default=DEFAULT_STORE_RETRY_S,
                            help="how long a store that fails (unreachable, timing out, throttling, refusing the "
                                 "credentials) is retried before the job stops, committing nothing (default "
                                 f"{DEFAULT_STORE_RETRY_S:g} s)")


def store_retry_s() -> float:
    """This process's --store_retry_s (the job's, once use_job_options has seen its options)."""
    return _retry_s


def request_timeout_s(retry_s: float) -> float:
    """How long one request waits to connect, or for the store's next bytes: a 12th of the retry budget (5 s by
    default), between 2 s and s3fs's own 15 s."""
    return min(15.0, max(2.0, retry_s / 12))


def is_local(uri: str) -> bool:
    """Whether `uri` names this machine's disk (a plain path or file://) rather than an object in a store."""
    return "://" not in uri or uri.startswith("file://")


def fsspec_settings(options: PipelineOptions) -> dict[str, dict[str, Any]]:
    """protocol -> the fsspec filesystem arguments that the job's Beam options mean (s3fs, gcsfs)."""
    s3 = options.view_as(S3Options)
    s3fs: dict[str, Any] = {}
    for beam_name, fsspec_name in (("s3_access_key_id", "key"), ("s3_secret_access_key", "secret"),
                                   ("s3_session_token", "token"), ("s3_endpoint_url", "endpoint_url")):
        if getattr(s3, beam_name):
            s3fs[fsspec_name] = getattr(s3, beam_name)
    # A store that stops answering (a frozen connection, a paused server) fails a request only when a timeout runs
    # out, and the store clients try each request several times: botocore's 5 attempts of 60 s inside s3fs's
    # nested 5 x 5 held one read for over 20 minutes. faults.with_retries is the retry loop that knows the budget,
    # so botocore tries once and s3fs twice (internals.bound_s3fs_retries): one request waits at most 4
    # request_timeout_s, a third of --store_retry_s.
    timeout = request_timeout_s(options.view_as(StoreOptions).store_retry_s)
    s3fs["config_kwargs"] = {"connect_timeout": timeout, "read_timeout": timeout,
                             "retries": {"total_max_attempts": 1}}
    client = {name: value for name, value in (("region_name", s3.s3_region_name),
                                               ("verify", s3.s3_verify), ("use_ssl", False if s3.s3_disable_ssl
                                                                                    else None))
              if value is not None}
    if client:
        s3fs["client_kwargs"] = client
    gcp = options.view_as(GoogleCloudOptions)
    gcsfs = {"project": gcp.project} if gcp.project else {}
    if gcp.no_auth:  # Beam's --no_auth: anonymous access (public buckets, emulators)
        gcsfs["token"] = "anon"
    if importlib.util.find_spec("gcsfs"):  # gcsfs, through aiohttp, waits forever for a request by default
        import aiohttp

        gcsfs["requests_timeout"] = aiohttp.ClientTimeout(sock_connect=timeout, sock_read=timeout)
    return {"s3": s3fs, "gs": gcsfs}


def use_job_options(options: Optional[PipelineOptions]) -> None:
    """Gives Beam's FileSystems and fsspec the job's store settings, in this process (the launcher; a worker)."""
    global _applied, _retry_s
    if options is None or options is _applied:  # held, so never another object at the same address
        return
    FileSystems.set_options(options)
    _retry_s = options.view_as(StoreOptions).store_retry_s
    internals.set_fsspec_defaults(fsspec_settings(options))
    internals.bound_s3fs_retries()
    _applied = options


def use_worker_options() -> None:
    """use_job_options with the options Beam gave this worker (it sets them for its own FileSystems on every
    worker, and in Pipeline() on the launcher): called where a stage first touches fsspec."""
    use_job_options(internals.worker_pipeline_options())
