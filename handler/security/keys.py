"""API keys: made at random, accepted by their SHA-256 digests, compared in constant time."""

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable

KEY_PREFIX = "srm_"
DIGEST_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def new_key() -> str:
    """A new random API key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """The SHA-256 hex digest of a key: what the server is configured with instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_digests(value: str) -> frozenset[str]:
    """Comma-separated SHA-256 hex digests; raises ValueError naming the first that is not one."""
    digests = [part.strip().lower() for part in value.split(",") if part.strip()]
    for digest in digests:
        if not DIGEST_PATTERN.match(digest):
            # Only the position is shown: a key pasted here by mistake must not reach the logs.
            raise ValueError(f"API_KEYS entry {digests.index(digest) + 1} is not a SHA-256 hex digest")
    return frozenset(digests)


class KeyRing:
    """The accepted keys, known only by their digests."""

    def __init__(self, digests: Iterable[str]) -> None:
        self._digests = tuple(bytes.fromhex(digest) for digest in digests)

    @property
    def enabled(self) -> bool:
        """Whether any key is configured: with none, the API is open."""
        return bool(self._digests)

    def accepts(self, key: str | None) -> bool:
        """Whether `key` is one of the accepted keys, in time that depends on neither the key nor
        which digest it matches: every digest is compared, each with `hmac.compare_digest`."""
        if key is None:
            return False
        presented = hashlib.sha256(key.encode()).digest()
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched
