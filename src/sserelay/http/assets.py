"""The browser client's files (``sserelay/static/``), as the relay serves them.

``GET /sserelay.js`` is the ES module, ``GET /sserelay.classic.js`` the classic script that
defines ``window.sserelay``; both are built from ``js/src/sserelay.js`` (see ``js/``) and
shipped in the wheel. :func:`url` gives a versioned URL (``?v=`` and a hash of the content):
that one is cached for a year (``immutable``); any other is revalidated each time against
its ``ETag`` (``304``). Compressed with gzip when the client accepts it. CORS follows
``ALLOWED_ORIGINS``, as for streams: a page importing the module from another origin needs
to be allowed (module scripts are fetched with CORS; classic scripts are not).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources

from .responses import cors_headers, error_body

__all__ = ["NAMES", "Asset", "load", "respond", "url"]

#: The files served, by name (the path is ``/`` + name).
NAMES = ("sserelay.js", "sserelay.classic.js")

CONTENT_TYPE = "text/javascript; charset=utf-8"
#: For a URL carrying the current version: the content under it never changes.
CACHE_VERSIONED = "public, max-age=31536000, immutable"
#: For any other URL: keep it, but ask every time whether it changed (a 304 when not).
CACHE_REVALIDATE = "no-cache"


@dataclass(frozen=True, slots=True)
class Asset:
    name: str
    body: bytes
    gzipped: bytes
    #: A hash of the content: the ``v`` of versioned URLs and the base of the ETags.
    version: str

    def etag(self, gzipped: bool) -> str:
        return f'"{self.version}{"-gz" if gzipped else ""}"'


@functools.cache
def load(name: str) -> Asset | None:
    """The file ``name`` (one of :data:`NAMES`), read once; None if it is not installed."""
    if name not in NAMES:
        raise ValueError(f"{name!r} is not one of {NAMES}")
    try:
        body = (resources.files("sserelay") / "static" / name).read_bytes()
    except FileNotFoundError:
        return None
    version = hashlib.sha256(body).hexdigest()[:16]
    return Asset(name, body, gzip.compress(body, compresslevel=9, mtime=0), version)


def url(name: str, base: str = "") -> str:
    """The versioned URL of ``name`` under ``base`` (a relay's URL, or ``""``)."""
    asset = load(name)
    version = f"?v={asset.version}" if asset is not None else ""
    return f"{base.rstrip('/')}/{name}{version}"


def respond(
    name: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    allowed_origins: tuple[str, ...],
) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) for ``GET /{name}``: 200, or 304 when ``If-None-Match``
    names the current ETag. ``headers`` are the request's, with lower-case names."""
    asset = load(name)
    cors = cors_headers(headers.get("origin"), allowed_origins)
    if asset is None:  # a source tree whose static/ was removed: say how to get it back
        reason = f"{name} is not installed; build it with npm run build in js/"
        return 404, [("Content-Type", "application/json"), *cors], error_body(reason)
    gzipped = "gzip" in headers.get("accept-encoding", "").lower()
    etag = asset.etag(gzipped)
    versioned = ("v", asset.version) in tuple(query)
    # One Vary header, not two: a front that sets headers by name (Django) keeps the last.
    vary = ["Accept-Encoding", *(value for key, value in cors if key == "Vary")]
    out = [
        ("Content-Type", CONTENT_TYPE),
        ("Cache-Control", CACHE_VERSIONED if versioned else CACHE_REVALIDATE),
        ("ETag", etag),
        ("Vary", ", ".join(vary)),
        ("X-Content-Type-Options", "nosniff"),
        *((key, value) for key, value in cors if key != "Vary"),
    ]
    if etag in (tag.strip() for tag in headers.get("if-none-match", "").split(",")):
        return 304, out, b""
    if gzipped:
        out.append(("Content-Encoding", "gzip"))
        return 200, out, asset.gzipped
    return 200, out, asset.body
