"""The studio's security headers."""

from handler.studio.security import ASSET_HEADERS, content_security_policy, page_headers


def directives(policy: str) -> dict[str, list[str]]:
    parsed = [part.split() for part in policy.split(";")]
    return {words[0]: words[1:] for words in parsed}


def test_policy_allows_only_the_page_itself_without_inline_code() -> None:
    policy = directives(content_security_policy(None))
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert not any("unsafe" in source for sources in policy.values() for source in sources)


def test_policy_lets_the_page_follow_downloads_to_their_origin() -> None:
    policy = directives(content_security_policy("https://music.s3.eu-west-1.amazonaws.com"))
    assert policy["connect-src"] == ["'self'", "https://music.s3.eu-west-1.amazonaws.com"]
    # Clips play from blob: URLs of the fetched bytes, never from the bucket directly.
    assert policy["media-src"] == ["'self'", "blob:"]


def test_page_headers_add_the_policy_to_the_asset_headers() -> None:
    headers = page_headers(None)
    assert headers.items() >= ASSET_HEADERS.items()
    assert headers["Content-Security-Policy"] == content_security_policy(None)
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
