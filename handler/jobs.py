"""Running jobs: the runner, a local worker thread, and asynchronous Lambda self-invocation."""

import contextlib
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from handler.audio.output import AudioOutput
from handler.dependencies import Services
from handler.generation import GenerationParams
from handler.job_records import ABANDONED_ERROR, JobRecord, JobStatus, JobStore, QueueFullError, job_event
from handler.music_files import MusicFileError, make_music_file
from handler.observability.logs import log_context
from handler.observability.metrics import record_job_outcome, record_job_queued, record_job_started
from handler.processes import current_worker, worker_is_gone
from handler.storage import StorageError

logger = logging.getLogger(__name__)

TOO_LONG_ERROR = "The clip would take longer to make than the worker's time limit allows"

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
    services: Services,
    params: GenerationParams,
    output: AudioOutput,
    job_id: str,
    now: datetime,
    more_takes: Sequence[str] = (),
) -> JobRecord:
    """Record a queued job and hand it to a worker; a job that cannot be handed over is recorded failed.
    `more_takes`: the ids of its takes after the first (see `JobRecord.more_takes`).

    Raises QueueFullError (nothing recorded), StorageError (the record could not be written) or
    JobDispatchError.
    """
    store = JobStore(services.storage)
    estimate = services.generator.estimate_seconds(params.duration, params.takes)
    wait = services.jobs.reserve(job_id, estimate)
    try:
        record = store.create(
            job_id,
            params,
            now,
            services.settings.job_queue_timeout_seconds,
            wait + estimate,
            output,
            services.jobs.worker,
            more_takes,
        )
    except BaseException:
        services.jobs.release(job_id)
        raise
    try:
        services.jobs.submit(job_id)
    except JobDispatchError:
        logger.exception("job dispatch failed", extra={"job_id": job_id})
        failed = record.model_copy(update={"status": JobStatus.FAILED, "error": "Could not start the job"})
        with contextlib.suppress(StorageError):
            store.save(failed)
        record_job_outcome(succeeded=False)
        raise
    record_job_queued()
    return record


def fail_abandoned_jobs(services: Services) -> list[str]:
    """Record as failed the unfinished jobs whose worker process on this host has ended (killed,
    crashed), so a restarted server answers for them at once rather than at their deadlines;
    returns their ids."""
    store = JobStore(services.storage)
    abandoned = []
    for job_id in services.storage.list_jobs():
        record = store.get(job_id)
        if record is None or record.final or record.worker is None or not worker_is_gone(record.worker):
            continue
        failed = record.model_copy(
            update={
                "status": JobStatus.FAILED,
                "error": ABANDONED_ERROR,
                "eta_seconds": None,
                "updated_at": datetime.now(UTC),
            }
        )
        store.save(failed)
        record_job_outcome(succeeded=False)
        abandoned.append(job_id)
    if abandoned:
        logger.warning("jobs abandoned by a stopped server recorded failed", extra={"job_ids": abandoned})
    return abandoned


def run_job(services: Services, job_id: str, time_budget_s: float | None = None) -> JobRecord | None:
    """Run a queued job to its end and record the outcome.

    Only a queued job runs: a running, final or unknown one is left alone, so a second delivery
    of the same asynchronous event does not generate twice. Every log line meanwhile carries `job_id`.
    """
    with log_context(job_id=job_id):
        return _run_job(services, job_id, time_budget_s)


def _run_job(services: Services, job_id: str, time_budget_s: float | None) -> JobRecord | None:
    store = JobStore(services.storage)
    record = store.get(job_id)
    if record is None or record.status is not JobStatus.QUEUED:
        return record
    estimate = services.generator.estimate_seconds(record.params.duration, record.params.takes)
    if time_budget_s is not None and estimate > time_budget_s:
        # Refused up front when it was asked for; should this worker still expect to outlast its
        # invocation (a colder start than the request's), it fails now rather than being killed mid-way.
        return _fail_unstarted(store, record, TOO_LONG_ERROR)
    budget = time_budget_s if time_budget_s is not None else max(120.0, 3 * estimate)
    now = datetime.now(UTC)
    record_job_started((now - record.created_at).total_seconds())
    record = record.model_copy(
        update={
            "status": JobStatus.RUNNING,
            "updated_at": now,
            "deadline": now + timedelta(seconds=budget),
            "eta_seconds": round(estimate, 1),
            "worker": services.jobs.worker,
        }
    )
    progress = ProgressWriter(store, record)
    outcome: dict[str, object]
    try:
        store.save(record)
        make_music_file(services, record.params, record.output, record.filenames, record.created_at, progress)
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
        recorded = True
    except StorageError:
        # The record then expires at its deadline and reads as failed.
        logger.exception("could not record the job's outcome", extra={"job_id": job_id})
        recorded = False
    record_job_outcome(succeeded=recorded and record.status is JobStatus.SUCCEEDED)
    logger.info("job finished", extra={"job_id": job_id, "status": record.status.value})
    return record


def _fail_unstarted(store: JobStore, record: JobRecord, error: str) -> JobRecord:
    failed = record.model_copy(
        update={"status": JobStatus.FAILED, "error": error, "eta_seconds": None, "updated_at": datetime.now(UTC)}
    )
    try:
        store.save(failed)
    except StorageError:
        logger.exception("could not record the job's outcome", extra={"job_id": record.job_id})
    record_job_outcome(succeeded=False)
    logger.info("job refused: it would outlast its invocation", extra={"job_id": record.job_id})
    return failed


class LocalJobQueue:
    """Runs jobs in this process, in order, one at a time, on a background thread.

    At most `max_waiting` jobs wait, and none is taken whose expected wait passes `max_wait_s`:
    beyond either, the client is told to come back (QueueFullError) rather than queued for a
    result that would expire before it runs.
    """

    def __init__(self, max_waiting: int = 8, max_wait_s: float = math.inf) -> None:
        self.worker: str | None = current_worker()
        self.runner: Callable[[str], Any] | None = None
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._waiting: dict[str, float] = {}
        self._running_until: float | None = None

    def reserve(self, job_id: str, estimate_s: float) -> float:
        with self._lock:
            now = time.monotonic()
            running_left = 0.0 if self._running_until is None else max(0.0, self._running_until - now)
            wait = running_left + sum(self._waiting.values())
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(max(1.0, running_left))
            if wait > self.max_wait_s:
                raise QueueFullError(max(1.0, wait - self.max_wait_s))
            self._waiting[job_id] = estimate_s
            return wait

    def release(self, job_id: str) -> None:
        with self._lock:
            self._waiting.pop(job_id, None)

    def submit(self, job_id: str) -> None:
        """Queue the job; the worker thread starts with the first."""
        with self._lock:
            self._waiting.setdefault(job_id, 0.0)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="music-jobs", daemon=True)
                self._thread.start()
        self._queue.put(job_id)

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            with self._lock:
                self._running_until = time.monotonic() + self._waiting.pop(job_id, 0.0)
            try:
                if self.runner is not None:
                    self.runner(job_id)
            except Exception:
                logger.exception("job crashed", extra={"job_id": job_id})
            finally:
                with self._lock:
                    self._running_until = None


class LambdaJobInvoker:
    """Runs each job in a fresh asynchronous invocation of this same function."""

    worker: str | None = None

    def __init__(self, client: Any, function_name: str) -> None:
        self.client = client
        self.function_name = function_name

    def reserve(self, job_id: str, estimate_s: float) -> float:
        """Lambda runs each job in its own invocation: none waits for another (the function's
        reserved concurrency, where set, bounds them)."""
        return 0.0

    def release(self, job_id: str) -> None:
        pass

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
