"""Load generator for SSE relays fed by PostgreSQL NOTIFY.

Opens N real SSE connections (raw asyncio sockets, spread over several client
processes), waits until every stream is subscribed, then publishes timestamped
events with ``pg_notify`` from a separate connection, either at a fixed rate or
as fast as one connection can for a bounded count. Every client checks what it
gets (delivered, lost, duplicated, out of order) and the NOTIFY-to-client
latency from the timestamp in the payload (same machine, same clock). The
coordinator samples the server's RSS and counts its PostgreSQL connections.

Each event's payload is the JSON envelope ``{"data": "<seq>:<time_ns>"}``, which
sserelay, ``bench/baseline.py`` and ``sse-relay-server`` all turn into the SSE
line ``data: <seq>:<time_ns>``. Only ``data:`` lines are parsed, with one regex
call per read. Even so, on loopback a client's kernel receive costs about what the
server's send does, so the busiest client process's CPU share is reported and
flagged past 85%: then the client side may be what limits the run.

With ``--redis URL`` the events are published with Redis ``PUBLISH`` (on
``--redis-prefix`` + channel, as a relay with that ``SSERELAY_REDIS_PREFIX`` listens),
the direct reference listener SUBSCRIBEs instead of LISTENing, and the server's
connections are counted in Redis's ``CLIENT LIST`` as well as PostgreSQL's.

Everything is bounded: connecting, readiness, publishing, draining and the whole
run have deadlines; the run stops by itself and leaves no process behind.

    python bench/loadgen.py --url http://127.0.0.1:8001/events/bench \\
        --clients 5000 --rate 10 --duration 20 --server-pid 1234
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import re
import resource
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

DATA_LINE = re.compile(rb"data: (\d+):(\d+)")
PAYLOAD = re.compile(r'"(\d+):(\d+)')
READY_COMMENT = b": ready"
HEAD_END = b"\r\n\r\n"
#: Linux IP_BIND_ADDRESS_NO_PORT: bind a source address, pick the port at connect().
IP_BIND_ADDRESS_NO_PORT = 24
#: A client process that used more CPU than this share of the window was the bottleneck.
SATURATED_CPU_SHARE = 0.85


@dataclass(frozen=True, slots=True)
class Config:
    """One load run, as given on the command line."""

    url: str
    clients: int
    channel: str
    dsn: str
    rate: float | None
    duration: float
    count: int
    procs: int
    ready: str  # "comment" | "headers" | "pg"
    settle: float
    source_addrs: int
    server_pid: int | None
    connect_timeout: float
    drain_timeout: float
    hold: float
    deadline: float
    label: str
    redis: str | None = None
    redis_prefix: str = ""
    #: Publish with HTTP POST to this URL ("{channel}" is replaced), e.g. nchan's /pub/{channel}.
    publish_url: str | None = None
    #: Streams are spread over this many channels (channel + index when more than one).
    channels: int = 1
    #: Pad each event's data to about this many bytes (0: no padding).
    payload_bytes: int = 0
    #: Connections opened at once per client process (until each is ready).
    connect_concurrency: int = 256

    def channel_name(self, index: int) -> str:
        """The name of channel ``index`` (the plain channel when there is only one)."""
        return self.channel if self.channels == 1 else f"{self.channel}{index}"

    def path_of(self, index: int) -> str:
        """The request target of a stream on channel ``index``."""
        _, _, path = self.target
        if self.channels == 1:
            return path
        base, sep, query = path.partition("?")
        return base[: len(base) - len(self.channel)] + self.channel_name(index) + sep + query

    @property
    def target(self) -> tuple[str, int, str]:
        parts = urllib.parse.urlsplit(self.url)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return parts.hostname or "127.0.0.1", parts.port or 80, path


# -- the client side -----------------------------------------------------------------


@dataclass(slots=True)
class WorkerTally:
    """What one client process saw, sent to the coordinator at the end."""

    index: int
    clients: int = 0
    connected: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    connect_seconds: float = 0.0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    closed_early: int = 0
    clients_with_loss: int = 0
    min_delivered: int = 0
    first_recv_ns: int = 0
    last_recv_ns: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


class SseClient(asyncio.Protocol):
    """One SSE stream: checks the head, waits for readiness, then tallies events."""

    def __init__(self, worker: Worker, channel: int) -> None:
        self.worker = worker
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.streaming = False
        #: Events seq, seq + K, ... go to channel seq % K (K channels): bit seq // K.
        self.channel = channel
        self.seen = bytearray(len(range(channel, worker.count, worker.cfg.channels)))
        self.unique = 0
        self.duplicated = 0
        self.out_of_order = 0
        self.last_seq = -1
        self.closed = False
        self.ready = worker.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc}"))

    def data_received(self, data: bytes) -> None:
        if not self.streaming:
            self.preamble(data)
            return
        self.parse(data)

    def preamble(self, data: bytes) -> None:
        """Head and readiness; whatever follows them is parsed as stream data."""
        self.buf += data
        end = self.buf.find(HEAD_END)
        if end < 0:
            return
        status = self.buf[: self.buf.find(b"\r\n")]
        if b" 200" not in status:
            self.fail(status.decode("latin-1", "replace"))
            return
        body = self.buf[end + len(HEAD_END) :]
        if self.worker.ready_mode == "comment":
            mark = body.find(READY_COMMENT)
            if mark < 0:
                return
            body = body[mark + len(READY_COMMENT) :]
        self.buf = b""
        self.streaming = True
        self.ready.set_result(None)
        if body:
            self.parse(body)

    def fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.abort()

    def parse(self, data: bytes) -> None:
        """The hot path: every complete ``data: <seq>:<ns>`` line in what has arrived."""
        buf = self.buf + data if self.buf else data
        end = buf.rfind(b"\n") + 1
        self.buf = buf[end:]
        if not end:
            return
        now = time.time_ns()
        worker = self.worker
        latencies = worker.latencies_us
        seen = self.seen
        events = DATA_LINE.findall(buf, 0, end)
        if not events:
            return
        stride = worker.cfg.channels
        worst = worker.worst_us
        for seq_text, ns_text in events:
            number = int(seq_text)
            seq = number // stride
            latency = (now - int(ns_text)) // 1000
            latencies.append(latency)
            if number < len(worst) and latency > worst[number]:
                worst[number] = latency
            if seq >= len(seen) or seen[seq]:
                self.duplicated += 1
                continue
            seen[seq] = 1
            self.unique += 1
            if seq < self.last_seq:
                self.out_of_order += 1
            else:
                self.last_seq = seq
            if self.unique == len(seen):
                worker.client_complete()
        if worker.first_recv_ns == 0:
            worker.first_recv_ns = now
        worker.last_recv_ns = now


class Worker:
    """One client process: ``clients`` streams on one event loop."""

    def __init__(self, cfg: Config, index: int, first: int, clients: int, pipe: Connection) -> None:
        self.cfg = cfg
        self.index = index
        self.first = first
        self.n = clients
        self.pipe = pipe
        self.loop = asyncio.get_running_loop()
        self.count = cfg.count
        self.ready_mode = "headers" if cfg.ready in ("pg", "nchan") else cfg.ready
        self.latencies_us: array.array[int] = array.array("q")
        #: The slowest delivery of each event (by its number): is the tail a few events?
        self.worst_us: array.array[int] = array.array("q", bytes(8 * cfg.count))
        self.first_recv_ns = 0
        self.last_recv_ns = 0
        self.clients: list[SseClient] = []
        self.complete = 0
        self.all_complete = asyncio.Event()
        self.tally = WorkerTally(index=index, clients=clients)

    def client_complete(self) -> None:
        self.complete += 1
        if self.complete >= self.tally.connected:
            self.all_complete.set()

    async def recv(self) -> Any:
        """The coordinator's next message, without blocking the loop."""
        fd = self.pipe.fileno()
        readable = self.loop.create_future()
        self.loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            await readable
        finally:
            self.loop.remove_reader(fd)
            os.set_blocking(fd, True)  # the loop made it non-blocking; big sends need blocking
        return self.pipe.recv()

    async def connect_one(self, i: int, gate: asyncio.Semaphore) -> SseClient | None:
        host, port, _ = self.cfg.target
        number = self.first + i  # this stream's number across all client processes
        channel = number % self.cfg.channels
        path = self.cfg.path_of(channel)
        client = SseClient(self, channel)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with gate:
                if self.cfg.source_addrs > 1:
                    n = number % self.cfg.source_addrs
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind((f"127.0.0.{1 + n}", 0))
                await self.loop.sock_connect(sock, (host, port))
                transport, _ = await self.loop.create_connection(lambda: client, sock=sock)
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
            )
            transport.write(request.encode())
            await client.ready
        except (OSError, ConnectionError) as exc:
            sock.close()
            key = type(exc).__name__ + ": " + str(exc)[:80]
            self.tally.errors[key] = self.tally.errors.get(key, 0) + 1
            return None
        return client

    async def connect_all(self) -> None:
        started = time.monotonic()
        gate = asyncio.Semaphore(self.cfg.connect_concurrency)
        tasks = [asyncio.ensure_future(self.connect_one(i, gate)) for i in range(self.n)]
        done, pending = await asyncio.wait(tasks, timeout=self.cfg.connect_timeout)
        for task in pending:
            task.cancel()
        self.clients = [c for t in done if (c := t.result()) is not None]
        self.tally.connected = len(self.clients)
        self.tally.failed = self.n - len(self.clients)
        if pending:
            self.tally.errors["not ready within connect timeout"] = len(pending)
        self.tally.connect_seconds = time.monotonic() - started

    async def run(self) -> None:
        await self.connect_all()
        self.pipe.send(("ready", asdict(self.tally)))
        message = await self.recv()
        if message[0] != "go":
            return
        cpu0, wall0 = time.process_time(), time.monotonic()
        if self.tally.connected == 0 or self.count == 0:
            self.all_complete.set()
        message = await self.recv()  # ("published", drain_timeout, published)
        published = self.count
        if message[0] == "published":
            published = message[2]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_complete.wait(), timeout=message[1])
        self.tally.cpu_seconds = time.process_time() - cpu0
        self.tally.wall_seconds = time.monotonic() - wall0
        self.summarise(published)
        self.pipe.send(
            ("result", asdict(self.tally), self.latencies_us.tobytes(), self.worst_us.tobytes())
        )
        await self.recv()  # ("close",): the coordinator has read the server's state
        for client in self.clients:
            if client.transport is not None:
                client.transport.abort()

    def summarise(self, published: int) -> None:
        t = self.tally
        stride = self.cfg.channels
        t.expected = sum(len(range(c.channel, published, stride)) for c in self.clients)
        t.delivered = sum(c.unique for c in self.clients)
        t.duplicated = sum(c.duplicated for c in self.clients)
        t.out_of_order = sum(c.out_of_order for c in self.clients)
        t.lost = t.expected - t.delivered
        t.closed_early = sum(c.closed for c in self.clients)
        t.clients_with_loss = sum(
            c.unique < len(range(c.channel, published, stride)) for c in self.clients
        )
        t.min_delivered = min((c.unique for c in self.clients), default=0)
        t.first_recv_ns, t.last_recv_ns = self.first_recv_ns, self.last_recv_ns


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def worker_main(cfg: Config, index: int, first: int, clients: int, pipe: Connection) -> None:
    """Entry point of a client process."""
    raise_nofile()
    # A lost coordinator must not leave this process behind.
    watchdog = threading.Timer(cfg.deadline + 10, os._exit, (4,))
    watchdog.daemon = True
    watchdog.start()

    async def main() -> None:
        await Worker(cfg, index, first, clients, pipe).run()

    with (
        asyncio.Runner(loop_factory=loop_factory()) as runner,
        contextlib.suppress(EOFError, BrokenPipeError),
    ):
        runner.run(main())
    os._exit(0)


def loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# -- the server side: RSS, CPU and PostgreSQL connections ----------------------------


def server_processes(pid: int) -> list[Any]:
    import psutil

    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


class DirectListener:
    """A plain LISTEN connection on the same channel, in a thread: PostgreSQL's own latency.

    NOTIFY-to-listener latency without any relay in the way. When the machine or the
    database is busy, this shows how much of the clients' latency PostgreSQL adds.
    """

    def __init__(self, dsn: str, channel: str) -> None:
        self.dsn = dsn
        self.channel = channel
        self.latencies_us: array.array[int] = array.array("q")
        self.listening = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        self.listening.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True, application_name="sserelay-bench") as db:
            db.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self.listening.set()
            while not self._stop.is_set():
                for n in db.notifies(timeout=0.2):
                    now = time.time_ns()
                    if match := PAYLOAD.search(n.payload):
                        self.latencies_us.append((now - int(match[2])) // 1000)


class NoListener(DirectListener):
    """No bus to listen on (an HTTP publisher such as nchan's): records nothing."""

    def start(self, timeout: float = 10.0) -> None:
        pass

    def stop(self) -> None:
        pass


class RedisDirectListener(DirectListener):
    """The same reference on Redis: a plain SUBSCRIBE on the channel, in a thread."""

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(url, channel)

    def _run(self) -> None:
        import redis

        with redis.Redis.from_url(self.dsn, client_name="sserelay-bench") as client:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.channel)
            self.listening.set()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message is None:
                    continue
                now = time.time_ns()
                if match := PAYLOAD.search(message["data"].decode()):
                    self.latencies_us.append((now - int(match[2])) // 1000)
            pubsub.close()


def redis_connections(url: str, pid: int | None) -> dict[str, Any]:
    """The server's connections to Redis, by client name (from CLIENT LIST)."""
    import redis

    if pid is None:
        return {}
    with redis.Redis.from_url(url) as client:
        port = client.connection_pool.connection_kwargs.get("port", 6379)
        ports: set[int] = set()
        with contextlib.suppress(Exception):
            for proc in server_processes(pid):
                for conn in proc.net_connections(kind="tcp"):
                    if conn.raddr and conn.raddr.port == port:
                        ports.add(conn.laddr.port)
        by_name: dict[str, int] = {}
        for entry in client.client_list():
            if int(str(entry["addr"]).rsplit(":", 1)[1]) in ports:
                name = str(entry.get("name") or "(none)")
                by_name[name] = by_name.get(name, 0) + 1
    return {"total": sum(by_name.values()), "by_application_name": by_name}


class ServerProbe:
    """Samples the server's RSS (all its processes) in a thread; peak kept."""

    def __init__(self, pid: int | None, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        if self.pid is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)

    def rss(self) -> int:
        if self.pid is None:
            return 0
        total = 0
        with contextlib.suppress(Exception):
            for proc in server_processes(self.pid):
                total += proc.memory_info().rss
        return total

    def processes(self) -> list[dict[str, Any]]:
        """Each server process's open files and RSS (MB): how streams spread over workers."""
        if self.pid is None:
            return []
        out = []
        with contextlib.suppress(Exception):
            for proc in server_processes(self.pid):
                out.append(
                    {"pid": proc.pid, "fds": proc.num_fds(), "rss_mb": mb(proc.memory_info().rss)}
                )
        return out

    def pss(self) -> int:
        """Proportional set size of the server's processes: pages shared by forked
        workers (or nginx's master and worker) counted once in all, not once each."""
        if self.pid is None:
            return 0
        total = 0
        with contextlib.suppress(Exception):
            for proc in server_processes(self.pid):
                total += proc.memory_full_info().pss
        return total

    def cpu_seconds(self) -> float:
        if self.pid is None:
            return 0.0
        total = 0.0
        with contextlib.suppress(Exception):
            for proc in server_processes(self.pid):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, self.rss())


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idling, since boot."""
    import psutil

    t = psutil.cpu_times()
    # guest time is already inside user time; idle and iowait are not work.
    busy = t.user + t.nice + t.system
    return float(busy + sum(getattr(t, f, 0.0) for f in ("irq", "softirq", "steal")))


def pg_connections(db: Any, pid: int | None, pg_port: int) -> dict[str, Any]:
    """The server's connections to PostgreSQL, found by their client ports."""
    if pid is None:
        return {}
    ports: list[int] = []
    with contextlib.suppress(Exception):
        for proc in server_processes(pid):
            for conn in proc.net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == pg_port:
                    ports.append(conn.laddr.port)
    rows = db.execute(
        "SELECT coalesce(application_name, ''), count(*) FROM pg_stat_activity"
        " WHERE client_port = ANY(%s) GROUP BY 1",
        (ports,),
    ).fetchall()
    by_name = {name or "(none)": n for name, n in rows}
    return {"total": sum(by_name.values()), "by_application_name": by_name}


