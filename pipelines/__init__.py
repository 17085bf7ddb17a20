"""The runnable jobs. They own their process, so they may settle two things about it before anything is imported.

Beam's optional ModelManager module (apache_beam/ml/inference/model_manager.py, used only with RunInference's
use_model_manager=True, which no job here sets) imports torch at the top, 1.8 s on 2 cores (and then scipy, whose
absence Beam catches). In its place goes a module whose ModelManager is None, the value Beam's own fallback gives
it, so a job whose image graph is cached starts without torch. (Marking the module absent instead made Beam's
fallback also drop the `resource` module it imports beside it: RunInference then logged "Resource module is not
available" twice per job and lost its memory metric.)

Python's cyclic garbage collector walks every object the process holds each time the heap has grown by a quarter:
while Beam, pyarrow and the models are imported and the pipeline is built, that is four walks over a growing heap
of modules and graph (0.26 s of a 300-image job, 2 cores), for a few dozen garbage objects. A job started as
`python -m pipelines.<job>` collects nothing until its pipeline is built; `jobs.run_job` then freezes what exists
(it lives to the end of the job) and turns collection back on for what the run creates.

Importing Beam without its optional GCP clients logs a warning through the root logger; a NullHandler there swallows
such import-time chatter, so that a configuration error stays the one line a user reads (a job's own logging is
set up by jobs.parse).

A job also writes everything it prints (errors, logs, tracebacks) through pipelines.redact, with the values of its
secret flags: a secret never reaches a terminal or a log file.

The library (transforms/) does none of this: it never changes a user's process.
"""
import gc
import logging
import sys
import types

logging.getLogger().addHandler(logging.NullHandler())

_NO_MODEL_MANAGER = types.ModuleType("apache_beam.ml.inference.model_manager",
                                     "Not loaded: no job sets RunInference's use_model_manager (see pipelines).")
_NO_MODEL_MANAGER.ModelManager = None
sys.modules.setdefault(_NO_MODEL_MANAGER.__name__, _NO_MODEL_MANAGER)

# Started as `python -m pipelines.<job>`: Python sets sys.argv[0] to "-m" while it locates the job's module, which
# imports this package first. Imported any other way (tests, a user's program), the collector is left alone.
STARTED_AS_JOB = sys.argv[:1] == ["-m"]
if STARTED_AS_JOB:
    gc.disable()
    from pipelines.redact import RedactingStream, secret_values

    sys.stdout = RedactingStream(sys.stdout, secret_values(sys.argv[1:]))
    sys.stderr = RedactingStream(sys.stderr, secret_values(sys.argv[1:]))
