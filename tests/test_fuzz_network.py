"""Fuzzing the native relay with whatever the network can send, for a bounded time.

One in-process relay (``header_timeout=1.0``) runs in a thread of its own, with its own
event loop, on a database of this module's own; one honest stream on it must receive
every event, in order, all along. The tests drive it from the main thread with plain
sockets (an event loop per batch), so hypothesis runs ordinary synchronous tests:

- structured requests (methods, targets, versions, headers, query strings, channel
  names, ``Last-Event-ID``, tokens in ``Authorization``/``Cookie``/``?token=``, bodies
  with ``Content-Length``/``Transfer-Encoding`` combinations), ``POST /publish`` bodies
  (JSON and forms, valid and forged tokens) and fully random bytes, sent whole or split
  at random points: never a 500 (nor any 5xx but 503), always answered or closed within
  the header timeout, the relay still serving; SQL in channel names executes nothing
  (a sentinel table survives);
- a connection flood past ``max_streams`` plus idle connections that never finish their
  head: 503s with ``Retry-After`` and 408s, memory bounded, the existing streams
  receiving every event in order.

The relay has a JWT secret, ``honest`` is its one public channel, and the valid tokens
the fuzzer uses may publish only on ``fuzz-*``: nothing it sends can reach the honest
stream except through a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sserelay.access.tokens import mint_token
from sserelay.relay import Relay
from sserelay.testing import SseClient, notify, running_relay, showing_frames

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    # The relay under test runs in another thread of this process, and psycopg_pool
    # jitters each new connection's lifetime with the global ``random`` (sserelay itself
    # has a generator of its own): hypothesis would take that for a strategy using it.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

HOST = "127.0.0.1"
HEADER_TIMEOUT = 1.0
#: How late past the header timeout an answer (or close) may come on a loaded CI box.
SLACK = 1.5
MAX_HEAD = 8192
ALLOWED_ORIGIN = "https://ok.test"
CHECK_EVERY = 5  # hypothesis examples between two honest-stream checks
SENTINEL = "fuzz_sentinel"
SECRET = "f" * 40
#: A token that verifies: read anything, publish on fuzz-* only.
VALID = mint_token(SECRET, subscribe=["*"], publish=["fuzz-*"], ttl=86_400, subject="fuzzer")
#: One signed with another secret.
FORGED = mint_token("g" * 40, subscribe=["*"], publish=["*"], ttl=86_400)

T = TypeVar("T")

# -- the relay, in a thread of its own -------------------------------------------------------


class RelayThread:
    """A relay and one honest stream on an event loop in another thread."""

    def __init__(self, dsn: str, **options: Any) -> None:
        self.dsn = dsn
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="fuzzed-relay", daemon=True)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.relay: Relay = None  # type: ignore[assignment]  # set once ready
        self.honest: SseClient = None  # type: ignore[assignment]
        self.sent = 0  # events sent to the honest stream so far
        self._stop: asyncio.Event | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start() or by the checks
            self.error = exc
            self.ready.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with running_relay(self.dsn, **self.options) as relay:
            self.relay = relay
            self.honest = await SseClient.open(HOST, relay.port, "/events/honest")
            try:
                with showing_frames(self.honest):
                    await self.honest.wait_ready()
                self.ready.set()
                await self._stop.wait()
            finally:
                await self.honest.close()

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(60), "relay did not start"
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        assert not self.thread.is_alive(), "relay thread did not stop"
        if self.error is not None:
            raise self.error

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the relay's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.relay.port

    def assert_alive(self) -> None:
        """The relay thread runs, its server accepts, its tasks run, it never sent a 5xx."""
        assert self.thread.is_alive() and self.error is None, self.error
        relay = self.relay
        assert relay._server is not None and relay._server.is_serving()
        assert set(relay.tasks.running()) >= {"listener", "heartbeats"}, relay.tasks.running()
        bad = {status: n for status, n in relay.rejected.items() if status >= 500}
        assert set(bad) <= {503}, f"the relay answered with 5xx: {dict(relay.rejected)}"
        assert 500 not in relay.rejected, dict(relay.rejected)

    def check_honest(self) -> None:
        """Send the honest stream a fresh event; it must be the next one it gets."""
        self.sent += 1
        expected = str(self.sent)

        async def check() -> None:
            await notify(self.dsn, "honest", expected)
            with showing_frames(self.honest):
                event = await self.honest.next_event(timeout=10)
            assert event.data == expected and event.event == "message", self.honest.seen
            self.honest.seen.clear()

        self.call(check())

    def connection_count(self) -> int:
        async def count() -> int:
            return len(self.relay.connections)

        return self.call(count())


@pytest.fixture(scope="module")
def nofile() -> None:
    """Room for the flood: both ends of every connection live in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 12_000
    if soft < want and (hard == resource.RLIM_INFINITY or hard >= want):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@pytest.fixture(scope="module")