# -- the publishers ------------------------------------------------------------------


def sender(cfg: Config, db: Any) -> tuple[Any, Any]:
    """``(send(channel, data), close())`` for the configured bus.

    PostgreSQL and Redis get the JSON envelope ``{"data": ...}`` (a relay turns it into a
    ``data:`` line); an HTTP publisher (nchan) gets the data itself as the POST body, on
    one keep-alive connection, and must answer 2xx.
    """
    if cfg.publish_url:
        poster = PipelinedPoster(cfg.publish_url, timeout=cfg.drain_timeout + 30)
        return poster.post, poster.close
    if cfg.redis:
        import redis

        client = redis.Redis.from_url(cfg.redis, client_name="sserelay-bench")

        def publish(channel: str, data: str) -> None:
            client.publish(cfg.redis_prefix + channel, json.dumps({"data": data}))

        return publish, client.close

    def notify(channel: str, data: str) -> None:
        db.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps({"data": data})))

    return notify, lambda: None


class PipelinedPoster:
    """HTTP POSTs on one keep-alive connection, sent on schedule without waiting for the
    answers (HTTP/1.1 pipelining); a thread reads the answers and counts refusals.

    Waiting for each answer would let a slow server slow the publisher down, and the
    events it failed to take in time would never show as latency (coordinated omission):
    nchan answers a publish only after its worker has handed the message on.
    """

    def __init__(self, url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.sock = socket.create_connection((self.host, parts.port or 80), timeout=10)
        self.sock.settimeout(None)
        self.timeout = timeout
        self.sent = 0
        self.answered = 0
        self.refused: list[str] = []
        self.done = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def post(self, channel: str, data: str) -> None:
        path = urllib.parse.urlsplit(self.url.format(channel=channel)).path
        body = data.encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: text/plain\r\n"
            f"Accept: text/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body)
        self.sent += 1

    def close(self) -> None:
        """Wait (bounded) for every answer; raise if one was not 2xx or never came."""
        deadline = time.monotonic() + self.timeout
        with self.done:
            while self.answered < self.sent and time.monotonic() < deadline:
                self.done.wait(0.5)
        self.sock.close()
        if self.refused:
            raise RuntimeError(f"{len(self.refused)} publishes refused: {self.refused[:3]}")
        if self.answered < self.sent:
            raise RuntimeError(f"only {self.answered} of {self.sent} publishes answered")

    def _read(self) -> None:
        buf = b""
        with contextlib.suppress(OSError):
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    data = self.sock.recv(65536)
                    if not data:
                        return
                    buf += data
                    continue
                head = buf[:end].decode("latin-1")
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                while len(buf) < end + 4 + length:
                    data = self.sock.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[end + 4 + length :]
                status = head.split(" ", 2)[1]
                with self.done:
                    if not status.startswith("2"):
                        self.refused.append(head.split("\r\n", 1)[0])
                    self.answered += 1
                    self.done.notify_all()


def nchan_subscribers(cfg: Config) -> int:
    """Subscribers nchan counts on the run's channels (its channel info, ``text/json``)."""
    import http.client

    assert cfg.publish_url is not None
    parts = urllib.parse.urlsplit(cfg.publish_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=5)
    total = 0
    try:
        for i in range(cfg.channels):
            path = urllib.parse.urlsplit(cfg.publish_url.format(channel=cfg.channel_name(i))).path
            conn.request("GET", path, headers={"Accept": "text/json"})
            reply = conn.getresponse()
            body = reply.read()
            if reply.status == 200:
                total += int(json.loads(body)["subscribers"])
    finally:
        conn.close()
    return total


# -- the coordinator -----------------------------------------------------------------


class Coordinator:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.ctx = mp.get_context("fork")
        self.workers: list[tuple[Any, Connection]] = []
        self.notes: list[str] = []

    def spawn(self) -> None:
        per = [self.cfg.clients // self.cfg.procs] * self.cfg.procs
        for i in range(self.cfg.clients % self.cfg.procs):
            per[i] += 1
        first = 0
        for index, n in enumerate(per):
            ours, theirs = self.ctx.Pipe()
            proc = self.ctx.Process(
                target=worker_main, args=(self.cfg, index, first, n, theirs), daemon=True
            )
            proc.start()
            theirs.close()
            self.workers.append((proc, ours))
            first += n

    def gather(self, kind: str, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        out = []
        for proc, pipe in self.workers:
            left = max(0.0, deadline - time.monotonic())
            if not pipe.poll(left):
                raise TimeoutError(f"client process {proc.pid} sent no {kind!r} in time")
            message = pipe.recv()
            if message[0] != kind:
                raise RuntimeError(f"expected {kind!r} from a client process, got {message[0]!r}")
            out.append(message[1:])
        return out

    def broadcast(self, *message: Any) -> None:
        for _, pipe in self.workers:
            with contextlib.suppress(OSError):
                pipe.send(message)

    def stop_workers(self) -> None:
        self.broadcast("close")
        for proc, _ in self.workers:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(1)

    def wait_nchan(self, expected: int, timeout: float) -> int:
        """``--ready nchan``: wait until nchan counts ``expected`` subscribers."""
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            n = nchan_subscribers(self.cfg)
            if n >= expected:
                break
            time.sleep(0.1)
        return n

    def wait_listening(self, db: Any, expected: int, timeout: float) -> int:
        """``--ready pg``: wait until ``expected`` backends ran ``LISTEN <channel>``."""
        deadline = time.monotonic() + timeout
        n = 0
        while time.monotonic() < deadline:
            n = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = %s",
                (f"LISTEN {self.cfg.channel}",),
            ).fetchone()[0]
            if n >= expected:
                break
            time.sleep(0.1)
        return int(n)

    def publish(self, db: Any) -> tuple[int, int, int]:
        """Publish ``count`` events; returns (published, first_ns, last_ns).

        Event ``seq`` goes to channel ``seq % channels``; its data is ``<seq>:<time_ns>``,
        padded with a space and ``x`` up to ``--payload-bytes``.
        """
        cfg = self.cfg
        send, close = sender(cfg, db)
        start = time.monotonic()
        stop_at = start + cfg.duration + 30 if cfg.rate else start + cfg.deadline
        first_ns = last_ns = 0
        published = 0
        names = [cfg.channel_name(i) for i in range(cfg.channels)]
        try:
            for seq in range(cfg.count):
                if cfg.rate:
                    delay = start + seq / cfg.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                if time.monotonic() > stop_at:
                    self.notes.append(f"publisher stopped early after {published} events")
                    break
                last_ns = time.time_ns()
                data = f"{seq}:{last_ns}"
                if cfg.payload_bytes > len(data) + 1:
                    data += " " + "x" * (cfg.payload_bytes - len(data) - 1)
                send(names[seq % cfg.channels], data)
                first_ns = first_ns or last_ns
                published += 1
        finally:
            close()
        return published, first_ns, last_ns

    def run(self) -> dict[str, Any]:
        import psycopg

        cfg = self.cfg
        probe = ServerProbe(cfg.server_pid)
        pg_port = urllib.parse.urlsplit(cfg.dsn).port or 5432
        rss_idle = probe.rss()
        self.spawn()
        try:
            readies = [r[0] for r in self.gather("ready", cfg.connect_timeout + 30)]
            connected = sum(r["connected"] for r in readies)
            probe.start()
            with psycopg.connect(cfg.dsn, autocommit=True, application_name="sserelay-bench") as db:
                listening = None
                if cfg.ready == "pg":
                    listening = self.wait_listening(db, connected, cfg.connect_timeout)
                elif cfg.ready == "nchan":
                    listening = self.wait_nchan(connected, cfg.connect_timeout)
                time.sleep(cfg.settle)
                pg = pg_connections(db, cfg.server_pid, pg_port)
                redis_conns = None
                if cfg.redis:
                    redis_conns = redis_connections(cfg.redis, cfg.server_pid)
                rss_subscribed = probe.rss()
                pss_subscribed = probe.pss()
                server_procs = probe.processes()
                first = cfg.channel_name(0)
                direct: DirectListener = DirectListener(cfg.dsn, first)
                if cfg.redis:
                    direct = RedisDirectListener(cfg.redis, cfg.redis_prefix + first)
                elif cfg.publish_url:
                    direct = NoListener(cfg.dsn, first)  # HTTP publishing: no bus in between
                direct.start()
                self.broadcast("go")
                if cfg.hold:
                    time.sleep(cfg.hold)
                cpu0, wall0 = probe.cpu_seconds(), time.monotonic()
                machine0 = machine_busy_seconds()
                published, first_ns, last_ns = self.publish(db)
                self.broadcast("published", cfg.drain_timeout, published)
                results = self.gather("result", cfg.drain_timeout + 60)
                server_cpu = probe.cpu_seconds() - cpu0
                server_wall = time.monotonic() - wall0
                machine_busy = machine_busy_seconds() - machine0
                rss_end = probe.rss()
                direct.stop()
                self.stop_workers()
        finally:
            probe.stop()
            for proc, _ in self.workers:
                if proc.is_alive():
                    proc.kill()
        tallies = [r[0] for r in results]
        latencies = array.array("q")
        worst = array.array("q", bytes(8 * cfg.count))
        for r in results:
            latencies.frombytes(r[1])
            theirs = array.array("q")
            theirs.frombytes(r[2])
            worst = array.array("q", map(max, worst, theirs))
        return self.report(
            readies=readies,
            tallies=tallies,
            latencies=latencies,
            worst=worst,
            published=published,
            first_ns=first_ns,
            last_ns=last_ns,
            pg=pg,
            redis_conns=redis_conns,
            direct=direct.latencies_us,
            listening=listening,
            rss_idle=rss_idle,
            rss_subscribed=rss_subscribed,
            pss_subscribed=pss_subscribed,
            server_procs=server_procs,
            rss_end=rss_end,
            peak_rss=max(probe.peak_rss, rss_subscribed, rss_end),
            server_cpu=server_cpu,
            server_wall=server_wall,
            machine_busy=machine_busy,
        )

    def report(self, **r: Any) -> dict[str, Any]:
        cfg = self.cfg
        tallies = r["tallies"]
        delivered = sum(t["delivered"] for t in tallies)
        connected = sum(t["connected"] for t in r["readies"])
        last_recv = max((t["last_recv_ns"] for t in tallies), default=0)
        window = (last_recv - r["first_ns"]) / 1e9 if last_recv and r["first_ns"] else 0.0
        errors: dict[str, int] = {}
        for t in r["readies"]:
            for k, v in t["errors"].items():
                errors[k] = errors.get(k, 0) + v
        cpu_share = max(
            (t["cpu_seconds"] / t["wall_seconds"] for t in tallies if t["wall_seconds"]),
            default=0.0,
        )
        wall = r["server_wall"] or 1.0
        server_share = r["server_cpu"] / wall
        clients_cpu = sum(t["cpu_seconds"] for t in tallies)
        # Everything else that ran meanwhile: PostgreSQL, the publisher, other users' work.
        other_cores = max(0.0, (r["machine_busy"] - r["server_cpu"] - clients_cpu) / wall)
        saturated = cpu_share > SATURATED_CPU_SHARE
        if saturated:
            self.notes.append(
                f"client side saturated: a client process used {cpu_share:.0%} of a core"
                f" while the server used {server_share:.0%}"
            )
        result = {
            "label": cfg.label,
            "url": cfg.url,
            "clients": cfg.clients,
            "connected": connected,
            "connect_errors": errors,
            "connect_seconds": max((t["connect_seconds"] for t in r["readies"]), default=0),
            "procs": cfg.procs,
            "mode": f"rate {cfg.rate:g}/s" if cfg.rate else "unthrottled",
            "published": r["published"],
            "publish_seconds": (r["last_ns"] - r["first_ns"]) / 1e9,
            "expected": sum(t["expected"] for t in tallies),
            "delivered": delivered,
            "lost": sum(t["lost"] for t in tallies),
            "duplicated": sum(t["duplicated"] for t in tallies),
            "out_of_order": sum(t["out_of_order"] for t in tallies),
            "closed_early": sum(t["closed_early"] for t in tallies),
            "clients_with_loss": sum(t["clients_with_loss"] for t in tallies),
            "min_delivered_per_client": min((t["min_delivered"] for t in tallies), default=0),
            "window_seconds": round(window, 3),
            "deliveries_per_s": round(delivered / window) if window > 0 else 0,
            "latency_ms": percentiles(r["latencies"]),
            # The events whose slowest delivery was slowest: [event number, ms], and how
            # many events had a delivery over 100 ms (a tail from a few events is a pause
            # somewhere; from all of them, a queue).
            "worst_events_ms": sorted(
                ([i, round(v / 1000, 1)] for i, v in enumerate(r["worst"])),
                key=lambda e: -e[1],
            )[:5],
            "events_over_100ms": sum(v > 100_000 for v in r["worst"]),
            "pg_direct_latency_ms": percentiles(r["direct"]),
            "server_pid": cfg.server_pid,
            "ready": cfg.ready,
            "channels": cfg.channels,
            "payload_bytes": cfg.payload_bytes,
            "server_processes": len(r["server_procs"]),
            "server_process_detail": r["server_procs"],
            "server_rss_mb": {
                "idle": mb(r["rss_idle"]),
                "subscribed": mb(r["rss_subscribed"]),
                "pss_subscribed": mb(r["pss_subscribed"]),
                "peak": mb(r["peak_rss"]),
                "end": mb(r["rss_end"]),
            },
            # (peak - idle) / streams: what serving them took, events in flight included.
            "server_rss_kb_per_stream": (
                round((r["peak_rss"] - r["rss_idle"]) / 1024 / connected, 2) if connected else None
            ),
            "server_cpu_seconds": round(r["server_cpu"], 3),
            "server_cpu_us_per_delivery": (
                round(r["server_cpu"] * 1e6 / delivered, 2) if delivered else None
            ),
            "server_cpu_share": round(server_share, 3),
            "machine_busy_cores": round(r["machine_busy"] / wall, 2),
            "other_cpu_cores": round(other_cores, 2),
            "client_cpu_share_max": round(cpu_share, 3),
            "client_saturated": saturated,
            "pg_connections": r["pg"],
            "redis_connections": r["redis_conns"],
            "broker": "redis" if cfg.redis else "postgres",
            "pg_listen_backends": r["listening"],
            "notes": self.notes,
        }
        return result


def mb(n: int) -> float:
    return round(n / 2**20, 1)


def percentiles(latencies_us: array.array[int]) -> dict[str, float | None]:
    if not latencies_us:
        return {"p50": None, "p90": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(latencies_us)
    n = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(n - 1, int(q * n))] / 1000, 2)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0), "n": n}


