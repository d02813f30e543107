"""What keeps the API safe on the internet: API keys, a bound on request bodies, CORS and
security headers, installed around the app as ASGI middleware."""

from handler.security.headers import SecurityHeaders
from handler.security.install import install_guards
from handler.security.keys import KeyRing, key_digest, new_key

__all__ = ["KeyRing", "SecurityHeaders", "install_guards", "key_digest", "new_key"]
