"""Response heads and bodies every front shares: SSE headers, CORS, error bodies."""

from __future__ import annotations

import json
from http import HTTPStatus

SSE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "text/event-stream; charset=utf-8"),
    ("Cache-Control", "no-cache"),
    ("X-Accel-Buffering", "no"),
)

#: Request headers a browser may send cross-origin to a stream.
CORS_ALLOW_HEADERS = "Last-Event-ID, Cache-Control, Authorization, Content-Type"


def cors_headers(origin: str | None, allowed: tuple[str, ...]) -> list[tuple[str, str]]:
    """CORS response headers for ``origin`` under the ``ALLOWED_ORIGINS`` setting.

    An origin listed by name may send credentials (cookies, ``EventSource`` with
    ``withCredentials``); with ``*`` credentials are never allowed, so a cookie token
    cannot be used cross-origin.
    """
    if not origin or not allowed:
        return []
    if "*" in allowed:
        return [("Access-Control-Allow-Origin", "*")]
    if origin.rstrip("/") in allowed:
        return [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"),
        ]
    return [("Vary", "Origin")]


def preflight_headers(origin: str | None, allowed: tuple[str, ...]) -> list[tuple[str, str]]:
    headers = cors_headers(origin, allowed)
    if any(name == "Access-Control-Allow-Origin" for name, _ in headers):
        headers += [
            ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
            ("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS),
            ("Access-Control-Max-Age", "600"),
        ]
    return headers


def error_body(reason: str) -> bytes:
    """A one-line JSON body: ``{"error": "..."}``."""
    return json.dumps({"error": reason}).encode() + b"\n"


def status_line(status: int, version: str = "1.1") -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/{version} {status} {phrase}\r\n".encode()


def head(status: int, headers: list[tuple[str, str]], version: str = "1.1") -> bytes:
    lines = [status_line(status, version)]
    lines += [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers]
    lines.append(b"\r\n")
    return b"".join(lines)