def table(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    rss = result["server_rss_mb"]
    pg = result["pg_connections"] or {}
    rows = [
        ("run", result["label"] or result["url"]),
        ("clients connected", f"{result['connected']} / {result['clients']}"),
        ("connect time", f"{result['connect_seconds']:.1f} s"),
        ("mode", result["mode"]),
        ("published", f"{result['published']} in {result['publish_seconds']:.2f} s"),
        (
            "delivered",
            f"{result['delivered']} of {result['expected']}  lost {result['lost']}  "
            f"dup {result['duplicated']}  out-of-order {result['out_of_order']}",
        ),
        ("clients with loss", f"{result['clients_with_loss']} (closed {result['closed_early']})"),
        (
            "slowest events",
            f"{result['events_over_100ms']} of {result['published']} had a delivery over"
            f" 100 ms; worst [event, ms]: {result['worst_events_ms']}",
        ),
        ("deliveries/s", f"{result['deliveries_per_s']:,} over {result['window_seconds']} s"),
        (
            "latency ms",
            f"p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}",
        ),
        (
            "Redis alone" if result.get("broker") == "redis" else "PostgreSQL alone",
            "p50 {p50}  p90 {p90}  p99 {p99}  max {max}  (a direct LISTEN, no relay)".format(
                **result["pg_direct_latency_ms"]
            ),
        ),
        (
            "server RSS MB",
            f"idle {rss['idle']}  subscribed {rss['subscribed']} (PSS {rss['pss_subscribed']})"
            f"  peak {rss['peak']}  end {rss['end']}"
            f"  = {result['server_rss_kb_per_stream']} KB/stream"
            f"  ({result['server_processes']} processes)",
        ),
        (
            "server CPU",
            f"{result['server_cpu_seconds']} s = {result['server_cpu_share']:.0%} of a core"
            f"  ({result['server_cpu_us_per_delivery']} us/delivery)",
        ),
        (
            "client CPU",
            f"max {result['client_cpu_share_max']:.0%} of a core"
            + ("  SATURATED" if result["client_saturated"] else ""),
        ),
        ("server PG connections", f"{pg.get('total')}  {pg.get('by_application_name')}"),
        (
            "server Redis conns",
            f"{(result.get('redis_connections') or {}).get('total')}"
            f"  {(result.get('redis_connections') or {}).get('by_application_name')}",
        ),
    ]
    if result["pg_listen_backends"] is not None:
        what = "nchan subscribers" if result.get("ready") == "nchan" else "LISTEN backends"
        rows.append((what, str(result["pg_listen_backends"])))
    if result["connect_errors"]:
        rows.append(("connect errors", json.dumps(result["connect_errors"])))
    rows.append(
        (
            "machine",
            f"{result['machine_busy_cores']} of {os.cpu_count()} cores busy;"
            f" {result['other_cpu_cores']} on other work (PostgreSQL, publisher, other users)",
        )
    )
    rows += [("note", note) for note in result["notes"]]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def parse_args(argv: list[str] | None = None) -> tuple[Config, str | None]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--url", required=True, help="stream URL, e.g. http://127.0.0.1:8001/events/bench"
    )
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--channel", help="channel to pg_notify (default: last path segment)")
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--rate", type=float, help="events/s (default: unthrottled)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds at --rate")
    p.add_argument("--count", type=int, help="events to publish when unthrottled (default 1000)")
    p.add_argument("--procs", type=int, default=2, help="client processes")
    p.add_argument(
        "--ready",
        choices=("comment", "headers", "pg", "nchan"),
        default="comment",
        help="comment: wait for ': ready'; headers: response head only; "
        "pg: head, then N backends in pg_stat_activity ran LISTEN <channel>; "
        "nchan: head, then nchan's channel info counts N subscribers",
    )
    p.add_argument("--settle", type=float, default=0.5, help="seconds to wait once all are ready")
    p.add_argument("--source-addrs", type=int, default=1, help="spread over 127.0.0.1..N")
    p.add_argument("--server-pid", type=int, help="pid of the server, for RSS/CPU/PG counts")
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--drain-timeout", type=float, default=30.0)
    p.add_argument("--hold", type=float, default=0.0, help="seconds to hold before publishing")
    p.add_argument("--deadline", type=float, help="hard bound on the whole run (seconds)")
    p.add_argument("--redis", help="publish with Redis PUBLISH on this URL instead of pg_notify")
    p.add_argument("--redis-prefix", default="", help="the relay's SSERELAY_REDIS_PREFIX")
    p.add_argument(
        "--publish-url",
        help="publish with HTTP POST of the data to this URL ({channel} replaced), e.g."
        " nchan's http://127.0.0.1:8090/pub/{channel}",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=1,
        help="spread the streams over this many channels (<channel>0 .. <channel>K-1);"
        " event seq goes to channel seq %% K",
    )
    p.add_argument("--payload-bytes", type=int, default=0, help="pad each event's data to N B")
    p.add_argument(
        "--connect-concurrency",
        type=int,
        default=256,
        help="streams each client process opens at once (each waits until it is ready)",
    )
    p.add_argument("--label", default="")
    p.add_argument("--json-out", help="append the JSON result line to this file")
    args = p.parse_args(argv)
    if args.rate:
        count = round(args.rate * args.duration)
    else:
        count = args.count if args.count is not None else 1000
    channel = args.channel or urllib.parse.urlsplit(args.url).path.rstrip("/").rsplit("/", 1)[-1]
    deadline = args.deadline or (
        args.connect_timeout
        + args.hold
        + (args.duration if args.rate else 60)
        + args.drain_timeout
        + 120
    )
    cfg = Config(
        url=args.url,
        clients=args.clients,
        channel=channel,
        dsn=args.dsn,
        rate=args.rate,
        duration=args.duration,
        count=count,
        procs=max(1, min(args.procs, args.clients)),
        ready=args.ready,
        settle=args.settle,
        source_addrs=args.source_addrs,
        server_pid=args.server_pid,
        connect_timeout=args.connect_timeout,
        drain_timeout=args.drain_timeout,
        hold=args.hold,
        deadline=deadline,
        label=args.label,
        redis=args.redis,
        redis_prefix=args.redis_prefix,
        publish_url=args.publish_url,
        channels=max(1, args.channels),
        payload_bytes=args.payload_bytes,
        connect_concurrency=max(1, args.connect_concurrency),
    )
    if cfg.ready == "nchan" and not cfg.publish_url:
        p.error("--ready nchan needs --publish-url (its channel info is read there)")
    return cfg, args.json_out


def main(argv: list[str] | None = None) -> int:
    cfg, json_out = parse_args(argv)
    raise_nofile()
    # The whole run is bounded: past the deadline, kill our client processes and leave.
    coordinator = Coordinator(cfg)

    def expire() -> None:
        print(f"loadgen: deadline of {cfg.deadline:.0f} s passed; aborting", file=sys.stderr)
        for proc, _ in coordinator.workers:
            with contextlib.suppress(Exception):
                proc.kill()
        os._exit(3)

    watchdog = threading.Timer(cfg.deadline, expire)
    watchdog.daemon = True
    try:
        result = None
        watchdog.start()
        result = coordinator.run()
    finally:
        watchdog.cancel()
    print(table(result), flush=True)
    line = json.dumps(result, sort_keys=True)
    print(line, flush=True)
    if json_out:
        with open(json_out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
