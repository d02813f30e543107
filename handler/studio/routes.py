"""The studio's routes: the page at `/studio`, its scripts and styles under `/studio/static/`."""

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from handler.dependencies import ServicesDep
from handler.studio.security import ASSET_HEADERS, page_headers

PAGE = Path(__file__).parent / "index.html"
"""The page, served with its security policy at `/studio`."""
STATIC_DIR = Path(__file__).parent / "static"
"""The page's scripts, styles and icon: hand-written and served as they are, no build step."""

STATIC_PATH = "/studio/static"

router = APIRouter(include_in_schema=False)


class StudioFiles(StaticFiles):
    """The studio's static files, each with the studio's asset headers."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        """The file (or a 304), with ASSET_HEADERS."""
        response = super().file_response(*args, **kwargs)
        response.headers.update(ASSET_HEADERS)
        return response


@router.get("/studio")
@router.get("/studio/")
def studio_page(services: ServicesDep) -> FileResponse:
    """The studio page, with a policy that lets it reach this storage's downloads."""
    return FileResponse(PAGE, headers=page_headers(services.storage.download_origin))


def install_studio(app: FastAPI) -> None:
    """Serve the studio from `app`."""
    app.include_router(router)
    app.mount(STATIC_PATH, StudioFiles(directory=STATIC_DIR), name="studio-static")
