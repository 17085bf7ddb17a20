"""The runnable jobs. They own their process, so they settle a few things about it before anything else is imported
(each is explained, with what it saves, in transforms/internals.py):

- Beam's optional ModelManager module, which imports torch, is replaced by Beam's own fallback value;
- import-time warnings through the root logger are swallowed (a job's own logging is set up by jobs.parse);
- started as `python -m pipelines.<job>`, the garbage collector is paused until the pipeline is built
  (jobs.run_job resumes it), and everything the job prints goes through pipelines.redact, with the values of its
  secret flags.

The library (transforms/) does none of this: it never changes a user's process.
"""
import sys

from transforms import internals

internals.quiet_import_time_logging()
internals.skip_beams_model_manager()
STARTED_AS_JOB = internals.started_as_job()
if STARTED_AS_JOB:
    internals.pause_garbage_collection()
    from pipelines.redact import RedactingStream, secret_values

    internals.redact_output(lambda stream: RedactingStream(stream, secret_values(sys.argv[1:])))
