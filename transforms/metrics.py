"""Worker-side accounting: per-stage counters and timings as Beam metrics, and progress lines for long runs."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator, Optional

from apache_beam.metrics import Metrics

NAMESPACE = "zero_shot"
# Counters a backend keeps about itself (calls, inputs sent, usage an API reports); the report lists them all.
BACKEND_NAMESPACE = "zero_shot_backend"
STAGES = ("read", "decode", "embed", "rank")
LOG = logging.getLogger("zero_shot")


def ok_metric(stage: str) -> str:
    return f"{stage}_ok"


def errors_metric(stage: str) -> str:
    return f"{stage}_errors"


def msec_metric(stage: str) -> str:
    return f"{stage}_msec"


class StageMetrics:
    """Counts what a stage passed and failed, and how long its work took, under stable metric names."""

    def __init__(self, stage: str):
        self.stage = stage
        self.passed = Metrics.counter(NAMESPACE, ok_metric(stage))
        self.failed = Metrics.counter(NAMESPACE, errors_metric(stage))
        self.msec = Metrics.distribution(NAMESPACE, msec_metric(stage))

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.msec.update(int((time.perf_counter() - start) * 1000))


class ProgressLog:
    """Logs how many images this worker has labeled (or embedded: `verb`), of how many inputs the job has, its rate
    and the time left at that rate, at most every `every_s` seconds (on a one-worker local run: the whole job's
    progress)."""

    def __init__(self, every_s: float = 5.0, verb: str = "labeled"):
        self.every_s = every_s
        self.verb = verb
        self.count = 0
        self.start = self.last = time.monotonic()

    def add(self, n: int, total: Optional[int] = None) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.count / (now - self.start)
            if total:
                left = max(total - self.count, 0) / rate if rate else float("inf")
                LOG.info("%s %d of %d inputs (%.1f images/s on this worker, about %s left)", self.verb, self.count,
                         total, rate, _duration(left))
            else:
                LOG.info("%s %d images (%.1f images/s on this worker)", self.verb, self.count, rate)


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown time"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
