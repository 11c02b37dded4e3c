"""The ``sserelay`` command, run as a real subprocess (``python -m sserelay``).

Long-running commands are driven through :class:`Proc`: its output is read line by
line on background threads, and a test waits for a line (``# listening on``,
``serving on``) with a deadline, never for a fixed time. On failure the message
shows everything the process printed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import psycopg
import pytest
from psycopg import sql

import sserelay
from sserelay.testing import SseClient
from sserelay.wire.envelope import event_from_notification

pytestmark = pytest.mark.integration

#: Variables that would change what the command does; tests set what they need.
_SETTINGS_VARS = re.compile(r"^(DATABASE_URL|ALLOWED_ORIGINS|LOG_LEVEL|SSERELAY_.*)$")


def command_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _SETTINGS_VARS.match(k)}
    # Not PYTHONUNBUFFERED: unbuffered, print() writes text and newline separately, and
    # the lines of two workers sharing the pipe interleave. (sserelay flushes its lines.)
    env.pop("PYTHONUNBUFFERED", None)
    env.update(extra)
    return env


def run(
    *args: str, input: str | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``sserelay ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "sserelay", *args],
        input=input,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=command_env(**env),
        timeout=timeout,
    )


@functools.cache
def raw_publish_flags() -> tuple[str, ...]:
    """``--no-durable`` where ``publish`` has it: these tests are about the raw NOTIFY path."""
    help_text = run("publish", "--help").stdout
    return ("--no-durable",) if "--no-durable" in help_text else ()


class Proc:
    """A running ``sserelay`` command whose output lines can be awaited with a deadline."""

    def __init__(self, args: Sequence[str], **env: str) -> None:
        self.args = list(args)
        # A session of its own: SIGINT/SIGTERM go only where a test sends them, and
        # cleanup can end the whole group (a serve parent and its workers) by its id.
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "sserelay", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=command_env(**env),
            start_new_session=True,
        )
        self.output: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._queues: dict[str, queue.Queue[str | None]] = {
            "stdout": queue.Queue(),
            "stderr": queue.Queue(),
        }
        self._threads = [
            threading.Thread(target=self._pump, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.popen.stdout), ("stderr", self.popen.stderr))
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, name: str, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.output[name].append(line)
            self._queues[name].put(line.rstrip("\n"))
        self._queues[name].put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def transcript(self) -> str:
        return (
            f"$ sserelay {' '.join(self.args)}  (exit status {self.popen.poll()})\n"
            f"--- stdout ---\n{''.join(self.output['stdout'])}"
            f"--- stderr ---\n{''.join(self.output['stderr'])}"
        )

    def line(self, stream: str = "stdout", timeout: float = 30.0) -> str:
        """The next line of ``stream``."""
        try:
            line = self._queues[stream].get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no line on {stream} within {timeout} s\n{self.transcript()}"
            ) from None
        if line is None:
            self._queues[stream].put(None)
            raise AssertionError(f"{stream} closed\n{self.transcript()}")
        return line

    def expect(self, pattern: str, stream: str = "stdout", timeout: float = 30.0) -> re.Match[str]:
        """Skip lines of ``stream`` until one matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no line matching {pattern!r} on {stream}\n{self.transcript()}"
                )
            line = self.line(stream, remaining)
            if match := re.search(pattern, line):
                return match

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``signum``; the exit status, once the output is complete."""
        self.popen.send_signal(signum)
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {timeout} s after signal {signum}\n{self.transcript()}"
            ) from None
        for thread in self._threads:
            thread.join(timeout)
        return code

    def kill(self) -> None:
        """Cleanup: end the process group this test started, if anything of it is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def started(args: Sequence[str], **env: str) -> Iterator[Proc]:
    proc = Proc(args, **env)
    try:
        yield proc
    finally:
        proc.kill()


class Listener:
    """A psycopg LISTEN connection (the CLI's publish is checked against the database)."""

    def __init__(self, dsn: str, channel: str) -> None:
        self.channel = channel
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def event(self, timeout: float = 10.0) -> tuple[str, str | None, str | None, int | None]:
        # Exhaust notifies(): leaving the generator early drops the rest of a batch.
        got = list(self.conn.notifies(timeout=timeout, stop_after=1))
        assert len(got) == 1, f"expected one notification on {self.channel!r}, got {got}"
        ev = event_from_notification(got[0].channel, got[0].payload)
        return ev.data, ev.event, ev.id, ev.retry


