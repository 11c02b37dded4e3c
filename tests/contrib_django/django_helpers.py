"""Helpers for the Django tests: chat example servers in subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The chat example, where the package keeps it (``sserelay demo`` runs it from there).
CHAT = ROOT / "src" / "sserelay" / "contrib" / "django" / "example"
#: A secret for the tests that need tokens (32+ bytes).
SECRET = "test-secret-for-sserelay-django-tests-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server process of the chat example (uvicorn, runserver or ``sserelay serve``)."""

    def __init__(self, args: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.args = args
        self.env = env
        self.port = port
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=CHAT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Wait until the port accepts connections (or the process died: say why)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"server not listening after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not stop on {sig}:\n{self.log()}") from None


def chat_env(db: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=db,
        PYTHONPATH=os.pathsep.join([str(CHAT), env.get("PYTHONPATH", "")]),
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DJANGO_SECRET_KEY="test-only-secret-key",
        DJANGO_DEBUG="0",
    )
    env.pop("CHAT_STREAM_URL", None)
    env.pop("SSERELAY_JWT_SECRET", None)
    env.update(extra)
    return env


def asgi_server(db: str, log: Path, **env: str) -> Server:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "chatsite.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--timeout-graceful-shutdown",
        "2",
        "--no-access-log",
    ]
    return Server(args, chat_env(db, **env), port, log)


def relay_server(
    db: str, port: int, site_port: int, log: Path, *options: str, **extra: str
) -> Server:
    """``sserelay serve`` for the chat's WSGI site on ``site_port`` (``options``: more flags,
    e.g. ``--capture``)."""
    env = chat_env(
        db,
        SSERELAY_JWT_SECRET=SECRET,
        ALLOWED_ORIGINS=f"http://127.0.0.1:{site_port}",
        SSERELAY_RETRY_MS="300",
        **extra,
    )
    args = [sys.executable, "-m", "sserelay", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Server([*args, *options], env, port, log)


def wsgi_site(db: str, port: int, relay_port: int, log: Path, **extra: str) -> Server:
    """The chat under Django's WSGI server, its streams from the relay on ``relay_port``."""
    stream_url = f"http://127.0.0.1:{relay_port}"
    env = chat_env(db, SSERELAY_JWT_SECRET=SECRET, CHAT_STREAM_URL=stream_url, **extra)
    args = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    return Server(args, env, port, log)
