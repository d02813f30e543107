"""HTTP routes of the published contract."""

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from handler import __version__
from handler.audio.output import AudioFormat, AudioOutput
from handler.catalog import FileBusyError, delete_file, file_entry, file_url, list_entries
from handler.dependencies import Services, ServicesDep
from handler.filenames import (
    FILENAME_PATTERN,
    TIMESTAMP_FORMAT,
    format_of,
    is_valid_filename,
    is_valid_job_id,
    job_id_for,
    new_filename,
)
from handler.generation import GenerationParams
from handler.job_records import JobStatus, JobStore, QueueFullError
from handler.jobs import JobDispatchError, submit_job
from handler.music_files import MusicFileError, make_music_file
from handler.openapi import (
    DELETE_RESPONSES,
    DOWNLOAD_RESPONSES,
    GENERATE_RESPONSES,
    HEALTH_RESPONSES,
    INFO_RESPONSES,
    JOB_RESPONSES,
    LIST_RESPONSES,
)
from handler.schemas import (
    MAX_PROMPT_CHARS,
    FileInfo,
    GenerateRequest,
    GenerateResponse,
    Health,
    JobAccepted,
    JobResponse,
    ServedModel,
    Take,
    request_fields,
)
from handler.settings import Settings
from handler.storage import LocalFile

logger = logging.getLogger(__name__)

router = APIRouter()

API_GATEWAY_BUDGET_S = 27.0
"""API Gateway HTTP APIs end requests at 30 s; the rest is kept for storage and the response."""
DEADLINE_MARGIN_S = 10.0
"""Of a Lambda invocation's time, what is kept for encoding and storing the takes and answering."""
MAX_RETRY_AFTER_S = 5

FILE_NOT_FOUND = "File not found"

FilenamePath = Annotated[
    str,
    Path(
        description="A generated file's name, `gen_YYYYMMDD_HHMMSS_xxxxxxxx.<format>`; any other is not found",
        # Documented, not enforced: a name that can't be ours is simply not found (404), not invalid.
        json_schema_extra={"pattern": f"^{FILENAME_PATTERN.pattern}$"},
    ),
]


def job_url(job_id: str) -> str:
    """The API path a job's status is read from."""
    return f"/jobs/{job_id}"


def model_name(model_id: str) -> str:
    """The short model name shown to clients: the last part of the hub id or directory."""
    return PurePosixPath(model_id.rstrip("/")).name or model_id


@router.get("/", response_model=Health, responses=HEALTH_RESPONSES, summary="Health check")
async def health(services: ServicesDep) -> Health:
    """Whether the API is up, which model it serves, and whether that model has loaded."""
    generator = services.generator
    return Health(
        status="degraded" if generator.load_error else "healthy",
        model=model_name(services.settings.model_id),
        device="cpu",
        version=__version__,
        model_id=services.settings.model_id,
        model_loaded=generator.loaded,
        model_error=generator.load_error,
        model_retry_in_seconds=None if generator.load_retry_in is None else round(generator.load_retry_in, 1),
        served_model=None if generator.artifact is None else ServedModel(**asdict(generator.artifact)),
        storage=services.storage.backend,
        auth="api_key" if services.settings.api_key_digests else "none",
    )


@router.post("/generate", include_in_schema=False, response_model=GenerateResponse)
@router.post("/generate/", response_model=GenerateResponse, responses=GENERATE_RESPONSES, summary="Generate music")
async def generate(
    body: GenerateRequest,
    services: ServicesDep,
    request: Request,
    prefer: Annotated[str | None, Header(description="`respond-async` runs the generation as a job")] = None,
) -> Response | GenerateResponse:
    """Generate music from a text description and store it in the format asked for (WAV by default):
    `takes` clips of it at once, each its own file.

    With `Prefer: respond-async`, or when a request through API Gateway could not finish
    within its 30 s limit, the answer is `202 Accepted` with the job to poll. On Lambda, a clip
    that could not finish within an invocation's time is refused at once (400).
    """
    params = body.to_params()
    output = body.to_output()
    check_limits(params, services.settings)
    estimate = services.generator.estimate_seconds(params.duration, params.takes)
    check_deadline(request, params, estimate)
    now = datetime.now(UTC)
    filenames = new_filenames(now, output.format, params.takes)
    filename = filenames[0]
    wants_async = prefers_async(prefer)
    if wants_async or exceeds_gateway_budget(request, estimate):
        accepted = await run_in_threadpool(start_job, services, params, output, filenames, now)
        headers = {"Location": accepted.status_url, "Retry-After": str(retry_after(accepted.eta_seconds))}
        if wants_async:
            headers["Preference-Applied"] = "respond-async"
        return JSONResponse(accepted.model_dump(), status_code=202, headers=headers)
    try:
        encoded = await run_in_threadpool(make_music_file, services, params, output, filenames, now)
    except MusicFileError as exc:
        raise HTTPException(exc.status_code, exc.message) from exc
    return GenerateResponse(
        file_url=file_url(filename),
        duration=params.duration,
        timestamp=now.strftime(TIMESTAMP_FORMAT),
        prompt=params.prompt,
        seed=params.seed,
        filename=filename,
        sample_rate=services.generator.sample_rate,
        format=output.format,
        normalize=output.normalize,
        content_type=output.format.media_type,
        loudness_lufs=encoded[0].loudness_lufs,
        takes=take_list(filenames, params),
    )


