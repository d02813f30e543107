"""The request guards, in the order each must see a request."""

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from handler.security.auth import ApiKeyAuth
from handler.security.body_limit import BodySizeLimit
from handler.security.keys import KeyRing


def install_guards(app: FastAPI, keys: KeyRing, cors_origins: list[str]) -> None:
    """The checks a request passes before the routes, innermost first: keys are checked after
    CORS (a browser's preflight carries no key), and bodies are bounded before either reads them.
    Middleware added after these (request logs, `SecurityHeaders`) sees their refusals."""
    if keys.enabled:
        app.add_middleware(ApiKeyAuth, keys=keys)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Prefer"],
            expose_headers=["Location", "Retry-After", "Preference-Applied"],
            max_age=600,
        )
    app.add_middleware(BodySizeLimit)