def sentinel_dsn(module_dsn: str) -> str:
    """The module database (isolated: see conftest.module_dsn) with a sentinel table."""
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {SENTINEL} (id int)")
        conn.execute(f"INSERT INTO {SENTINEL} VALUES (42)")
    return module_dsn


@pytest.fixture(scope="module")
def fuzzed(sentinel_dsn: str, nofile: None) -> Iterator[RelayThread]:
    relay = RelayThread(
        sentinel_dsn,
        heartbeat=30.0,
        header_timeout=HEADER_TIMEOUT,
        max_channels_per_stream=4,
        max_header_bytes=MAX_HEAD,
        allowed_origins=(ALLOWED_ORIGIN,),
        jwt_secret=SECRET,
        public_channels=("honest",),
    )
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


def sentinel_exists(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(f"SELECT id FROM {SENTINEL}").fetchone()
    return row == (42,)


# -- talking to it -------------------------------------------------------------------------


@dataclass
class Exchange:
    """What one connection got back."""

    sent: list[bytes]
    raw: bytes = b""
    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    streaming: bool = False  # a 200 event stream (left open by the relay: we closed it)
    closed: bool = False  # EOF or reset from the relay
    reset: bool = False
    elapsed: float = 0.0

    def describe(self) -> str:
        return (
            f"sent {b''.join(self.sent)[:300]!r} -> got {self.raw[:300]!r} in {self.elapsed:.2f}s"
        )


STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")
HEADER_LINE = re.compile(r"[A-Za-z0-9-]+: [\x20-\x7e]*")


async def exchange(port: int, parts: list[bytes], pauses: list[float]) -> Exchange:
    """Send ``parts`` (pausing in between) and read until the relay closes, or its head
    says the connection became a stream, or the header timeout plus slack has passed."""
    result = Exchange(parts)
    start = time.monotonic()
    deadline = start + HEADER_TIMEOUT + SLACK
    reader, writer = await asyncio.open_connection(HOST, port)
    try:

        async def send() -> None:
            with contextlib.suppress(ConnectionError):
                for part, pause in zip(parts, pauses, strict=True):
                    if part:
                        writer.write(part)
                        await writer.drain()
                    if pause:
                        await asyncio.sleep(pause)

        sender = asyncio.create_task(send())
        try:
            while len(result.raw) < 1_000_000:
                try:
                    async with asyncio.timeout_at(
                        asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic())
                    ):
                        chunk = await reader.read(65536)
                except TimeoutError:
                    break
                except ConnectionError:
                    result.closed = result.reset = True
                    break
                if not chunk:
                    result.closed = True
                    break
                result.raw += chunk
                head, sep, _ = result.raw.partition(b"\r\n\r\n")
                if sep and b"text/event-stream" in head and head.startswith(b"HTTP/1.1 200"):
                    result.streaming = True
                    break
                if sep and head.startswith(b"HTTP/1.0 200") and b"text/event-stream" in head:
                    result.streaming = True
                    break
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
    finally:
        result.elapsed = time.monotonic() - start
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    head, sep, _ = result.raw.partition(b"\r\n\r\n")
    if result.raw:
        match = STATUS_LINE.match(result.raw)
        assert match, f"not an HTTP/1.x response: {result.describe()}"
        result.status = int(match.group(1))
        if sep:
            for line in head.decode("latin-1").split("\r\n")[1:]:
                assert HEADER_LINE.fullmatch(line), f"odd header {line!r}: {result.describe()}"
                name, _, value = line.partition(": ")
                result.headers.append((name.lower(), value))
    return result


