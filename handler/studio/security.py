"""The security headers the studio's files are served with: a Content-Security-Policy without
`unsafe-inline`, no sniffing, no framing, no referrer."""

ASSET_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    # Revalidated on every load (StaticFiles answers 304 by ETag), so a new version shows at once.
    "Cache-Control": "no-cache",
}
"""Headers on every studio file."""


def content_security_policy(download_origin: str | None) -> str:
    """The page's policy: its own scripts, styles and API only, plus where downloads are redirected to.

    The page fetches each clip's bytes (to play, draw and save it) from `GET /files/{filename}`;
    with S3 storage that request follows a redirect to a presigned URL, which `connect-src` must
    allow. Clips play from `blob:` URLs made of those bytes.
    """
    connect = " ".join(["'self'", *([download_origin] if download_origin else [])])
    directives = {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self'",
        "media-src": "'self' blob:",
        "connect-src": connect,
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def page_headers(download_origin: str | None) -> dict[str, str]:
    """Headers on the page itself."""
    return {
        **ASSET_HEADERS,
        "Content-Security-Policy": content_security_policy(download_origin),
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
