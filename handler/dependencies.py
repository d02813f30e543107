"""The services a request handler needs, taken from the app they were built into."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from handler.job_records import JobDispatcher
from handler.musicgen.generator import MusicGenerator
from handler.settings import Settings
from handler.storage import Storage


@dataclass(frozen=True)
class Services:
    """Everything the routes use, chosen once when the app is built."""

    settings: Settings
    storage: Storage
    generator: MusicGenerator
    jobs: JobDispatcher


async def get_services(request: Request) -> Services:
    """The services of the app serving this request."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