def check_exchange(result: Exchange) -> None:
    """What every answer to anything must satisfy."""
    status = result.status
    assert status != 500, f"500: {result.describe()}"
    assert status is None or status < 500 or status == 503, f"5xx: {result.describe()}"
    # Answered (or at least closed) within the header timeout: never left hanging.
    assert result.closed or result.streaming, f"no answer, not closed: {result.describe()}"
    assert result.elapsed <= HEADER_TIMEOUT + SLACK, f"too slow: {result.describe()}"
    if status == 408:
        assert result.elapsed >= HEADER_TIMEOUT * 0.9, f"408 too early: {result.describe()}"
    names = [name for name, _ in result.headers]
    # Nothing the client sent turned into a header of its own (response splitting).
    known = {
        "content-type",
        "cache-control",
        "x-accel-buffering",
        "transfer-encoding",
        "connection",
        "content-length",
        "allow",
        "retry-after",
        "vary",
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-max-age",
        "access-control-allow-credentials",
        "www-authenticate",
    }
    assert set(names) <= known, f"unexpected headers {names}: {result.describe()}"
    if status is not None and status != 200 and not result.streaming:
        assert "content-length" in names, result.describe()
    if status == 200 and not result.streaming:
        assert "content-length" in names, result.describe()  # /healthz, /metrics


async def exchange_all(port: int, batch: list[tuple[list[bytes], list[float]]]) -> list[Exchange]:
    return list(await asyncio.gather(*(exchange(port, parts, pauses) for parts, pauses in batch)))


@dataclass
class Stats:
    examples: int = 0
    connections: int = 0
    statuses: Counter[int | None] = field(default_factory=Counter)
    resets: int = 0
    unanswered: list[str] = field(default_factory=list)


STATS: dict[str, Stats] = {}


def run_batch(fuzzed: RelayThread, name: str, batch: list[tuple[list[bytes], list[float]]]) -> None:
    stats = STATS.setdefault(name, Stats())
    results = asyncio.run(exchange_all(fuzzed.port, batch))
    for result in results:
        stats.statuses[result.status] += 1
        stats.resets += result.reset
        check_exchange(result)
    stats.examples += 1
    stats.connections += len(results)
    stats.unanswered += [r.describe() for r in results if r.status is None and not r.reset]
    fuzzed.assert_alive()
    if stats.examples % CHECK_EVERY == 0:
        fuzzed.check_honest()


# -- strategies ----------------------------------------------------------------------------


def pct(raw: bytes) -> str:
    return "".join(f"%{b:02X}" for b in raw)


SQL_NAMES = [
    f'x"; DROP TABLE {SENTINEL}; --',
    f"x'; DROP TABLE {SENTINEL}; --",
    f'"; DROP TABLE {SENTINEL}; SELECT "',
    f"$$; DROP TABLE {SENTINEL}; $$",
    "x\\'; SELECT pg_sleep(5); --",
    'a""b',
    "UNLISTEN *",
]

channel_names = st.one_of(
    st.sampled_from(["a", "honest", "Lobby", "news-1", "ümlaut", "日本", "sserelay.x", ""]),
    st.sampled_from(SQL_NAMES),
    st.text(min_size=0, max_size=20),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=70),
    st.builds(lambda n, c: c * n, st.integers(60, 66), st.sampled_from(["a", "é", "日"])),
    st.builds(lambda a, c: a + c, st.text(max_size=5), st.sampled_from(["\x00", "\r\n", "\x1f"])),
)

# A channel name as it may appear in a target: encoded, raw, or invalid UTF-8.
encoded_channels = st.one_of(
    channel_names.map(lambda name: quote(name, safe="")),
    channel_names.map(lambda name: quote(name, safe="/:;,=?&'\"$")),
    st.binary(min_size=1, max_size=20).map(pct),  # usually invalid UTF-8
    st.sampled_from(["%", "%4", "%zz", "%%", "%C3%28", "%ED%A0%80", "%0D%0AX-Injected:%201"]),
)

query_keys = st.sampled_from(["channel", "lastEventId", "history", "token", "x", "", "channel[]"])
query_values = st.one_of(
    encoded_channels,
    st.sampled_from(["0", "1", "-1", "1.2", "999999999", "9" * 40, "abc", "1%0D%0Adata:%20x"]),
    st.sampled_from([VALID, FORGED, VALID[:-3], VALID + "x", VALID.replace(".", "%2E")]),
)
queries = st.lists(
    st.builds(lambda k, v, eq: f"{k}={v}" if eq else k, query_keys, query_values, st.booleans()),
    max_size=8,
).map("&".join)

