"""Per-stage counters and timings as Beam metrics, progress lines for long runs, and the end-of-job summary."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator, Optional

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

NAMESPACE = "zero_shot"
STAGES = ("read", "decode", "embed", "rank")
LOG = logging.getLogger("zero_shot")


class StageMetrics:
    """Counts what a stage passed and failed, and how long its work took, under stable metric names."""

    def __init__(self, stage: str):
        self.stage = stage
        self.passed = Metrics.counter(NAMESPACE, f"{stage}_ok")
        self.failed = Metrics.counter(NAMESPACE, f"{stage}_errors")
        self.msec = Metrics.distribution(NAMESPACE, f"{stage}_msec")

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.msec.update(int((time.perf_counter() - start) * 1000))


class ProgressLog:
    """Logs how many images this worker has finished, at most every `every_s` seconds."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = every_s
        self.count = 0
        self.start = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            LOG.info("labeled %d images (%.1f images/s on this worker)", self.count, self.count / (now - self.start))


def _counter(result: PipelineResult, name: str) -> int:
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    return sum(c.committed or c.attempted or 0 for c in counters)


def _mean(result: PipelineResult, name: str) -> Optional[float]:
    dists = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["distributions"]
    total = sum((d.committed or d.attempted).sum for d in dists if (d.committed or d.attempted))
    count = sum((d.committed or d.attempted).count for d in dists if (d.committed or d.attempted))
    return total / count if count else None


def job_counts(result: PipelineResult) -> dict[str, int]:
    """Images labeled and errors per stage, from the runner's metrics."""
    counts = {"labeled": _counter(result, "rank_ok")}
    counts.update({f"{stage}_errors": _counter(result, f"{stage}_errors") for stage in ("read", "decode", "embed")})
    return counts


def summary(result: PipelineResult, seconds: float) -> str:
    """The lines printed at the end of a job: totals, throughput and mean time per stage call."""
    try:
        counts = job_counts(result)
    except Exception as e:  # noqa: BLE001 - some runners do not report metrics; the job itself succeeded
        return f"finished in {seconds:.1f} s (this runner reports no metrics: {type(e).__name__})"
    errors = sum(v for k, v in counts.items() if k.endswith("_errors"))
    by_stage = ", ".join(f"{k[:-7]} {v}" for k, v in counts.items() if k.endswith("_errors"))
    mean_ms = {stage: _mean(result, f"{stage}_msec") for stage in ("read", "decode", "rank")}
    # RunInference times each model call itself, in microseconds, under the handler's namespace.
    embed_us = _mean(result, "inference_batch_latency_micro_secs")
    mean_ms["embed"] = embed_us / 1000 if embed_us is not None else None
    timings = ", ".join(f"{stage} {mean_ms[stage]:.1f}" for stage in STAGES if mean_ms[stage] is not None)
    lines = [
        f"labeled {counts['labeled']} images, {errors} errors ({by_stage}) in {seconds:.1f} s: "
        f"{counts['labeled'] / seconds:.2f} images/s",
        f"mean ms per call: {timings} (embed and rank per batch)",
    ]
    if backend_counters := _backend_counters(result):
        lines.append("backend: " + ", ".join(f"{name} {value}" for name, value in sorted(backend_counters.items())))
    return "\n".join(lines)


def _backend_counters(result: PipelineResult) -> dict[str, int]:
    """Counters a remote backend keeps (calls, inputs sent, usage the API reported), e.g. nomic_image_calls."""
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    totals: dict[str, int] = {}
    for counter in counters:
        if counter.key.metric.name.startswith("nomic_"):
            name = counter.key.metric.name
            totals[name] = totals.get(name, 0) + (counter.committed or counter.attempted or 0)
    return totals
