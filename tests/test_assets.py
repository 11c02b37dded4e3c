"""The browser client as the relay serves it (``GET /sserelay.js``, ``/sserelay.classic.js``),
through both fronts: content, caching (versioned URL, ETag, 304), gzip, CORS; and the shipped
files: in the package data and within the size budget (issue 15: 4 KB minified and gzipped)."""

from __future__ import annotations

import gzip
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fronts import FRONTS, Front, serving
from sserelay.http import assets
from sserelay.testing import raw_request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "src" / "sserelay" / "static"
ORIGIN = "https://app.example"
BUDGET = 4096  # bytes, minified and gzipped (js/scripts/build.js checks the same)


@pytest.fixture(params=FRONTS)
async def front(request: pytest.FixtureRequest, module_dsn: str) -> AsyncIterator[Front]:
    async with serving(request.param, module_dsn, allowed_origins=(ORIGIN,)) as front:
        yield front


@pytest.mark.parametrize("name", assets.NAMES)
async def test_served_as_shipped_and_revalidated(front: Front, name: str) -> None:
    reply = await front.get(f"/{name}")
    assert reply.status == 200, reply.raw[:300]
    assert reply.body == (STATIC / name).read_bytes()
    assert reply.headers["content-type"] == "text/javascript; charset=utf-8"
    assert reply.headers["cache-control"] == "no-cache"
    assert reply.headers["x-content-type-options"] == "nosniff"
    etag = reply.headers["etag"]

    again = await front.get(f"/{name}", {"If-None-Match": etag})
    assert again.status == 304
    assert again.body == b""
    assert "content-length" not in again.headers, "a 304 must not claim an empty body"
    assert again.headers["etag"] == etag


async def test_versioned_url_is_immutable_and_gzip_is_offered(front: Front) -> None:
    url = assets.url("sserelay.js")
    assert url.startswith("/sserelay.js?v=")
    reply = await front.get(url, {"Accept-Encoding": "gzip, br"})
    assert reply.status == 200
    assert reply.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert reply.headers["content-encoding"] == "gzip"
    assert gzip.decompress(reply.body) == (STATIC / "sserelay.js").read_bytes()
    # Not the current version (a page rendered before an upgrade): no long-lived caching.
    stale = await front.get("/sserelay.js?v=0123456789abcdef")
    assert stale.headers["cache-control"] == "no-cache"


async def test_cors_as_configured(front: Front) -> None:
    allowed = await front.get("/sserelay.js", {"Origin": ORIGIN})
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert allowed.headers["vary"] == "Accept-Encoding, Origin", "one Vary line, both names"
    other = await front.get("/sserelay.js", {"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in other.headers


async def test_other_methods_refused(front: Front) -> None:
    request = b"POST /sserelay.js HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    refused = await raw_request("127.0.0.1", front.port, request)
    assert refused.status == 405


def test_shipped_files_within_budget_and_in_package_data() -> None:
    for name in assets.NAMES:
        size = len(gzip.compress((STATIC / name).read_bytes(), compresslevel=9))
        assert size <= BUDGET, f"{name}: {size} bytes gzipped, over the {BUDGET} budget"
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["sserelay"]
    shipped = {p.name for pattern in patterns for p in (ROOT / "src" / "sserelay").glob(pattern)}
    assert {*assets.NAMES, "sserelay.d.ts"} <= shipped
