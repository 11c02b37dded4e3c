"""The deployment configurations of the docs, run: what the docs test cannot run as pasted.

- nginx: each ``nginx`` block of docs/deployment.md and docs/django.md, in an nginx of the
  test's own, in front of a relay, with gzip on for ``text/event-stream`` (as a site that
  compresses everything has it) and a client that accepts gzip (as browsers do): the
  stream's ``: ready`` and an event arrive through it as they happen. The blocks are used as
  written but for what only a deployment has: each upstream's ``server`` lines point at the
  test's relay, and ``listen`` at a free port (no TLS).
- systemd: the unit of docs/deployment.md passes ``systemd-analyze verify``, its
  ``ExecStart`` pointed at this environment's ``sserelay``.

Needs Debian's nginx (and systemd for the second); skipped without them, except in CI
(``CI=true``), where .ci/run installs them.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from checkout import ROOT
from docs_blocks import Block, parse
from sserelay.testing import SseClient, notify, running_relay, showing_frames

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(120)]


def blocks(language: str, *docs: str) -> list[Block]:
    found = [b for doc in docs for b in parse(doc, (ROOT / doc).read_text())]
    return [b for b in found if b.language == language]


NGINX = blocks("nginx", "docs/deployment.md", "docs/django.md")
UNITS = [b for b in blocks("ini", "docs/deployment.md") if "[Service]" in b.text]


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found:
        return found
    reason = f"needs {name} (Debian's package)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: not found in CI, where .ci/run installs it")
    pytest.skip(reason)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_conf(block: Block, workdir: Path, port: int, relay_port: int) -> Path:
    """The block inside an ``http {}`` of the test's, pointed at the relay and ``port``."""
    text = re.sub(
        r"upstream\s+(\w+)\s*\{[^}]*\}",
        lambda m: f"upstream {m[1]} {{ server 127.0.0.1:{relay_port}; }}",
        block.text,
    )
    text, listens = re.subn(
        r"^(\s*)listen\s+[^;]*;", rf"\1listen 127.0.0.1:{port};", text, flags=re.M
    )
    if not listens:
        text = re.sub(r"server\s*\{", f"server {{\n    listen 127.0.0.1:{port};", text, count=1)
    temp = workdir / "temp"
    temp.mkdir()
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    # A site that compresses what it can, event streams included:
    gzip on;
    gzip_min_length 1;
    gzip_types text/event-stream application/json;
{text}
}}
"""
    )
    return conf


@asynccontextmanager
async def nginx(conf: Path) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        tool("nginx"),
        "-c",
        str(conf),
        "-p",
        str(conf.parent),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.terminate()
        await proc.wait()


def stream_path(block: Block, channel: str) -> str:
    """Where the block's streams are: its ``location`` that proxies to a relay path."""
    if "location /live/" in block.text:
        return f"/live/events/{channel}"
    return f"/events/{channel}"


@pytest.mark.parametrize("block", NGINX, ids=[b.where for b in NGINX])
async def test_events_arrive_through_nginx(dsn: str, block: Block, tmp_path: Path) -> None:
    tool("nginx")
    channel = f"nginx-{uuid.uuid4().hex[:8]}"
    async with running_relay(dsn, heartbeat=30.0) as relay:
        port = free_port()
        conf = nginx_conf(block, tmp_path, port, relay.port)
        async with nginx(conf):
            client = await _connect(port, stream_path(block, channel), tmp_path)
            try:
                with showing_frames(client):
                    assert client.status == 200, client.headers
                    await client.wait_ready(10)  # not held back by gzip
                    await notify(dsn, channel, "through nginx")
                    event = await client.next_event(10)
                    assert event.data == "through nginx"
            finally:
                await client.close()


async def _connect(port: int, path: str, workdir: Path) -> SseClient:
    """The stream through nginx, once nginx listens (it has 10 s)."""
    headers = {"Accept-Encoding": "gzip, deflate, br"}  # as a browser sends
    async with asyncio.timeout(10):
        while True:
            try:
                return await SseClient.open("127.0.0.1", port, path, headers)
            except OSError:
                await asyncio.sleep(0.05)
            log = workdir / "error.log"
            if log.exists() and "[emerg]" in log.read_text():
                raise AssertionError(f"nginx did not start:\n{log.read_text()}")


@pytest.mark.parametrize("block", UNITS, ids=[b.where for b in UNITS])
def test_systemd_unit_verifies(block: Block, tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    sserelay = Path(sys.prefix) / "bin" / "sserelay"
    unit = tmp_path / "sserelay.service"
    text, found = re.subn(r"^ExecStart=\S+", f"ExecStart={sserelay}", block.text, flags=re.M)
    assert found == 1, block.text
    unit.write_text(text)
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr
