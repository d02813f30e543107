"""HTTP routes of the published contract."""

import logging
import secrets
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from handler import __version__
from handler.audio import encode_wav
from handler.dependencies import Services, ServicesDep
from handler.engine import GenerationFailedError, GenerationParams, ModelUnavailableError
from handler.filenames import TIMESTAMP_FORMAT, is_valid_filename, new_filename
from handler.schemas import MAX_SEED, ErrorResponse, FileInfo, GenerateRequest, GenerateResponse, Health
from handler.storage import LocalFile, StorageError, prune

logger = logging.getLogger(__name__)

router = APIRouter()

ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorResponse, "description": "Invalid parameters"},
    500: {"model": ErrorResponse, "description": "Generation failed"},
    503: {"model": ErrorResponse, "description": "Model or storage unavailable"},
}


def file_url(filename: str) -> str:
    """The API path a generated file is downloaded from."""
    return f"/files/{filename}"


def model_name(model_id: str) -> str:
    """The short model name shown to clients: the last part of the hub id or directory."""
    return PurePosixPath(model_id.rstrip("/")).name or model_id


@router.get("/", response_model=Health, summary="Health check")
def health(services: ServicesDep) -> Health:
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
        storage=services.storage.backend,
    )


@router.post("/generate", include_in_schema=False, response_model=GenerateResponse)
@router.post("/generate/", response_model=GenerateResponse, responses=ERRORS, summary="Generate music")
async def generate(request: GenerateRequest, services: ServicesDep) -> GenerateResponse:
    """Generate music from a text description and store it as a WAV file."""
    params = GenerationParams(
        prompt=request.text,
        duration=request.duration,
        guidance_scale=request.guidance_scale,
        temperature=request.temperature,
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
    )
    return await run_in_threadpool(create_music_file, services, params)


def create_music_file(services: Services, params: GenerationParams) -> GenerateResponse:
    """Generate, encode and store one file, then keep only the newest files."""
    generator = services.generator
    try:
        samples = generator.generate(params)
    except ModelUnavailableError as exc:
        raise HTTPException(503, f"Model unavailable: {exc}") from exc
    except GenerationFailedError as exc:
        logger.error("generation failed: %s", exc)
        raise HTTPException(500, "Music generation failed") from exc
    except Exception as exc:
        logger.exception("generation failed")
        raise HTTPException(500, "Music generation failed") from exc
    wav = encode_wav(samples, generator.sample_rate)
    now = datetime.now(UTC)
    filename = new_filename(now)
    metadata = {
        "prompt": params.prompt,
        "duration": params.duration,
        "guidance_scale": params.guidance_scale,
        "temperature": params.temperature,
        "seed": params.seed,
        "model_id": services.settings.model_id,
        "sample_rate": generator.sample_rate,
        "created_at": now.isoformat(),
    }
    try:
        services.storage.save(filename, wav, metadata)
    except StorageError as exc:
        logger.exception("storage write failed")
        raise HTTPException(503, "Storage unavailable") from exc
    try:
        prune(services.storage, services.settings.max_files)
    except StorageError:
        # The new file is safe; the next save prunes again.
        logger.exception("pruning old files failed")
    return GenerateResponse(
        file_url=file_url(filename),
        duration=params.duration,
        timestamp=now.strftime(TIMESTAMP_FORMAT),
        prompt=params.prompt,
        seed=params.seed,
        filename=filename,
        sample_rate=generator.sample_rate,
    )


@router.get("/files", include_in_schema=False, response_model=list[FileInfo])
@router.get("/files/", response_model=list[FileInfo], responses=ERRORS, summary="List generated files")
def list_files(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100, description="Maximum files to return")] = 50,
    skip: Annotated[int, Query(ge=0, description="Number of files to skip")] = 0,
) -> list[FileInfo]:
    """Generated files, newest first."""
    try:
        files = services.storage.list_files()
    except StorageError as exc:
        raise HTTPException(503, "Storage unavailable") from exc
    return [
        FileInfo(
            filename=f.filename,
            url=file_url(f.filename),
            created_at=f.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            size_kb=round(f.size_bytes / 1024, 1),
        )
        for f in files[skip : skip + limit]
    ]


@router.get(
    "/files/{filename:path}",
    responses={
        200: {"content": {"audio/wav": {}}, "description": "The WAV file (local storage)"},
        307: {"description": "Redirect to a presigned download URL (S3 storage)"},
        400: {"model": ErrorResponse, "description": "Not a generated file name"},
        404: {"model": ErrorResponse, "description": "No such file"},
        503: {"model": ErrorResponse, "description": "Storage unavailable"},
    },
    summary="Download a file",
)
def download_file(filename: str, services: ServicesDep) -> Response:
    """The WAV itself (local storage) or a redirect to a short-lived presigned URL (S3)."""
    if not is_valid_filename(filename):
        raise HTTPException(400, "Invalid file name: expected gen_YYYYMMDD_HHMMSS_xxxxxxxx.wav")
    try:
        target = services.storage.download(filename)
    except StorageError as exc:
        raise HTTPException(503, "Storage unavailable") from exc
    if target is None:
        raise HTTPException(404, "File not found")
    if isinstance(target, LocalFile):
        return FileResponse(target.path, media_type="audio/wav", filename=filename)
    return RedirectResponse(target.url, status_code=307)
