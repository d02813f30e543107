"""What the OpenAPI document says each route answers: every status code it gives, with its body and headers.

A contract fuzzer (schemathesis, in tests/test_openapi.py) checks each answer against this.
"""

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.routing import compile_path

from handler.audio.output import FORMAT_DESCRIPTIONS, AudioFormat
from handler.schemas import ErrorResponse, JobAccepted

Responses = dict[int | str, dict[str, Any]]


def error(description: str) -> dict[str, Any]:
    """A documented error answer: the API's one error body."""
    return {"model": ErrorResponse, "description": description}


def header(description: str, schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """A documented response header."""
    return {"description": description, "required": required, "schema": schema}


INVALID = error("Invalid parameters: `detail` names each one and `errors` lists them")
SERVER_ERROR = error("Unexpected server error (nothing internal is shown)")
STORAGE_UNAVAILABLE = error("Storage unavailable")
FILE_NOT_FOUND = error("No such file; a name that isn't a generated file's is not found either")
RETRY_AFTER = header("Seconds to wait before polling the job", {"type": "integer", "minimum": 1})

HEALTH_RESPONSES: Responses = {500: SERVER_ERROR}

GENERATE_RESPONSES: Responses = {
    202: {
        "model": JobAccepted,
        "description": "Accepted as an asynchronous job: poll `status_url`",
        "headers": {
            "Location": header("The job's status URL", {"type": "string"}),
            "Retry-After": RETRY_AFTER,
            "Preference-Applied": header(
                "`respond-async` when the request asked for it", {"type": "string"}, required=False
            ),
        },
    },
    400: INVALID,
    413: error("Request body over 64 KiB (refused before it is read whole)"),
    429: {
        **error("Too many jobs waiting: the local queue is full, or this job would wait past its timeout"),
        "headers": {"Retry-After": header("Seconds to wait before trying again", {"type": "integer", "minimum": 1})},
    },
    500: error("Generation failed"),
    503: error("Model or storage unavailable, or the job could not be started"),
}

LIST_RESPONSES: Responses = {400: INVALID, 500: SERVER_ERROR, 503: STORAGE_UNAVAILABLE}

INFO_RESPONSES: Responses = {404: FILE_NOT_FOUND, 500: SERVER_ERROR, 503: STORAGE_UNAVAILABLE}

DOWNLOAD_RESPONSES: Responses = {
    200: {
        "description": "The audio file (local storage): "
        + "; ".join(f"{f.media_type} for .{f.value}, {FORMAT_DESCRIPTIONS[f]}" for f in AudioFormat),
        "content": {f.media_type: {"schema": {"type": "string", "format": "binary"}} for f in AudioFormat},
    },
    307: {
        "description": "Redirect to a short-lived presigned download URL (S3 storage)",
        "headers": {"Location": header("The presigned URL", {"type": "string"})},
    },
    404: FILE_NOT_FOUND,
    500: SERVER_ERROR,
    503: STORAGE_UNAVAILABLE,
}

DELETE_RESPONSES: Responses = {
    204: {"description": "Deleted: the file, its sidecar and its job record"},
    404: FILE_NOT_FOUND,
    409: error("The file's job is still queued or running"),
    500: SERVER_ERROR,
    503: STORAGE_UNAVAILABLE,
}

JOB_RESPONSES: Responses = {
    200: {"headers": {"Retry-After": {**RETRY_AFTER, "required": False}}},
    404: error("No such job"),
    500: SERVER_ERROR,
    503: STORAGE_UNAVAILABLE,
}

VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
"""FastAPI's own 422 body schemas: this API answers invalid input with 400 and ErrorResponse instead."""


KeyRequired = Callable[[str, str], bool]
"""Whether a request with this method and path needs an API key (`handler.security.auth`)."""

UNAUTHORIZED = {
    "description": "No accepted API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    "headers": {"WWW-Authenticate": header("`Bearer`, with the API's realm", {"type": "string"})},
}
"""The 401 as the document itself spells it (added to the generated document, not to a route)."""
SECURITY_SCHEMES = {
    "bearerKey": {"type": "http", "scheme": "bearer", "description": "An API key as a bearer token"},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def install_openapi(app: FastAPI, key_required: KeyRequired | None = None) -> None:
    """Make `app`'s OpenAPI document say what the API does: no 422 (invalid input is 400, documented
    per route), and where `key_required` (API keys are on), the key each operation needs and its 401."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = without_validation_errors(generate())
            if key_required is not None:
                document = with_api_keys(document, key_required)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def with_api_keys(document: dict[str, Any], key_required: KeyRequired) -> dict[str, Any]:
    """`document` with the API-key schemes, and on each operation that needs a key, them and its 401."""
    document.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for path, path_item in document.get("paths", {}).items():
        for method, operation in path_item.items():
            if key_required(method.upper(), path):
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
                operation.setdefault("responses", {})["401"] = UNAUTHORIZED
    return document


def without_validation_errors(document: dict[str, Any]) -> dict[str, Any]:
    """`document` without FastAPI's 422 answers and their schemas."""
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            operation.get("responses", {}).pop("422", None)
    schemas = document.get("components", {}).get("schemas", {})
    for name in VALIDATION_SCHEMAS:
        schemas.pop(name, None)
    return document


def documented_methods(app: FastAPI, path: str) -> set[str]:
    """The methods `app`'s OpenAPI document gives the path `path` (HEAD wherever GET is)."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern, _, _ = compile_path(template)
        if pattern.match(path):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return methods
