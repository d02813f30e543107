"""Error responses: JSON bodies, 400 for invalid input, nothing internal leaked."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from handler.openapi import documented_methods
from handler.schemas import ErrorDetail, ErrorResponse
from handler.storage import StorageError

logger = logging.getLogger(__name__)


def error_response(status_code: int, detail: str, errors: list[ErrorDetail] | None = None) -> JSONResponse:
    """A JSON error body in the API's one error shape."""
    body = ErrorResponse(detail=detail, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(status_code=status_code, content=body)


def _field_name(location: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in location if part not in ("body", "query", "path")]
    return ".".join(parts) or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        ErrorDetail(field=_field_name(tuple(error.get("loc", ()))), message=str(error.get("msg", "invalid")))
        for error in exc.errors()
    ]
    summary = "; ".join(f"{error.field}: {error.message}" for error in errors)
    return error_response(400, f"Invalid request: {summary}", errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    response = error_response(exc.status_code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        # Starlette's `Allow` names the methods of the first route matching the path only, and
        # /files/{filename} has one route for GET and another for DELETE.
        methods = {m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip()}
        methods |= documented_methods(request.app, request.url.path)
        response.headers["Allow"] = ", ".join(sorted(methods))
    return response


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("storage unavailable: %s", exc, extra={"path": request.url.path})
    return error_response(503, "Storage unavailable")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the API's JSON error shape."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(StorageError, _storage_error)
    # No handler for Exception: any other error a route raises reaches the logging middleware
    # (handler.observability.requests) first, which answers it with a JSON 500, so one registered here
    # (Starlette runs it in its outermost middleware, outside ours) would never run.
