"""Test-only, never installed: Python imports this at the start of every process that has tests/inject on its
PYTHONPATH, Beam's worker processes included. With ZERO_SHOT_TEST_COMMIT_GATE=PATH, a job's commit step waits,
after every shard is final and before `_SUCCESS` is written, until PATH exists: a test can then kill the job in
that window, or let a second job commit first."""
import os

GATE = os.environ.get("ZERO_SHOT_TEST_COMMIT_GATE")
if GATE:
    import time

    from transforms import run_folder

    _commit = run_folder.commit

    def _gated_commit(*args, **kwargs):
        while not os.path.exists(GATE):
            time.sleep(0.05)
        return _commit(*args, **kwargs)

    run_folder.commit = _gated_commit
