import hashlib
import hmac
import subprocess
import sys

import pytest

from handler.security.keys import KeyRing, key_digest, new_key, parse_digests
from handler.settings import Settings


def test_new_keys_are_random_and_accepted_by_their_digest_only() -> None:
    first, second = new_key(), new_key()
    assert first != second
    assert len(first) > 40
    keys = KeyRing([key_digest(first)])
    assert keys.enabled
    assert keys.accepts(first)
    assert not keys.accepts(second)
    assert not keys.accepts(key_digest(first))  # the digest itself is not a key
    assert not keys.accepts(None)
    assert not keys.accepts("")


def test_a_ring_without_digests_is_disabled_and_accepts_nothing() -> None:
    keys = KeyRing([])
    assert not keys.enabled
    assert not keys.accepts(new_key())


def test_every_digest_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    keys_given = [new_key() for _ in range(3)]
    ring = KeyRing([key_digest(key) for key in keys_given])
    compared: list[tuple[bytes, bytes]] = []
    compare_digest = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr("handler.security.keys.hmac.compare_digest", spy)
    assert ring.accepts(keys_given[0])  # a match on the first digest still compares the rest
    assert len(compared) == 3
    assert all(a == hashlib.sha256(keys_given[0].encode()).digest() for a, _ in compared)


def test_digests_are_parsed_from_a_comma_separated_list() -> None:
    a, b = key_digest("a"), key_digest("b")
    assert parse_digests(f" {a}, {b.upper()} ,") == {a, b}
    assert parse_digests("") == frozenset()


def test_settings_refuse_an_entry_that_is_not_a_digest_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="entry 2") as raised:
        Settings(api_keys=f"{key_digest('a')},srm_a-key-pasted-by-mistake")
    assert "pasted-by-mistake" not in str(raised.value)


def test_the_command_prints_a_key_and_its_digest() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "handler.security", "new"], capture_output=True, text=True, check=True
    )
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines() if line.startswith(("key:", "digest:")))
    key, digest = lines["key"].strip(), lines["digest"].strip()
    assert key_digest(key) == digest
    assert subprocess.run([sys.executable, "-m", "handler.security"], capture_output=True).returncode == 2