@pytest.fixture
def channel() -> str:
    return f"test-cli-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def listener(dsn: str, channel: str) -> Iterator[Listener]:
    listener = Listener(dsn, channel)
    yield listener
    listener.conn.close()


def assert_one_line_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"sserelay: error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    assert "Traceback" not in result.stderr


# -- --version -----------------------------------------------------------------------


def test_version() -> None:
    result = run("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"sserelay {sserelay.__version__}\n",
        "",
    )


def test_no_command() -> None:
    result = run()
    assert result.returncode == 2
    assert "usage: sserelay" in result.stderr
    assert "Traceback" not in result.stderr


# -- publish -------------------------------------------------------------------------


def test_publish(dsn: str, channel: str, listener: Listener) -> None:
    result = run(
        "publish", channel, "Hello, world!", "--event", "greeting", "--id", "7", "--dsn", dsn
    )
    assert (result.returncode, result.stderr) == (0, ""), result
    assert listener.event() == ("Hello, world!", "greeting", "7", None)


def test_publish_with_database_url_and_retry(dsn: str, channel: str, listener: Listener) -> None:
    result = run("publish", channel, "x", "--retry", "5000", DATABASE_URL=dsn)
    assert result.returncode == 0, result
    assert listener.event() == ("x", None, None, 5000)


def test_publish_plain(dsn: str, channel: str, listener: Listener) -> None:
    result = run("publish", channel, "plain 'quoted' \"text\"", *raw_publish_flags(), "--dsn", dsn)
    assert result.returncode == 0, result
    assert listener.event() == ("plain 'quoted' \"text\"", None, None, None)


def test_publish_reads_stdin(dsn: str, channel: str, listener: Listener) -> None:
    text = "line 1\nline 2: é ☃ 😀\n\n'; DROP TABLE x; --\n"
    result = run("publish", channel, "-", "--event", "multi", "--dsn", dsn, "--id", "1", input=text)
    assert result.returncode == 0, result
    assert listener.event() == (text, "multi", "1", None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sserelay.x", "data"], "channel names starting with 'sserelay.' are reserved"),
        (["x" * 64, "data"], "channel name is 64 bytes; PostgreSQL allows at most 63"),
        (["", "data"], "channel name is empty"),
        (["bell\x07", "data"], "channel name contains a control character"),
        (["c", "x" * 8000], "payload is 8011 bytes; PostgreSQL NOTIFY accepts at most 7999"),
        (["c", "x", "--id", "a\nb"], "SSE id may not contain a line break"),
        (["c", "x", "--event", "a\rb"], "SSE event may not contain a line break"),
        (["c", "x", "--retry", "-5"], "SSE retry must be a non-negative integer"),
    ],
)
def test_publish_errors(dsn: str, args: list[str], message: str) -> None:
    assert_one_line_error(run("publish", *args, "--dsn", dsn), message)


def test_publish_unreachable_database() -> None:
    result = run("publish", "c", "x", "--dsn", "postgresql://postgres@127.0.0.1:1/x")
    assert result.returncode == 2, result
    assert result.stderr.startswith("sserelay: error: publishing on 'c' failed:"), result.stderr
    assert "Traceback" not in result.stderr


# -- revoke --------------------------------------------------------------------------


def test_revoke(durable_dsn: str) -> None:
    subject = f"u{uuid.uuid4().hex[:8]}"
    result = run("revoke", "--sub", subject, "--dsn", durable_dsn)
    assert result.returncode == 0, result
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00\n", result.stdout)
    for args in (["--jti", "j1"], ["--channel", "room-*"]):
        assert run("revoke", *args, "--dsn", durable_dsn).returncode == 0
    with psycopg.connect(durable_dsn) as conn:
        rows = conn.execute("SELECT kind, value FROM sserelay.revocations ORDER BY kind").fetchall()
    assert rows == [("channel", "room-*"), ("jti", "j1"), ("subject", subject)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sub", ""], "the subject to revoke must be a non-empty string"),
        (["--jti", "a\tb"], "the jti to revoke must be at most 255 characters without control"),
        (["--channel", "x" * 300], "the channel pattern to revoke is invalid"),
        (["--sub", "u1", "--ttl", "0"], "is not a positive duration"),
    ],
)
def test_revoke_errors(durable_dsn: str, args: list[str], message: str) -> None:
    result = run("revoke", *args, "--dsn", durable_dsn)
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_revoke_needs_one_thing_and_the_schema(dsn: str) -> None:
    result = run("revoke", "--dsn", dsn)
    assert result.returncode == 2 and "one of the arguments --sub --jti --channel" in result.stderr
    result = run("revoke", "--sub", "a", "--jti", "b", "--dsn", dsn)
    assert result.returncode == 2 and "not allowed with argument" in result.stderr
    with sserelay_temporary(dsn) as bare:
        result = run("revoke", "--sub", "u1", "--dsn", bare)
        assert_one_line_error(result, "the sserelay schema is not installed")


