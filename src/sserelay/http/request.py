"""A request as every front hands it to :mod:`sserelay.http.front`: method, path, query,
the headers sserelay reads, and the client's address.

One extraction for every front (:class:`HeaderCollector`): names are lower-cased, only
the headers sserelay reads are kept (the last of each, several ``Cookie`` lines joined
with ``"; "``), and every byte of every header line, kept or not, counts toward the
head's size limit (431 past it) in linear time. Trailers of a chunked body count toward
the same limit and are never kept: a trailer cannot change a request's headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import HttpError

#: The request headers sserelay reads.
KEPT = frozenset(
    {
        "origin",
        "last-event-id",
        "access-control-request-method",
        "authorization",
        "cookie",
        "content-type",
        "content-length",
        "expect",
        "if-none-match",
        "accept-encoding",
        "x-forwarded-for",
        "x-forwarded-proto",  # the operator's page: its cookie Secure behind TLS
    }
)


def client_address(
    peer: str | None, headers: dict[str, str], trusted: tuple[str, ...]
) -> str | None:
    """The client's address: the TCP peer's, or, when the peer is a trusted proxy, the
    address its ``X-Forwarded-For`` names (the rightmost one no trusted proxy added)."""
    if peer is None or not (peer in trusted or "*" in trusted):
        return peer
    forwarded = headers.get("x-forwarded-for")
    if not forwarded:
        return peer
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not (hop in trusted or "*" in trusted):
            return hop[:64]
    return hops[0][:64] if hops else peer


def head_too_large(limit: int) -> HttpError:
    return HttpError(431, f"request head over {limit} bytes")


class HeaderCollector:
    """Collects header lines (and trailer lines) against a byte budget."""

    def __init__(self, limit: int, used: int = 0) -> None:
        self.limit = limit
        #: Bytes of the head so far: request target, header and trailer lines.
        self.used = used
        self._headers: dict[str, str] = {}
        self._cookies: list[str] = []
        self.complete = False

    def count(self, size: int) -> None:
        """Count ``size`` bytes of the head; HttpError 431 past the limit."""
        self.used += size
        if self.used > self.limit:
            raise head_too_large(self.limit)

    def add(self, name: bytes | str, value: bytes | str) -> None:
        """One header line (a trailer once :meth:`finish` was called: counted, not kept)."""
        raw_name = name.decode("latin-1") if isinstance(name, bytes) else name
        raw_value = value.decode("latin-1") if isinstance(value, bytes) else value
        self.count(len(raw_name) + len(raw_value) + 4)  # ": " and CRLF
        if self.complete:
            return
        key = raw_name.lower()
        if key == "cookie":
            self._cookies.append(raw_value)
        elif key in KEPT:
            self._headers[key] = raw_value

    def finish(self) -> dict[str, str]:
        """The headers kept; later lines are trailers."""
        self.complete = True
        if self._cookies:
            self._headers["cookie"] = "; ".join(self._cookies)
        return self._headers


@dataclass
class Request:
    """A request's head, as the fronts share it."""

    method: str
    #: Percent-encoded, as the client sent it (relative to the app's root under ASGI).
    path: str
    query: str
    headers: dict[str, str] = field(default_factory=dict)
    #: The TCP peer's address (the per-client limits), if known.
    client: str | None = None
    #: HTTP version: "1.1" (chunked streams) or "1.0" (streams end with the connection).
    version: str = "1.1"

    @property
    def origin(self) -> str | None:
        return self.headers.get("origin")
