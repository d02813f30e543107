"""The ASGI app (`handler.app:app`) and the Lambda entry point (`handler.app.handler`)."""

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from mangum import Mangum

from handler import __version__
from handler.dependencies import Services
from handler.errors import install_error_handlers
from handler.job_records import JobDispatcher, job_id_from_event
from handler.jobs import LambdaJobInvoker, LocalJobQueue, fail_abandoned_jobs, run_job
from handler.musicgen.generator import ModelUnavailableError, MusicGenerator, MusicgenGenerator
from handler.observability.logs import configure_logging, log_context, take_cold_start
from handler.observability.requests import ObservedRequests
from handler.observability.traces import traced_lambda_handler
from handler.openapi import install_openapi
from handler.routes import router
from handler.security import KeyRing, SecurityHeaders, install_guards
from handler.security.auth import is_public
from handler.settings import Settings, get_settings
from handler.storage import (
    LocalStorage,
    S3Storage,
    Storage,
    StorageError,
    aws_client_config,
    aws_region,
    s3_client,
)
from handler.studio import install_studio

logger = logging.getLogger(__name__)


def storage_from_settings(settings: Settings) -> Storage:
    """S3 when a bucket is configured, else the local directory."""
    if settings.s3_bucket:
        client = s3_client(
            settings.boto_connect_timeout_seconds,
            settings.boto_read_timeout_seconds,
            settings.boto_max_attempts,
        )
        return S3Storage(client, settings.s3_bucket, settings.s3_prefix, settings.presign_expiry_seconds)
    return LocalStorage(settings.storage_dir)


def jobs_from_settings(settings: Settings) -> JobDispatcher:
    """Asynchronous self-invocation on Lambda, else a worker thread in this process."""
    if settings.aws_lambda_function_name:
        import boto3

        config = aws_client_config(
            settings.boto_connect_timeout_seconds,
            settings.boto_read_timeout_seconds,
            settings.boto_max_attempts,
        )
        client = boto3.client("lambda", region_name=aws_region(), config=config)
        return LambdaJobInvoker(client, settings.aws_lambda_function_name)
    return LocalJobQueue(settings.max_queued_jobs, settings.job_queue_timeout_seconds)


@asynccontextmanager
async def start_serving(app: FastAPI) -> AsyncIterator[None]:
    """Under a server that runs the lifespan (uvicorn, as `make run` starts it; Mangum's is off),
    the model starts loading, or baking its artifact at a first start, as the server starts
    rather than at the first request. `GET /` says when it is ready (`served_model`).

    Where jobs run in this process, what an earlier server killed mid-job left is settled first:
    its unfinished jobs are recorded failed and its half-written temporary files removed.
    """
    services: Services = app.state.services
    if services.jobs.worker is not None:
        try:
            services.storage.remove_leftovers()
            fail_abandoned_jobs(services)
        except StorageError:
            logger.exception("could not settle an earlier server's jobs")
    threading.Thread(target=_load_quietly, args=(services.generator,), name="model-load", daemon=True).start()
    yield


def _load_quietly(generator: MusicGenerator) -> None:
    # A failure is logged where it happens; `GET /` reports it and requests answer 503.
    with suppress(ModelUnavailableError):
        generator.load()


def create_app(
    settings: Settings | None = None,
    storage: Storage | None = None,
    generator: MusicGenerator | None = None,
    jobs: JobDispatcher | None = None,
) -> FastAPI:
    """Build the app; anything not given is made from the settings."""
    settings = settings or get_settings()
    app = FastAPI(
        title="S.Rocks.Music API",
        version=__version__,
        description="Generate music from text with Meta's MusicGen.",
        redirect_slashes=False,
        lifespan=start_serving,
    )
    services = Services(
        settings=settings,
        storage=storage or storage_from_settings(settings),
        generator=generator
        or MusicgenGenerator(settings.model_id, settings.model_precision, settings.artifact_cache_dir),
        jobs=jobs or jobs_from_settings(settings),
    )
    if isinstance(services.jobs, LocalJobQueue) and services.jobs.runner is None:
        services.jobs.runner = lambda job_id: run_job(services, job_id)
    app.state.services = services
    install_error_handlers(app)
    keys = KeyRing(settings.api_key_digests)
    install_guards(app, keys, settings.cors_origin_list)
    app.add_middleware(ObservedRequests)
    app.add_middleware(SecurityHeaders)
    app.include_router(router)
    install_studio(app)
    install_openapi(
        app,
        settings.max_duration,
        key_required=(lambda method, path: not is_public(method, path)) if keys.enabled else None,
    )
    return app


configure_logging()
app = create_app()
# Mangum would run the lifespan on every invocation, so nothing is loaded there.
http_handler = Mangum(app, lifespan="off")


@traced_lambda_handler
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry: job events run a generation job; everything else is an HTTP request. Every log
    line of the invocation carries its `function_request_id`."""
    with log_context(function_request_id=context.aws_request_id):
        job_id = job_id_from_event(event)
        if job_id is None:
            return http_handler(event, context)
        take_cold_start()
        record = run_job(app.state.services, job_id, time_budget_s=context.get_remaining_time_in_millis() / 1000)
        return {"job_id": job_id, "status": record.status.value if record else "unknown"}