@contextlib.contextmanager
def sserelay_temporary(dsn: str) -> Iterator[str]:
    from sserelay.testing import temporary_database

    with temporary_database(dsn) as bare:
        yield bare


# -- listen --------------------------------------------------------------------------

_HEADER = r"^\[\d\d:\d\d:\d\d\.\d{3}\] "


def read_block(proc: Proc) -> list[str]:
    """One event as ``sserelay listen`` prints it: the lines up to a blank line."""
    lines = []
    while line := proc.line(timeout=10):
        lines.append(line)
    return lines


def test_listen(dsn: str, channel: str) -> None:
    other = channel + "-2"
    with started(["listen", channel, other, "--dsn", dsn]) as proc:
        proc.expect(f"^# listening on {re.escape(channel)}$", "stderr")
        proc.expect(f"^# listening on {re.escape(other)}$", "stderr")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name, payload in [
                (channel, "Hello, world!"),
                (other, '{"event": "update", "id": 5, "data": {"text": "hi"}}'),
                (channel, '{"data": "line 1\\nline 2"}'),
            ]:
                conn.execute("SELECT pg_notify(%s, %s)", (name, payload))
        blocks = [read_block(proc) for _ in range(3)]
        assert re.match(_HEADER + re.escape(channel) + "$", blocks[0][0]), proc.transcript()
        assert blocks[0][1:] == ["Hello, world!"], proc.transcript()
        assert re.match(f"{_HEADER}{re.escape(other)}  event=update  id=5$", blocks[1][0])
        assert blocks[1][1:] == ['{"text":"hi"}'], proc.transcript()
        assert blocks[2][1:] == ["line 1", "line 2"], proc.transcript()
        code = proc.stop(signal.SIGINT)
    assert code == 0, proc.transcript()
    assert "Traceback" not in proc.transcript()


def test_listen_sees_cli_publish(dsn: str, channel: str) -> None:
    with started(["listen", channel, "--dsn", dsn]) as proc:
        proc.expect(f"^# listening on {re.escape(channel)}$", "stderr")
        result = run("publish", channel, "from the cli", "--event", "e", "--id", "9", "--dsn", dsn)
        assert result.returncode == 0, result
        block = read_block(proc)
        assert re.match(f"{_HEADER}{re.escape(channel)}  event=e  id=9$", block[0]), block
        assert block[1:] == ["from the cli"]
        assert proc.stop(signal.SIGTERM) == 0, proc.transcript()
    assert "Traceback" not in proc.transcript()


@pytest.mark.parametrize(
    ("channel_arg", "message"),
    [
        ("sserelay.probe", "channel names starting with 'sserelay.' are reserved"),
        ("é" * 32, "channel name is 64 bytes; PostgreSQL allows at most 63"),
        ("tab\there", "channel name contains a control character"),
    ],
)
def test_listen_bad_channel(dsn: str, channel_arg: str, message: str) -> None:
    assert_one_line_error(run("listen", "ok", channel_arg, "--dsn", dsn), message)


