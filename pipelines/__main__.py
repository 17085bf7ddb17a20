"""zero-shot-labels JOB [options]: each job as one command on PATH, with the options of `python -m pipelines.MODULE`."""
from __future__ import annotations

import difflib
import importlib
import sys
from typing import NoReturn, Optional, Sequence

from pipelines import COMMAND, JOBS
from pipelines.cli import exit_job


def usage() -> str:
    jobs = "\n".join(f"  {job:<9} {summary}" for job, (_, summary) in JOBS.items())
    return (f"usage: {COMMAND} JOB [options]   ({COMMAND} JOB --help: the job's options)\n\njobs:\n{jobs}\n\n"
            f"Each is also `python -m pipelines.MODULE`: {', '.join(module for module, _ in JOBS.values())}.")


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        exit_job(0 if argv else 2)
    if argv[0] not in JOBS:
        close = difflib.get_close_matches(argv[0], list(JOBS), n=1)
        print(f"error: unknown job {argv[0]!r}{f' (did you mean {close[0]}?)' if close else ''}; jobs: "
              f"{', '.join(JOBS)} (see {COMMAND} --help)", file=sys.stderr)
        exit_job(2)
    exit_job(importlib.import_module(f"pipelines.{JOBS[argv[0]][0]}").main(argv[1:]))


if __name__ == "__main__":
    main()