targets = st.one_of(
    st.builds(lambda c: "/events/" + c, encoded_channels),
    st.builds(lambda c: "/" + c, encoded_channels),
    st.builds(lambda q: "/events?" + q, queries),
    st.builds(lambda c, q: f"/events/{c}?{q}", encoded_channels, queries),
    st.sampled_from(
        [
            "*",
            "/",
            "/healthz",
            "/metrics",
            "/publish",
            "/events",
            "/events/",
            "//events/a",
            "/events/../healthz",
            "http://relay.test/events/abs",
            "https://relay.test:443/healthz?x=1",
            "relay.test:443",
            "/events/a#frag",
            "/events/a b",
            "/events/\t",
        ]
    ),
    st.builds(lambda n: "/events/" + "a" * n, st.sampled_from([62, 63, 64, 8000, 9000, 20000])),
).map(lambda t: t.encode("utf-8"))
raw_targets = st.one_of(
    targets,
    targets,
    targets,
    st.binary(max_size=30),
    st.builds(lambda t, b: t + b, targets, st.binary(min_size=1, max_size=4)),
)

methods = st.one_of(
    st.just(b"GET"),
    st.just(b"GET"),
    st.just(b"GET"),
    st.sampled_from(
        [
            b"GET",
            b"HEAD",
            b"POST",
            b"PUT",
            b"DELETE",
            b"OPTIONS",
            b"PATCH",
            b"TRACE",
            b"CONNECT",
            b"PRI",
            b"get",
            b"G",
            b"GETT",
            b"",
            b"M-SEARCH",
            b"PROPFIND",
        ]
    ),
    st.binary(min_size=1, max_size=8),
)
versions = st.one_of(
    st.just(b"HTTP/1.1"),
    st.just(b"HTTP/1.1"),
    st.just(b"HTTP/1.0"),
    st.sampled_from(
        [
            b"HTTP/1.1",
            b"HTTP/1.0",
            b"HTTP/2.0",
            b"HTTP/0.9",
            b"",
            b"HTTP/1.1 x",
            b"http/1.1",
            b"HTTP/1.2",
            b"HTTP/9.9",
            b"HTTP/1",
            b"HTTP/11.1",
            b"HTTP/1.1\r",
        ]
    ),
    st.binary(max_size=8),
)

header_names = st.one_of(
    st.sampled_from(
        [
            b"Host",
            b"Accept",
            b"Last-Event-ID",
            b"Origin",
            b"Authorization",
            b"Cookie",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Connection",
            b"Upgrade",
            b"Expect",
            b"Access-Control-Request-Method",
            b"X-Forwarded-For",
            b"last-event-id",
            b"HOST",
            b"",
            b" Host",
            b"Host ",
            b"X\x00Y",
            b"X\xffY",
            b"X Y",
            b"\xc3\xa9",
        ]
    ),
    st.binary(min_size=1, max_size=12),
)
header_values = st.one_of(
    st.sampled_from(
        [
            b"",
            b" ",
            b"text/event-stream",
            b"0",
            b"1",
            b"-1",
            b"chunked",
            b"gzip, chunked",
            b"close",
            b"keep-alive, Upgrade",
            b"websocket",
            b"100-continue",
            ALLOWED_ORIGIN.encode(),
            b"Bearer x.y.z",
            b"Bearer ",
            b"Basic dXNlcjpwYXNz",
            b"Bearer \xff\xfe",
            b"sserelay_token=abc",
            b"Bearer " + VALID.encode(),
            b"Bearer " + FORGED.encode(),
            b"sserelay_token=" + VALID.encode(),
            b"sserelay_token=; sserelay_token=x",
            b"1.2.3",
            b"1\x00",
            b"9" * 40,
            b"1\rdata: x",
            ALLOWED_ORIGIN.encode() + b"/",
            b"null",
            b"https://evil.test",
        ]
    ),
    st.binary(max_size=40),
    st.text(max_size=20).map(lambda t: t.encode("utf-8")),
    st.builds(lambda n: b"v" * n, st.sampled_from([4000, 8200, 20000])),
)
header_lines = st.one_of(
    st.builds(lambda n, v: n + b": " + v, header_names, header_values),
    st.builds(lambda n, v: n + b":" + v, header_names, header_values),
    st.builds(
        lambda n, v: n + b": " + v + b"\r\n  folded", header_names, header_values
    ),  # obs-fold
    st.sampled_from([b"NoColonHere", b": no name", b"\tX: tab-led", b" X: space-led", b"X:\x7f"]),
)

