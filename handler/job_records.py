"""Job records: what an asynchronous generation is, kept in the storage backend."""

from collections.abc import Iterable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, Field, model_validator

from handler.audio.output import DEFAULT_OUTPUT, AudioFormat, AudioOutput, Normalization
from handler.filenames import filename_for, job_id_for
from handler.generation import GenerationParams
from handler.storage import Storage

EXPIRED_ERROR = "The job's worker did not finish before its deadline"
ABANDONED_ERROR = "The server stopped before the job finished"

JOB_EVENT_KEY = "srocks_music_job"
"""The key that marks a Lambda event as a job to run rather than an HTTP request."""


class JobStatus(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


FINAL_STATES = {JobStatus.SUCCEEDED, JobStatus.FAILED}


_FLAT_NAMES = {"prompt": "text"}
"""GenerationParams fields that records with flat parameters stored under another name."""

OUTPUT_BEFORE_FORMATS = AudioOutput(AudioFormat.WAV, Normalization.PEAK)
"""What every job made before a request could choose: records stored then have no `output`."""


class JobRecord(BaseModel):
    """One job as stored; its id is also the name of the file it makes, without its extension."""

    job_id: str
    status: JobStatus
    progress: float = 0.0
    eta_seconds: float | None = None
    created_at: datetime
    updated_at: datetime
    deadline: datetime
    error: str | None = None
    params: GenerationParams
    output: AudioOutput = Field(default=OUTPUT_BEFORE_FORMATS)
    worker: str | None = None
    """The process holding the job (`handler.processes.current_worker`), where jobs run locally."""

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_params(cls, data: Any) -> Any:
        """Reads records stored before `params` was one field: its fields at the top, the prompt as `text`."""
        if isinstance(data, dict) and "params" not in data:
            data = dict(data)
            data["params"] = {
                field.name: data.pop(_FLAT_NAMES.get(field.name, field.name))
                for field in fields(GenerationParams)
                if _FLAT_NAMES.get(field.name, field.name) in data
            }
        return data

    @property
    def filename(self) -> str:
        """The file this job makes."""
        return filename_for(self.job_id, self.output.format)

    @property
    def final(self) -> bool:
        """Whether the job has ended, one way or the other."""
        return self.status in FINAL_STATES

    def eta_at(self, now: datetime) -> float | None:
        """The remaining time estimated at the last update, less the time since."""
        if self.final:
            return 0.0
        if self.eta_seconds is None:
            return None
        return round(max(0.0, self.eta_seconds - (now - self.updated_at).total_seconds()), 1)


class JobDispatcher(Protocol):
    """Starts a recorded job somewhere: a local worker thread or an asynchronous Lambda invocation."""

    @property
    def worker(self) -> str | None:
        """The process its jobs run in, when that is this one (None: each in its own invocation)."""
        ...

    def reserve(self, job_id: str, estimate_s: float) -> float:
        """Hold a place for a job expected to take `estimate_s`, before it is recorded; returns the
        expected wait before it starts. Raises QueueFullError when it should not wait at all."""
        ...

    def release(self, job_id: str) -> None:
        """Give back a place held for a job that was never recorded."""
        ...

    def submit(self, job_id: str) -> None: ...


class QueueFullError(RuntimeError):
    """No place for another job now; `retry_after_s` is when one is expected."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"job queue full: retry in {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class JobStore:
    """Job records in the storage backend, so any instance can answer for any job."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def create(
        self,
        job_id: str,
        params: GenerationParams,
        now: datetime,
        queue_timeout_s: float,
        eta_s: float,
        output: AudioOutput = DEFAULT_OUTPUT,
        worker: str | None = None,
    ) -> JobRecord:
        """Record a queued job; `eta_s` counts the wait for the jobs ahead of it."""
        record = JobRecord(
            worker=worker,
            job_id=job_id,
            status=JobStatus.QUEUED,
            eta_seconds=round(eta_s, 1),
            created_at=now,
            updated_at=now,
            deadline=now + timedelta(seconds=queue_timeout_s),
            params=params,
            output=output,
        )
        self.save(record)
        return record

    def prune(self, keep: int, pruned_files: Iterable[str] = ()) -> list[str]:
        """Delete the records of ended jobs beyond the newest `keep` and of the files pruned, in one
        batch; returns their ids. A job not yet ended keeps its record whatever its age: another
        server may be about to run it, and its client is still polling."""
        pruned_jobs = {job_id_for(name) for name in pruned_files}
        job_ids = sorted(self.storage.list_jobs(), reverse=True)
        candidates = [job_id for index, job_id in enumerate(job_ids) if index >= keep or job_id in pruned_jobs]
        ended = [job_id for job_id in candidates if self._has_ended(job_id)]
        if ended:
            self.storage.delete_jobs(ended)
        return ended

    def _has_ended(self, job_id: str) -> bool:
        try:
            record = self.get(job_id)
        except ValueError:  # not a record this code can read: nothing to keep it for
            return True
        return record is None or record.final

    def save(self, record: JobRecord) -> None:
        self.storage.put_job(record.job_id, record.model_dump(mode="json"))

    def get(self, job_id: str, now: datetime | None = None) -> JobRecord | None:
        """The job; one not final and past its deadline reads as failed.

        Nothing is written here: the worker owns the record, and a worker that is alive keeps
        moving the deadline forward, so a status never goes backwards.
        """
        data = self.storage.get_job(job_id)
        if data is None:
            return None
        record = JobRecord.model_validate(data)
        now = now or datetime.now(UTC)
        if not record.final and now > record.deadline:
            return record.model_copy(update={"status": JobStatus.FAILED, "error": EXPIRED_ERROR, "eta_seconds": None})
        return record


def job_event(job_id: str) -> dict[str, Any]:
    """The payload of the asynchronous invocation that runs `job_id`."""
    return {JOB_EVENT_KEY: {"job_id": job_id}}


def job_id_from_event(event: Any) -> str | None:
    """The job id when `event` is a job event, else None (an HTTP event)."""
    if isinstance(event, dict) and isinstance(job := event.get(JOB_EVENT_KEY), dict):
        job_id = job.get("job_id")
        return job_id if isinstance(job_id, str) else None
    return None