# -- serve: refused before anything starts ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "70000"], {}, "port must be between 0 and 65535, not 70000"),
        (["--port", "-1"], {}, "port must be between 0 and 65535, not -1"),
        (["--workers", "0"], {}, "workers must be at least 1, not 0"),
        (["--heartbeat", "0"], {}, "heartbeat must be a positive number of seconds, not 0.0"),
        ([], {"SSERELAY_PORT": "http"}, "SSERELAY_PORT='http' is not a valid int"),
        ([], {"SSERELAY_PORT": "99999"}, "port must be between 0 and 65535, not 99999"),
        ([], {"ALLOWED_ORIGINS": "example.com"}, "ALLOWED_ORIGINS entry 'example.com'"),
        ([], {"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD' is not a log level"),
        (["--port", "0"], {"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD' is not a log level"),
    ],
)
def test_serve_bad_settings(
    dsn: str, tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = run("serve", *args, "--dsn", dsn, SSERELAY_DATA_DIR=str(tmp_path / "pg"), **env)
    assert_one_line_error(result, message)


def test_log_level_flag(dsn: str) -> None:
    result = run("--log-level", "shout", "listen", "x", "--dsn", dsn)
    assert_one_line_error(result, "--log-level='shout' is not a log level")


def test_log_level_after_the_command(dsn: str) -> None:
    """``--log-level`` is accepted after the subcommand too, as the README lists it."""
    result = run("listen", "x", "--log-level", "shout", "--dsn", dsn)
    assert_one_line_error(result, "--log-level='shout' is not a log level")
    with started(["serve", "--port", "0", "--dsn", dsn, "--log-level", "DEBUG"]) as serve:
        serve.expect(r"serving on http://127\.0\.0\.1:\d+")
        assert serve.stop() == 0, serve.transcript()
        assert " DEBUG " in serve.transcript(), serve.transcript()


@pytest.mark.parametrize(
    "command", ["serve", "publish", "listen", "migrate", "prune", "token", "revoke", "demo"]
)
def test_every_command_has_help(command: str) -> None:
    """Each subcommand describes itself, every argument has help text, and the
    environment variables it reads are listed."""
    from sserelay.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    command_parser = sub.choices[command]  # type: ignore[index]
    assert command_parser.description, command
    assert "environment" in (command_parser.epilog or ""), command
    for action in command_parser._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"


def test_serve_port_not_a_number(dsn: str) -> None:
    result = run("serve", "--port", "eighty", "--dsn", dsn)
    assert result.returncode == 2
    assert "sserelay serve: error: argument --port: invalid int value: 'eighty'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_port_in_use(dsn: str, workers: str) -> None:
    with started(["serve", "--port", "0", "--dsn", dsn]) as first:
        port = first.expect(r"serving on http://127\.0\.0\.1:(\d+)").group(1)
        result = run("serve", "--port", port, "--workers", workers, "--dsn", dsn)
        assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}: Address already in use")
        assert first.stop() == 0, first.transcript()


# -- the README quick start: the embedded PostgreSQL -----------------------------------


@pytest.mark.e2e
async def test_quick_start_with_embedded_postgres(tmp_path: Path) -> None:
    """``sserelay serve`` with no database, a stream, and ``sserelay publish`` (no DSN)."""
    if importlib.util.find_spec("pgserver") is None:
        pytest.skip("the embedded PostgreSQL (pgserver) is not installed")
    data_dir = tmp_path / "pgdata"
    env = {"SSERELAY_DATA_DIR": str(data_dir)}
    exited = False
    try:
        with started(["serve", "--port", "0", "--heartbeat", "30"], **env) as serve:
            dsn = serve.expect(r"publish to it with:  psql '([^']+)'", timeout=60).group(1)
            port = int(serve.expect(r"serving on http://127\.0\.0\.1:(\d+)").group(1))
            assert str(data_dir) in dsn
            client = await SseClient.open("127.0.0.1", port, "/events/lobby")
            try:
                await client.wait_ready(timeout=30)
                result = run("publish", "lobby", "Hello, world!", timeout=60, **env)
                assert result.returncode == 0, result
                assert "Traceback" not in result.stderr, result.stderr
                event = await client.next_event(timeout=10)
                assert event.data == "Hello, world!", client.seen
            finally:
                await client.close()
            assert serve.stop(signal.SIGTERM, timeout=30) == 0, serve.transcript()
            exited = True
    finally:
        left_running = _stop_embedded(data_dir, wait=exited)
    assert "Traceback" not in serve.transcript()
    assert not left_running, f"the embedded PostgreSQL outlived sserelay\n{serve.transcript()}"


def _stop_embedded(data_dir: Path, *, wait: bool) -> bool:
    """Whether the embedded server was still running (then stopped here: this test started it).

    It stops when its last user exits: after a clean exit, give it a deadline to do so. After
    a failure (sserelay killed), stop the postmaster by the pid in its ``postmaster.pid``.
    """
    pid_file = data_dir / "postmaster.pid"
    if not _gone(pid_file, 20 if wait else 0):
        return False
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)  # fast shutdown
    _gone(pid_file, 20)
    return True


def _gone(path: Path, timeout: float) -> bool:
    """Poll until ``path`` is gone or ``timeout`` passes; whether it is still there."""
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # polling a condition against a deadline
    return path.exists()
