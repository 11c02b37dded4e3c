"""``sserelay demo``: the chat example, running, in one command.

- ``--mode asgi`` (default): Django under uvicorn serves pages and streams (the
  in-process view, one listener).
- ``--mode wsgi``: Django's WSGI server for the pages, ``sserelay serve`` for the
  streams, sharing a token secret.

``--capture``: the chat's messages reach the pages by change data capture instead of
the app's publish (``CHAT_CAPTURE=1``): a capturer runs beside the servers (``serve
--capture`` in wsgi mode, ``manage.py sserelay_capture --run`` in asgi mode), so a row
inserted by ``psql`` appears too. It needs ``wal_level = logical`` (the embedded
PostgreSQL has it).

Without ``--dsn``/``DATABASE_URL`` it uses the embedded PostgreSQL. The example ships
in the package (:data:`EXAMPLE`, package data), so it runs from a wheel as from a clone;
``--example`` runs a copy of it from elsewhere.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ...errors import ConfigError

#: The chat example (a Django project: ``manage.py``, ``chatsite/``, ``chat/``), shipped
#: with the package.
EXAMPLE = Path(__file__).resolve().parent / "example"


def find_example(path: Path | None) -> Path:
    example = (path or EXAMPLE).resolve()
    if not (example / "manage.py").is_file():
        where = "--example" if path else "this installation of sserelay"
        raise ConfigError(
            f"no chat example at {example} ({where} has no manage.py): pass --example "
            f"with a copy of {EXAMPLE}, or reinstall sserelay"
        )
    return example


def _require(module: str, hint: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"the demo needs {module}: {hint}")


def _wait_port(port: int, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise ConfigError(f"{proc.args!r} exited with {proc.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise ConfigError(f"nothing listens on port {port} after {timeout:.0f}s")


#: What ``--capture`` prints: a row inserted by another client than the site (for a shell).
INSERT = r"""INSERT INTO chat_message (room, \"user\", text) VALUES ('lobby', 'psql', 'hi')"""


def _commands(
    python: str,
    env: dict[str, str],
    *,
    mode: str,
    host: str,
    port: int,
    relay_port: int,
    capture: bool = False,
) -> tuple[list[tuple[list[str], dict[str, str]]], str]:
    """The processes of ``mode`` (each with its environment), and what serves what."""
    commands: list[tuple[list[str], dict[str, str]]] = []
    if mode == "asgi":
        uvicorn = [python, "-m", "uvicorn", "chatsite.asgi:application"]
        uvicorn += ["--host", host, "--port", str(port), "--timeout-graceful-shutdown", "3"]
        commands.append((uvicorn, env))
        how = "Django (ASGI, uvicorn) serves the pages and the streams"
        if capture:
            commands.append(([python, "manage.py", "sserelay_capture", "--run"], env))
    else:
        relay_env = dict(env, ALLOWED_ORIGINS=f"http://{host}:{port}")
        relay = [python, "-m", "sserelay", "serve", "--host", host, "--port", str(relay_port)]
        commands.append((relay + ["--capture"] * capture, relay_env))
        django_env = dict(env, CHAT_STREAM_URL=f"http://{host}:{relay_port}")
        runserver = [python, "manage.py", "runserver", f"{host}:{port}", "--noreload"]
        commands.append((runserver, django_env))
        how = f"Django (WSGI) serves the pages, `sserelay serve` the streams on :{relay_port}"
    if capture:
        how += ";\n  change data capture publishes the messages, whoever inserts them:\n\n"
        how += f'  psql {_shown(env["DATABASE_URL"])} -c "{INSERT}"\n'
    else:
        how += "."
    return commands, how


def _shown(dsn: str) -> str:
    """``dsn`` quoted for a shell; one with a password is not printed."""
    user = dsn.partition("://")[2].partition("@")
    if user[1] and user[0].partition(":")[2]:
        return '"$DATABASE_URL"' if os.environ.get("DATABASE_URL") == dsn else "YOUR-DSN"
    return "'" + dsn.replace("'", "'\\''") + "'"


def _install_capture(python: str, chat: Path, env: dict[str, str]) -> None:
    """``manage.py sserelay_capture``: the chat's capture rule (SSERELAY["CAPTURE"])."""
    done = subprocess.run([python, "manage.py", "sserelay_capture"], cwd=chat, env=env)
    if done.returncode != 0:
        raise ConfigError(
            "--capture: installing change data capture failed (the reason is above); "
            "it needs wal_level = logical, which the embedded PostgreSQL has"
        )


def _environment(dsn: str, chat: Path, *, capture: bool) -> dict[str, str]:
    """The example's environment: this one, with the database, a token secret (one drawn
    now unless given), and the capture switch as ``--capture`` says."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=dsn,
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        SSERELAY_JWT_SECRET=env.get("SSERELAY_JWT_SECRET") or secrets.token_urlsafe(32),
        PYTHONPATH=os.pathsep.join(p for p in (str(chat), env.get("PYTHONPATH")) if p),
    )
    env.pop("CHAT_STREAM_URL", None)
    env.pop("CHAT_CAPTURE", None)
    if capture:
        env["CHAT_CAPTURE"] = "1"
    return env


def run_demo(
    dsn: str,
    *,
    mode: str,
    host: str,
    port: int,
    relay_port: int,
    example: Path | None,
    capture: bool = False,
) -> int:
    """Migrate, start the servers, print the URL, and run until a signal. Returns the
    exit status."""
    _require("django", "pip install 'sserelay[demo]'")
    if mode == "asgi":
        _require("uvicorn", "pip install 'sserelay[demo]'")
    chat = find_example(example)
    env = _environment(dsn, chat, capture=capture)
    python = sys.executable
    subprocess.run(
        [python, "manage.py", "migrate", "--verbosity", "0"], cwd=chat, env=env, check=True
    )
    if capture:
        _install_capture(python, chat, env)
    url = f"http://{host}:{port}/"
    commands, how = _commands(
        python, env, mode=mode, host=host, port=port, relay_port=relay_port, capture=capture
    )
    procs = [subprocess.Popen(args, cwd=chat, env=e) for args, e in commands]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _wait_port(port, procs)
        print(f"\nsserelay demo: the chat is at {url}\n  {how}\n  Ctrl-C stops.", flush=True)
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    failed = [p.returncode for p in procs if p.returncode not in (0, -signal.SIGTERM)]
    return 0 if stopping or not failed else 1
