"""sserelay as a user gets it without a checkout: the wheel, installed in a fresh virtual
environment in a directory outside the repository.

- Without extras, every command that needs one says which (``pip install
  'sserelay[...]'``), never a traceback.
- With ``[demo]``, ``sserelay demo`` starts the chat example (shipped in the wheel) on the
  embedded PostgreSQL and prints its URL; the chat page answers, and a message posted
  through it arrives on two streams of the room.

The wheel is built with ``pip wheel`` from a copy of the checkout's files (tracked and
new, not ignored), so stale build output cannot leak into it. pip's cache makes the second
run fast; the first downloads Django, uvicorn and pgserver.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from checkout import copy_checkout
from sserelay.testing import SseClient, showing_frames

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

PIP_TIMEOUT = 600  # seconds for one pip command (downloads on a cold cache)


def run(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 120) -> str:
    """Run a command; fail with its output if it fails."""
    done = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = copy_checkout(work / "src")
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), "."],
        env=dict(os.environ),
        cwd=source,
        timeout=PIP_TIMEOUT,
    )
    (built,) = (work / "dist").glob("sserelay-*.whl")
    return built


class Venv:
    """A fresh virtual environment, used the way a user's shell would use it."""

    def __init__(self, path: Path, home: Path) -> None:
        self.path = path
        self.home = home  # the user's data directory (the embedded database's parent)
        run([sys.executable, "-m", "venv", str(path)], env=dict(os.environ), cwd=home)

    @property
    def env(self) -> dict[str, str]:
        # Nothing of this test's environment that would reach the checkout or change the
        # commands' settings: no PYTHONPATH, no virtualenv, no sserelay or database setting.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"PYTHONPATH", "VIRTUAL_ENV", "DATABASE_URL", "REDIS_URL", "LOG_LEVEL"}
            and not k.startswith(("SSERELAY_", "DJANGO_", "PG"))
        }
        env["PATH"] = f"{self.path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["XDG_DATA_HOME"] = str(self.home / "data")
        env["XDG_RUNTIME_DIR"] = str(self.home / "run")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def pip_install(self, requirement: str) -> None:
        pip = [str(self.path / "bin" / "python"), "-m", "pip", "install", "-q", requirement]
        run(pip, env=self.env, cwd=self.home, timeout=PIP_TIMEOUT)

    def sserelay(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.path / "bin" / "sserelay"), *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A venv outside the checkout with the bare wheel (no extras) installed."""
    home = tmp_path_factory.mktemp("user")
    (home / "run").mkdir(mode=0o700)
    made = Venv(home / "venv", home)
    made.pip_install(str(wheel))
    # What runs is the wheel's copy, not the checkout's (whose directory holds the test's).
    where = run(
        [str(made.path / "bin" / "python"), "-c", "import sserelay; print(sserelay.__file__)"],
        env=made.env,
        cwd=home,
    )
    assert Path(where.strip()).is_relative_to(made.path / "lib"), where
    return made


# The order matters: the first test runs on the bare install, the second adds [demo].


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["demo"], "demo"),
        (["serve"], "embedded"),
        (["migrate"], "embedded"),
        (["serve", "--redis", "redis://127.0.0.1:1/0"], "redis"),
        (["publish", "--redis", "redis://127.0.0.1:1/0", "lobby", "hi"], "redis"),
        (["listen", "--redis", "redis://127.0.0.1:1/0", "lobby"], "redis"),
        (["prune", "--redis", "redis://127.0.0.1:1/0", "--max-count", "5"], "redis"),
    ],
    ids=["demo", "serve", "migrate", "serve-redis", "publish-redis", "listen-redis", "prune-redis"],
)
def test_a_missing_extra_is_named(venv: Venv, args: list[str], extra: str) -> None:
    done = venv.sserelay(*args)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert f"pip install 'sserelay[{extra}]'" in done.stderr, output
    assert "Traceback" not in output


class Output:
    """A child's output, read by a thread of its own: lines so far, and a wait for one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of output
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if match := re.search(pattern, line):
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] == ""):
                    raise AssertionError(f"no {pattern!r} in the output:\n{self.text()}")
                self._changed.wait(left)

    def text(self) -> str:
        return "".join(self.lines)[-6000:]

    def close(self) -> None:
        """Once the child has exited: the rest of its output, and the pipe closed."""
        self._thread.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def demo(venv: Venv, wheel: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``sserelay demo`` from the wheel installed with ``[demo]``; yields it and its URL."""
    venv.pip_install(f"{wheel}[demo]")
    proc = subprocess.Popen(
        [str(venv.path / "bin" / "sserelay"), "demo", "--port", str(free_port())],
        env=venv.env,
        cwd=venv.home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output = Output(proc)
    try:
        # The first start makes the embedded database (initdb) and migrates: allow for it.
        yield proc, output.wait_for(r"the chat is at (http://\S+)", timeout=180).group(1)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as the demo says
        try:
            status = proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = None
        output.close()
        assert status == 0, f"demo: exit status {status} after SIGINT:\n{output.text()}"


async def test_demo_runs_from_the_wheel(demo: tuple[subprocess.Popen[str], str]) -> None:
    proc, url = demo
    room = f"wheel-{uuid.uuid4().hex[:6]}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as browser:
        index = await browser.get("/")
        assert index.status_code == 200, index.text
        assert "sserelay chat" in index.text
        entered = await browser.post(
            "/", data={"user": "ann", "room": room, "csrfmiddlewaretoken": _csrf(index.text)}
        )
        assert entered.status_code == 302, entered.text
        page = await browser.get(f"/room/{room}/")
        assert page.status_code == 200, page.text
        # What the page's client (sserelay.js) asks for: the room's channel from where the
        # page was rendered, with a token from the room's token URL.
        found = re.search(
            r'data-relay="([^"]*)" data-channel="([^"]+)" data-last-id="(\d+)" '
            r'data-token="([^"]+)"',
            page.text,
        )
        assert found, page.text
        relay, channel, last_id, token_url = found.groups()
        token = (await browser.get(token_url)).json()["token"]
        path = f"{relay}/events/{channel}?lastEventId={last_id}&token={token}"
        host, port = httpx.URL(url).host, httpx.URL(url).port
        assert port is not None
        clients = [await SseClient.open(host, port, path) for _ in range(2)]
        try:
            with showing_frames(*clients):
                for client in clients:
                    assert client.status == 200
                    await client.wait_ready(30)
                posted = await browser.post(
                    f"/room/{room}/",
                    data={"text": "hello from the wheel", "csrfmiddlewaretoken": _csrf(page.text)},
                    headers={"X-Requested-With": "fetch"},
                )
                assert posted.status_code == 204, posted.text
                for client in clients:
                    event = await client.next_event(30)
                    assert event.event == "message.created"
                    assert '"text": "hello from the wheel"' in event.data.replace('":"', '": "')
        finally:
            await asyncio.gather(*(client.close() for client in clients))
    assert proc.poll() is None, "the demo is still running"


def _csrf(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, html
    return match.group(1)
