"""The end-of-job report: what the runner's metrics say about a finished job, as the lines the CLI prints."""
from __future__ import annotations

from typing import Optional

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from transforms.dedupe import COPIES_METRIC, RESUMED_METRIC, copied_metric
from transforms.metrics import BACKEND_NAMESPACE, NAMESPACE, STAGES, errors_metric, msec_metric, ok_metric
from transforms.records import RESULTS
from transforms.skip import CARRIED_METRIC

# Stages that can send an image to the errors output: every stage before the last, which only ranks vectors.
ERROR_STAGES = STAGES[:-1]


def plural(count: int, noun: str) -> str:
    """"1 image", "7 images", "0 images": a count and its noun, as a person writes them (every noun here takes -s)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _value(metric):
    return metric.committed if metric.committed is not None else metric.attempted


def _counter(result: PipelineResult, name: str) -> int:
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    return sum(_value(c) or 0 for c in counters)


def _mean(result: PipelineResult, name: str) -> Optional[float]:
    dists = [_value(d) for d in result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE).with_name(name))["distributions"]]
    total, count = sum(d.sum for d in dists if d), sum(d.count for d in dists if d)
    return total / count if count else None


def job_counts(result: PipelineResult) -> dict[str, int]:
    """Files labeled (the last stage's passes, and their copies), rows kept from a previous run, files with the
    bytes of another, and errors of every stage that can fail an image (copies included): one count per row."""
    return {"labeled": _counter(result, ok_metric(STAGES[-1])) + _counter(result, copied_metric(RESULTS)),
            "kept": _counter(result, CARRIED_METRIC), "copies": _counter(result, COPIES_METRIC),
            "resumed": _counter(result, RESUMED_METRIC),
            **{stage: _counter(result, errors_metric(stage)) + _counter(result, copied_metric(errors_metric(stage)))
               for stage in ERROR_STAGES}}


def backend_counters(result: PipelineResult) -> dict[str, int]:
    """Whatever the backend counted about itself, e.g. nomic_image_calls, summed over workers."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(BACKEND_NAMESPACE))["counters"]:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (_value(counter) or 0)
    return totals


def summary(result: PipelineResult, seconds: float) -> str:
    """The lines printed at the end of a job: totals, throughput and mean time per stage call."""
    try:
        counts = job_counts(result)
    except Exception as e:  # noqa: BLE001 - some runners do not report metrics; the job itself succeeded
        return f"finished in {seconds:.1f} s (this runner reports no metrics: {type(e).__name__})"
    errors = sum(counts[stage] for stage in ERROR_STAGES)
    if not counts["labeled"] and not errors and not counts["kept"]:  # a job that labels nothing, e.g. a search
        return f"finished in {seconds:.1f} s"
    by_stage = ", ".join(f"{stage} {counts[stage]}" for stage in ERROR_STAGES)
    mean_ms = {stage: _mean(result, msec_metric(stage)) for stage in STAGES}
    # RunInference times each model call itself, in microseconds, under the handler's namespace.
    embed_us = _mean(result, "inference_batch_latency_micro_secs")
    mean_ms["embed"] = embed_us / 1000 if embed_us is not None else None
    timings = ", ".join(f"{stage} {mean_ms[stage]:.1f}" for stage in STAGES if mean_ms[stage] is not None)
    inputs = counts["labeled"] + counts["kept"] + errors
    lines = [
        f"labeled {plural(counts['labeled'], 'image')}, {plural(errors, 'error')} ({errors / inputs:.1%} of inputs; "
        f"{by_stage}) in "
        f"{seconds:.1f} s: "
        f"{counts['labeled'] / seconds:.2f} images/s",
        f"mean ms per call: {timings} (embed and rank per batch)",
    ]
    if counts["copies"]:
        lines.append(f"{plural(counts['copies'], 'file')} had the same bytes as another file: read, decoded and "
                     "embedded once, their rows copied")
    if counts["resumed"]:
        lines.append(f"resumed {plural(counts['resumed'], 'image')} from the vectors an unfinished run saved: not "
                     "read, decoded or embedded again")
    if counts["kept"]:
        lines.append(f"kept {plural(counts['kept'], 'row')} of the previous run (--skip_existing): files whose bytes "
                     "it labeled")
    if counters := backend_counters(result):
        lines.append("backend: " + ", ".join(f"{name} {value}" for name, value in sorted(counters.items())))
    return "\n".join(lines)
