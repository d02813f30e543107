"""CloudWatch metrics as Embedded Metric Format (EMF) lines on stdout, through Powertools.

On Lambda, CloudWatch Logs turns each line into metric data points: no API call, no permission
beyond writing logs. Locally and in tests the same lines are printed, where tests read them back.

Every metric is published without dimensions (what the alarms and the dashboard read) and, where
`BREAKDOWNS` names one, also by that one dimension: few dimensions, few custom metrics.
"""

import json
import logging
import sys
from collections.abc import Mapping
from enum import StrEnum

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

logger = logging.getLogger(__name__)

NAMESPACE = "SRocksMusic"
"""The service's one CloudWatch namespace (template.yaml's alarms and dashboard name it too)."""


class Metric(StrEnum):
    """Every metric the service emits, by its CloudWatch name."""

    GENERATION_SECONDS = "GenerationSeconds"
    """Wall time of one generation on the engine (decode and EnCodec, model load excluded)."""
    REAL_TIME_FACTOR = "RealTimeFactor"
    """A generation's wall seconds per second of audio it made (all takes): below 1 is faster than real time."""
    AUDIO_SECONDS = "AudioSeconds"
    """Seconds of audio stored, every take counted."""
    MODEL_LOAD_SECONDS = "ModelLoadSeconds"
    """Wall time of a successful model load."""
    COLD_STARTS = "ColdStarts"
    """1 for the first request or job a process serves."""
    JOBS_QUEUED = "JobsQueued"
    JOBS_SUCCEEDED = "JobsSucceeded"
    JOBS_FAILED = "JobsFailed"
    """A job recorded failed: generation or storage failed, it could not start, or would outlast its invocation."""
    QUEUE_WAIT_SECONDS = "QueueWaitSeconds"
    """From a job's submission to its start."""
    STORAGE_ERRORS = "StorageErrors"
    """Each failed storage operation (S3 or the local directory)."""
    HTTP_4XX = "Http4xx"
    """1 for a response with a 4xx status, else 0: its sum counts them, its average is their share."""
    HTTP_5XX = "Http5xx"
    """1 for a response with a 5xx status, else 0."""


UNITS: dict[Metric, MetricUnit] = {
    Metric.GENERATION_SECONDS: MetricUnit.Seconds,
    Metric.REAL_TIME_FACTOR: MetricUnit.NoUnit,
    Metric.AUDIO_SECONDS: MetricUnit.Seconds,
    Metric.MODEL_LOAD_SECONDS: MetricUnit.Seconds,
    Metric.COLD_STARTS: MetricUnit.Count,
    Metric.JOBS_QUEUED: MetricUnit.Count,
    Metric.JOBS_SUCCEEDED: MetricUnit.Count,
    Metric.JOBS_FAILED: MetricUnit.Count,
    Metric.QUEUE_WAIT_SECONDS: MetricUnit.Seconds,
    Metric.STORAGE_ERRORS: MetricUnit.Count,
    Metric.HTTP_4XX: MetricUnit.Count,
    Metric.HTTP_5XX: MetricUnit.Count,
}

BREAKDOWNS: dict[Metric, str] = {
    Metric.GENERATION_SECONDS: "precision",
    Metric.REAL_TIME_FACTOR: "precision",
    Metric.MODEL_LOAD_SECONDS: "precision",
    Metric.AUDIO_SECONDS: "format",
    Metric.HTTP_4XX: "route",
    Metric.HTTP_5XX: "route",
}
"""The one dimension each metric is also published by, besides none."""


def emit(values: Mapping[Metric, float], breakdown: tuple[str, str] | None = None) -> None:
    """Write one EMF line with `values`, published without dimensions and, when `breakdown`
    (dimension, value) is given, also by it; it must be the dimension `BREAKDOWNS` names for each.

    A metric that cannot be written is logged, never raised: observing the work must not fail it.
    """
    if is_metrics_disabled():
        return
    try:
        if breakdown is not None and any(BREAKDOWNS.get(metric) != breakdown[0] for metric in values):
            raise ValueError(f"{breakdown[0]} is not a dimension of all of {sorted(values)}")
        provider = AmazonCloudWatchEMFProvider(namespace=NAMESPACE)
        # The namespace names the service: a `service` dimension (which POWERTOOLS_SERVICE_NAME would
        # add) would give every metric another identity than the one the alarms read.
        provider.service = None  # type: ignore[assignment]
        for metric, value in values.items():
            provider.add_metric(name=metric.value, unit=UNITS[metric], value=value)
        if breakdown is not None:
            provider.add_dimensions(**{breakdown[0]: breakdown[1]})
        line = json.dumps(provider.serialize_metric_set(), separators=(",", ":"))
    except Exception:
        logger.warning("metric not written", exc_info=True)
        return
    # One write per line, so lines from concurrent threads never interleave.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def record_cold_start() -> None:
    """A process's first request or job."""
    emit({Metric.COLD_STARTS: 1})


def record_model_load(seconds: float, precision: str) -> None:
    """A model loaded, in `precision`, in `seconds`."""
    emit({Metric.MODEL_LOAD_SECONDS: seconds}, ("precision", precision))


def record_generation(seconds: float, audio_seconds: float, precision: str) -> None:
    """A generation of `audio_seconds` (all takes) took `seconds` on the engine."""
    values = {Metric.GENERATION_SECONDS: seconds}
    if audio_seconds > 0:
        values[Metric.REAL_TIME_FACTOR] = seconds / audio_seconds
    emit(values, ("precision", precision))


def record_audio_stored(audio_seconds: float, audio_format: str) -> None:
    """`audio_seconds` of audio (all takes) stored as `audio_format` files."""
    emit({Metric.AUDIO_SECONDS: audio_seconds}, ("format", audio_format))


def record_job_queued() -> None:
    """A job handed to a worker."""
    emit({Metric.JOBS_QUEUED: 1})


def record_job_started(queue_wait_s: float) -> None:
    """A job started after waiting `queue_wait_s` since its submission."""
    emit({Metric.QUEUE_WAIT_SECONDS: max(0.0, queue_wait_s)})


def record_job_outcome(succeeded: bool) -> None:
    """A job recorded succeeded or failed: both counts written (0 or 1), so their averages are rates."""
    emit({Metric.JOBS_SUCCEEDED: int(succeeded), Metric.JOBS_FAILED: int(not succeeded)})


def record_storage_error() -> None:
    """A storage operation failed."""
    emit({Metric.STORAGE_ERRORS: 1})


def record_response(route: str, status: int) -> None:
    """An HTTP response with `status` to a request for `route` ("METHOD /path/{template}")."""
    emit({Metric.HTTP_4XX: int(400 <= status < 500), Metric.HTTP_5XX: int(status >= 500)}, ("route", route))
