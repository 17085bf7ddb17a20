"""The runnable jobs: `zero-shot-labels JOB ...` (pipelines/__main__.py) or `python -m pipelines.MODULE ...`.

They own their process, so they settle a few things about it before anything else is imported (each is explained,
with what it saves, in transforms/internals.py):

- Beam's optional ModelManager module, which imports torch, is replaced by Beam's own fallback value;
- import-time warnings through the root logger are swallowed (a job's own logging is set up by the runner:
  internals.job_logging);
- started as a job, Google's clients' notices about their own support plans (FutureWarning) are left out;
- started as a job, the garbage collector is paused until the pipeline is built
  (runner.run_pipeline resumes it), and everything the job prints goes through pipelines.redact, with the values of its
  secret flags;
- started as a job, Ctrl-C and SIGTERM while it is checked (embedding --examples may take a minute) end it with one
  line, as they do once it runs (the runner says what that run kept).

The library (transforms/) does none of this: it never changes a user's process.
"""
import os
import signal
import sys

from transforms import internals

COMMAND = "zero-shot-labels"
JOBS = {  # the command's job -> (its module, what it does)
    "classify": ("classify_images", "label every image an input pattern matches with your label set"),
    "relabel": ("relabel", "label the vectors a classify run kept (--keep_embeddings) with another label set, "
                           "reading no image"),
    "search": ("search", "find the images of a kept run that best match text queries"),
    "index": ("index", "build a vector index of a kept run (or of vectors you bring) to search as you type"),
    "serve": ("serve", "answer searches of an index over HTTP, with a search page"),
    "topics": ("topics", "group the images of a kept run into named topics, and suggest a label set"),
    "report": ("report", "render a finished run as one HTML page"),
    "evaluate": ("evaluate", "score the labels on images whose labels are known"),
}


def prog(module: str) -> str:
    """How a user started the job of pipelines/<module>.py, for its usage line and manifest."""
    if os.path.basename(sys.argv[0] if sys.argv else "") == COMMAND:
        return f"{COMMAND} {next(job for job, (name, _) in JOBS.items() if name == module)}"
    return f"python -m pipelines.{module}"


internals.quiet_import_time_logging()
internals.skip_beams_model_manager()
STARTED_AS_JOB = internals.started_as_job(COMMAND)
if STARTED_AS_JOB:
    internals.quiet_google_client_notices()
    internals.pause_garbage_collection()
    from pipelines.redact import RedactingStream, secret_values

    internals.redact_output(lambda stream: RedactingStream(stream, secret_values(sys.argv[1:])))

    def _stopped_before_the_run(signum: int, _frame) -> None:
        print(f"error: stopped by {signal.Signals(signum).name} before the job ran: nothing was committed; run the "
              "same command again", file=sys.stderr)
        internals.end_process_now(128 + signum)

    signal.signal(signal.SIGTERM, _stopped_before_the_run)
    signal.signal(signal.SIGINT, _stopped_before_the_run)
