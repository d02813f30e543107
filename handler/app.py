"""The ASGI app (`handler.app:app`) and the Lambda entry point (`handler.app.handler`)."""

from fastapi import FastAPI
from mangum import Mangum

from handler import __version__
from handler.dependencies import Services
from handler.engine import MusicGenerator, TransformersMusicGenerator
from handler.errors import install_error_handlers
from handler.logs import configure_logging, log_requests
from handler.routes import router
from handler.settings import Settings, get_settings
from handler.storage import LocalStorage, S3Storage, Storage, s3_client


def storage_from_settings(settings: Settings) -> Storage:
    """S3 when a bucket is configured, else the local directory."""
    if settings.s3_bucket:
        return S3Storage(s3_client(), settings.s3_bucket, settings.s3_prefix, settings.presign_expiry_seconds)
    return LocalStorage(settings.storage_dir)


def create_app(
    settings: Settings | None = None,
    storage: Storage | None = None,
    generator: MusicGenerator | None = None,
) -> FastAPI:
    """Build the app; anything not given is made from the settings."""
    settings = settings or get_settings()
    app = FastAPI(
        title="S.Rocks.Music API",
        version=__version__,
        description="Generate music from text with Meta's MusicGen.",
        redirect_slashes=False,
    )
    app.state.services = Services(
        settings=settings,
        storage=storage or storage_from_settings(settings),
        generator=generator or TransformersMusicGenerator(settings.model_id),
    )
    install_error_handlers(app)
    app.middleware("http")(log_requests)
    app.include_router(router)
    return app


configure_logging()
app = create_app()
# Mangum would run the lifespan on every invocation, so nothing is loaded there.
handler = Mangum(app, lifespan="off")