bodies = st.one_of(
    st.just((b"", b"")),
    st.builds(
        lambda n, b: (f"Content-Length: {n}\r\n".encode(), b),
        st.integers(0, 20),
        st.binary(max_size=20),
    ),
    st.builds(
        lambda b: (b"Transfer-Encoding: chunked\r\n", b),
        st.sampled_from(
            [
                b"0\r\n\r\n",
                b"5\r\nhello\r\n0\r\n\r\n",
                b"zz\r\n",
                b"5\r\nhel",
                b"ffffffffffffffffff\r\n",
            ]
        ),
    ),
    st.builds(
        lambda n, b: (f"Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n".encode(), b),
        st.integers(0, 10),
        st.sampled_from([b"0\r\n\r\n", b"3\r\nabc\r\n0\r\n\r\n", b""]),
    ),
    st.sampled_from(
        [
            (b"Content-Length: 1\r\nContent-Length: 2\r\n", b"ab"),
            (b"Content-Length: -1\r\n", b""),
            (b"Content-Length: 1e3\r\n", b""),
            (b"Content-Length: 99999999999999999999\r\n", b""),
            (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
            (b"Transfer-Encoding: gzip\r\n", b"abc"),
            (b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"),
        ]
    ),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(methods)
    target = draw(raw_targets)
    version = draw(versions)
    line_sep = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    line = method + b" " + target + (b" " + version if version else b"")
    headers = [b"Host: relay.test"] if draw(st.booleans()) else []
    headers += draw(st.lists(header_lines, max_size=6))
    if draw(st.booleans()):  # a duplicate of one of them
        headers += draw(st.lists(st.sampled_from(headers), max_size=3)) if headers else []
    body_headers, body = draw(bodies)
    head = line_sep.join([line, *headers]) + line_sep + body_headers.replace(b"\r\n", line_sep)
    return head + line_sep + body


@st.composite
def plausible_requests(draw: st.DrawFn) -> bytes:
    """Well-formed GETs whose parts are fuzzed: these reach routing, tokens and limits."""
    target = draw(targets)
    headers = [b"Host: relay.test", b"Accept: text/event-stream"]
    for name in (b"Authorization", b"Cookie", b"Last-Event-ID", b"Origin"):
        if draw(st.booleans()):
            value = draw(header_values)
            headers.append(name + b": " + value.replace(b"\r", b"").replace(b"\n", b""))
    return b"GET " + target + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n"


@st.composite
def split_sends(
    draw: st.DrawFn, payloads: st.SearchStrategy[bytes]
) -> tuple[list[bytes], list[float]]:
    """A payload, sent whole or in pieces, with short pauses in between."""
    data = draw(payloads)
    if len(data) < 2 or not draw(st.booleans()):
        return [data], [0.0]
    cuts = sorted(draw(st.sets(st.integers(1, len(data) - 1), min_size=1, max_size=4)))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    pauses = [draw(st.sampled_from([0.0, 0.0, 0.01, 0.05])) for _ in parts]
    return parts, pauses


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
    print_blob=True,
)


# -- the fuzz tests ------------------------------------------------------------------------


@FUZZ
@given(
    batch=st.lists(split_sends(st.one_of(requests(), plausible_requests())), min_size=1, max_size=8)
)
def test_fuzzed_requests(fuzzed: RelayThread, batch: list[tuple[list[bytes], list[float]]]) -> None:
    run_batch(fuzzed, "requests", batch)


@settings(FUZZ, max_examples=40)
@given(
    batch=st.lists(
        split_sends(st.one_of(st.binary(max_size=200), st.binary(min_size=1, max_size=4000))),
        min_size=1,
        max_size=8,
    )
)
def test_random_bytes(fuzzed: RelayThread, batch: list[tuple[list[bytes], list[float]]]) -> None:
    run_batch(fuzzed, "bytes", batch)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
publish_channels = st.one_of(
    st.sampled_from(["fuzz-a", "fuzz-b", "honest", "other"]), channel_names, json_values
)
complete_messages = st.fixed_dictionaries(
    {"channel": st.sampled_from(["fuzz-a", "fuzz-b"]), "data": json_values},
    optional={
        "event": st.one_of(st.text(max_size=12), st.sampled_from(["chat", "a\nb"])),
        "id": st.one_of(st.text(max_size=12), st.integers()),
    },
)
publish_fields = complete_messages | st.fixed_dictionaries(
    {},
    optional={
        "channel": publish_channels,
        "data": st.one_of(json_values, st.text(max_size=300)),
        "event": st.one_of(st.text(max_size=12), json_values, st.sampled_from(["a\nb", "x\r"])),
        "id": st.one_of(st.text(max_size=12), st.integers(), json_values),
        "retry": json_values,
    },
)


@st.composite
def publish_requests(draw: st.DrawFn) -> bytes:
    fields = draw(publish_fields)
    kind = draw(st.sampled_from(["json", "json", "form", "bytes", "twice"]))
    if kind == "json":
        body = json.dumps(fields).encode()
        ctype = b"application/json"
    elif kind == "twice":  # a field given twice: a 400 naming it, whichever it is
        name = draw(st.sampled_from(["channel", "data", "event", "id"]))
        body = json.dumps(fields)[:-1].encode() + b', "%s": "again"}' % name.encode()
        body = body.replace(b"{, ", b"{")
        ctype = b"application/json"
    elif kind == "form":
        pairs = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
        body = "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs.items()).encode()
        ctype = b"application/x-www-form-urlencoded"
    else:
        body = draw(st.binary(max_size=200))
        ctype = draw(
            st.sampled_from(
                [b"application/json", b"text/plain", b"application/json; charset=latin-1"]
            )
        )
    token = draw(st.sampled_from([VALID, VALID, FORGED, "", "x.y.z"]))
    target = draw(
        st.sampled_from([b"/publish", b"/publish?x=1", b"/publish?token=" + VALID.encode()])
    )
    headers = [b"Host: relay.test", b"Content-Type: " + ctype]
    if token:
        headers.append(b"Authorization: Bearer " + token.encode())
    if draw(st.booleans()):
        headers.append(b"Content-Length: %d" % len(body))
        payload = body
    else:
        headers.append(b"Transfer-Encoding: chunked")
        # Trailers: counted toward the head's limit, never changing a header.
        trailers = draw(
            st.lists(
                st.sampled_from(
                    [
                        b"Content-Type: text/plain\r\n",
                        b"Authorization: Bearer x.y.z\r\n",
                        b"Cookie: a=b\r\n",
                        b"X-Big: " + b"x" * 3000 + b"\r\n",
                        b"Content-Length: 0\r\n",
                    ]
                ),
                max_size=6,
            )
        )
        chunk = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
        payload = chunk + b"0\r\n" + b"".join(trailers) + b"\r\n"
    return b"POST " + target + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + payload


@settings(FUZZ, max_examples=40)
@given(batch=st.lists(split_sends(publish_requests()), min_size=1, max_size=6))
def test_fuzzed_publish(fuzzed: RelayThread, batch: list[tuple[list[bytes], list[float]]]) -> None:
    run_batch(fuzzed, "publish", batch)


def test_fuzzing_left_nothing_behind(fuzzed: RelayThread) -> None:
    """Every fuzzed connection is gone (only the honest stream is left), nothing was a 500."""
    fuzzed.assert_alive()
    deadline = time.monotonic() + HEADER_TIMEOUT + 10
    while fuzzed.connection_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fuzzed.connection_count() == 1, "fuzzed connections were left open"
    fuzzed.check_honest()
    assert sentinel_exists(fuzzed.dsn), "SQL in a channel name was executed"
    for name, stats in STATS.items():
        print(
            f"{name}: {stats.examples} examples, {stats.connections} connections, "
            f"statuses {dict(stats.statuses)}, resets {stats.resets}"
        )
        for line in stats.unanswered[:20]:
            print("  closed without an answer:", line)
    print("relay rejected:", dict(fuzzed.relay.rejected))
