"""Running jobs: the runner, a local worker thread, and asynchronous Lambda self-invocation."""

import contextlib
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from handler.audio.output import AudioOutput
from handler.dependencies import Services
from handler.generation import GenerationParams
from handler.job_records import JobRecord, JobStatus, JobStore, job_event
from handler.music_files import MusicFileError, make_music_file
from handler.storage import StorageError

logger = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL_S = 1.0
HEARTBEAT_GRACE_S = 60.0
"""Each progress write moves a running job's deadline this far ahead: a live worker never expires."""


class JobDispatchError(RuntimeError):
    """The job could not be handed to a worker."""


class ProgressWriter:
    """Writes a running job's progress and ETA to its record: the first report at once (a short
    clip may finish within one interval), then at most once per interval."""

    def __init__(self, store: JobStore, record: JobRecord, interval_s: float = PROGRESS_WRITE_INTERVAL_S) -> None:
        self.store = store
        self.record = record
        self.interval_s = interval_s
        self._started = time.monotonic()
        self._last_write = -math.inf

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self._last_write < self.interval_s or fraction <= self.record.progress or fraction >= 1.0:
            return
        self._last_write = now
        eta = (now - self._started) / fraction * (1.0 - fraction)
        now_utc = datetime.now(UTC)
        self.record = self.record.model_copy(
            update={
                "progress": round(fraction, 4),
                "eta_seconds": round(eta, 1),
                "updated_at": now_utc,
                "deadline": max(self.record.deadline, now_utc + timedelta(seconds=HEARTBEAT_GRACE_S)),
            }
        )
        try:
            self.store.save(self.record)
        except StorageError:
            logger.warning("could not write job progress", extra={"job_id": self.record.job_id})


def submit_job(
    services: Services, params: GenerationParams, output: AudioOutput, job_id: str, now: datetime
) -> JobRecord:
    """Record a queued job and hand it to a worker; a job that cannot be handed over is recorded failed.

    Raises StorageError (the record could not be written) or JobDispatchError.
    """
    store = JobStore(services.storage)
    estimate = services.generator.estimate_seconds(params.duration)
    record = store.create(job_id, params, now, services.settings.job_queue_timeout_seconds, estimate, output)
    try:
        services.jobs.submit(job_id)
    except JobDispatchError:
        logger.exception("job dispatch failed", extra={"job_id": job_id})
        failed = record.model_copy(update={"status": JobStatus.FAILED, "error": "Could not start the job"})
        with contextlib.suppress(StorageError):
            store.save(failed)
        raise
    return record


def run_job(services: Services, job_id: str, time_budget_s: float | None = None) -> JobRecord | None:
    """Run a queued job to its end and record the outcome.

    Only a queued job runs: a running, final or unknown one is left alone, so a second delivery
    of the same asynchronous event does not generate twice.
    """
    store = JobStore(services.storage)
    record = store.get(job_id)
    if record is None or record.status is not JobStatus.QUEUED:
        return record
    estimate = services.generator.estimate_seconds(record.params.duration)
    budget = time_budget_s if time_budget_s is not None else max(120.0, 3 * estimate)
    now = datetime.now(UTC)
    record = record.model_copy(
        update={
            "status": JobStatus.RUNNING,
            "updated_at": now,
            "deadline": now + timedelta(seconds=budget),
            "eta_seconds": round(estimate, 1),
        }
    )
    progress = ProgressWriter(store, record)
    outcome: dict[str, object]
    try:
        store.save(record)
        make_music_file(services, record.params, record.output, record.filename, record.created_at, progress)
    except MusicFileError as exc:
        outcome = {"status": JobStatus.FAILED, "error": exc.message, "eta_seconds": None}
    except Exception:
        logger.exception("job failed", extra={"job_id": job_id})
        outcome = {"status": JobStatus.FAILED, "error": "Music generation failed", "eta_seconds": None}
    else:
        outcome = {"status": JobStatus.SUCCEEDED, "progress": 1.0, "eta_seconds": 0.0}
    record = progress.record.model_copy(update={**outcome, "updated_at": datetime.now(UTC)})
    try:
        store.save(record)
    except StorageError:
        # The record then expires at its deadline and reads as failed.
        logger.exception("could not record the job's outcome", extra={"job_id": job_id})
    logger.info("job finished", extra={"job_id": job_id, "status": record.status.value})
    return record


class LocalJobQueue:
    """Runs jobs in this process, in order, one at a time, on a background thread."""

    def __init__(self) -> None:
        self.runner: Callable[[str], Any] | None = None
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job_id: str) -> None:
        """Queue the job; the worker thread starts with the first."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="music-jobs", daemon=True)
                self._thread.start()
        self._queue.put(job_id)

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            try:
                if self.runner is not None:
                    self.runner(job_id)
            except Exception:
                logger.exception("job crashed", extra={"job_id": job_id})


class LambdaJobInvoker:
    """Runs each job in a fresh asynchronous invocation of this same function."""

    def __init__(self, client: Any, function_name: str) -> None:
        self.client = client
        self.function_name = function_name

    def submit(self, job_id: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.invoke(
                FunctionName=self.function_name,
                InvocationType="Event",
                Payload=json.dumps(job_event(job_id)).encode(),
            )
        except (BotoCoreError, ClientError) as exc:
            raise JobDispatchError("could not invoke the job worker") from exc