def check_limits(params: GenerationParams, settings: Settings) -> None:
    """Refuse, as invalid input (400), a clip longer than this deployment's `MAX_DURATION` or more
    takes than it keeps files."""
    errors = []
    if params.duration > settings.max_duration:
        message = f"Input should be less than or equal to {settings.max_duration} (this deployment's MAX_DURATION)"
        errors.append({"loc": ("body", "duration"), "msg": message, "type": "less_than_equal"})
    if params.takes > settings.max_files:
        message = f"Input should be less than or equal to {settings.max_files} (the files this deployment keeps)"
        errors.append({"loc": ("body", "takes"), "msg": message, "type": "less_than_equal"})
    if errors:
        raise RequestValidationError(errors)


def invocation_seconds_left(request: Request) -> float | None:
    """On Lambda, the time left in the invocation serving `request` (a job's own invocation gets
    as long: the same function); None elsewhere, where nothing ends a generation."""
    context = request.scope.get("aws.context")
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return None if remaining is None else remaining() / 1000


def check_deadline(request: Request, params: GenerationParams, estimate_s: float) -> None:
    """Refuse (400) a generation expected to outlast a Lambda invocation, before anything starts,
    rather than have it killed half-way."""
    left = invocation_seconds_left(request)
    if left is None or estimate_s <= left - DEADLINE_MARGIN_S:
        return
    takes = f" ({params.takes} takes)" if params.takes > 1 else ""
    raise HTTPException(
        400,
        f"A {params.duration} s clip{takes} would take about {math.ceil(estimate_s)} s to make here, more than"
        f" the {max(0, math.floor(left - DEADLINE_MARGIN_S))} s a request may run: ask for a shorter clip"
        " or fewer takes",
    )


def new_filenames(now: datetime, audio_format: AudioFormat, takes: int) -> list[str]:
    """A fresh name for each take's file, all distinct."""
    names: list[str] = []
    while len(names) < takes:
        name = new_filename(now, audio_format)
        if name not in names:
            names.append(name)
    return names


def take_list(filenames: Sequence[str], params: GenerationParams) -> list[Take]:
    """Each take's file and seed, the first one first."""
    return [
        Take(file_url=file_url(name), filename=name, seed=seed)
        for name, seed in zip(filenames, params.seeds, strict=True)
    ]


def prefers_async(prefer: str | None) -> bool:
    """Whether an RFC 7240 `Prefer` header asks for `respond-async`."""
    if not prefer:
        return False
    return any(token.split(";")[0].strip().lower() == "respond-async" for token in prefer.split(","))


def exceeds_gateway_budget(request: Request, estimate_s: float) -> bool:
    """Whether this request came through API Gateway and is expected (`estimate_s`: every window
    and take counted) to outlast its 30 s limit."""
    event = request.scope.get("aws.event")
    context = event.get("requestContext", {}) if isinstance(event, dict) else {}
    domain = str(context.get("domainName", ""))
    through_gateway = bool(context.get("apiId")) and ".lambda-url." not in domain
    return through_gateway and estimate_s > API_GATEWAY_BUDGET_S


def retry_after(eta_seconds: float | None) -> int:
    """Seconds a client should wait before polling again."""
    return max(1, min(MAX_RETRY_AFTER_S, math.ceil(eta_seconds or 1)))


def start_job(
    services: Services, params: GenerationParams, output: AudioOutput, filenames: Sequence[str], now: datetime
) -> JobAccepted:
    """Record a queued job for `filenames` (one per take) and hand it to a worker."""
    job_id, *more_takes = (job_id_for(name) for name in filenames)
    try:
        record = submit_job(services, params, output, job_id, now, more_takes)
    except QueueFullError as exc:
        retry = math.ceil(exc.retry_after_s)
        raise HTTPException(
            429, f"Too many jobs waiting: try again in {retry} s", headers={"Retry-After": str(retry)}
        ) from exc
    except JobDispatchError as exc:
        raise HTTPException(503, "Could not start the job") from exc
    return JobAccepted(
        job_id=record.job_id,
        status=record.status.value,
        status_url=job_url(record.job_id),
        file_url=file_url(record.filename),
        eta_seconds=record.eta_seconds,
        takes=take_list(record.filenames, params),
    )


@router.get("/jobs/{job_id}", response_model=JobResponse, responses=JOB_RESPONSES, summary="Job status")
def get_job(job_id: str, services: ServicesDep, response: Response) -> JobResponse:
    """A job's status, progress and ETA; `file_url` once it has succeeded."""
    if not is_valid_job_id(job_id):
        raise HTTPException(404, "Job not found")
    now = datetime.now(UTC)
    record = JobStore(services.storage).get(job_id, now)
    if record is None:
        raise HTTPException(404, "Job not found")
    eta = record.eta_at(now)
    if not record.final:
        response.headers["Retry-After"] = str(retry_after(eta))
    return JobResponse(
        **record.model_dump(exclude={"status", "eta_seconds", "deadline", "params", "output"}),
        **request_fields(record.params, record.output),
        status=record.status.value,
        eta_seconds=eta,
        status_url=job_url(record.job_id),
        file_url=file_url(record.filename) if record.status is JobStatus.SUCCEEDED else None,
        takes=take_list(record.filenames, record.params) if record.status is JobStatus.SUCCEEDED else None,
    )


@router.get("/files", include_in_schema=False, response_model=list[FileInfo])
@router.get("/files/", response_model=list[FileInfo], responses=LIST_RESPONSES, summary="List generated files")
def list_files(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Maximum files to return")] = 50,
    skip: Annotated[int, Query(ge=0, description="Number of files to skip")] = 0,
    audio_format: Annotated[AudioFormat | None, Query(alias="format", description="Only files of this format")] = None,
    q: Annotated[
        str | None,
        Query(max_length=MAX_PROMPT_CHARS, description="Only files whose prompt contains this text, in any case"),
    ] = None,
) -> list[FileInfo]:
    """Generated files, newest first, with what each one's sidecar knows (null where it knows nothing)."""
    return list_entries(services.storage, limit, skip, audio_format, q)


@router.get("/files/{filename}/info", response_model=FileInfo, responses=INFO_RESPONSES, summary="One file's entry")
def file_info(filename: FilenamePath, services: ServicesDep) -> FileInfo:
    """The file's entry, as `GET /files/` lists it."""
    found = file_entry(services.storage, filename) if is_valid_filename(filename) else None
    if found is None:
        raise HTTPException(404, FILE_NOT_FOUND)
    return found


@router.get(
    "/files/{filename}",
    response_class=Response,
    responses=DOWNLOAD_RESPONSES,
    summary="Download a file",
)
def download_file(filename: FilenamePath, services: ServicesDep) -> Response:
    """The file itself (local storage) or a redirect to a short-lived presigned URL (S3).

    A name that isn't a generated file's is not found, without asking the storage.
    """
    if not is_valid_filename(filename):
        raise HTTPException(404, FILE_NOT_FOUND)
    target = services.storage.download(filename)
    if target is None:
        raise HTTPException(404, FILE_NOT_FOUND)
    if isinstance(target, LocalFile):
        return FileResponse(target.path, media_type=format_of(filename).media_type, filename=filename)
    return RedirectResponse(target.url, status_code=307)


@router.delete(
    "/files/{filename}",
    status_code=204,
    response_class=Response,
    responses=DELETE_RESPONSES,
    summary="Delete a file",
)
def remove_file(filename: FilenamePath, services: ServicesDep) -> Response:
    """Delete the file, its sidecar and its job record; refused while its job is still queued or running."""
    try:
        deleted = is_valid_filename(filename) and delete_file(services.storage, filename, datetime.now(UTC))
    except FileBusyError as exc:
        raise HTTPException(409, "The file's job is still running") from exc
    if not deleted:
        raise HTTPException(404, FILE_NOT_FOUND)
    return Response(status_code=204)
