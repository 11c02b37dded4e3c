"""Nothing fails silently: an unexpected exception in any long-lived task (the listener on
each bus, the pruner, a catch-up's read of the log) is logged with its traceback, counted
in ``/metrics``, shown to an operator in ``/healthz``, and recovered from; streams opened
before it receive the events published after it. A service that cannot be kept running
makes the relay refuse new streams and its process exit non-zero."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from sserelay import mint_token
from sserelay.core.supervisor import Supervisor
from sserelay.testing import SseClient, raw_request, showing_frames, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

HOST = "127.0.0.1"
SECRET = "supervision-test-secret-0123456789abcdef"
ADMIN = mint_token(SECRET, admin=True, ttl=600)
KEYED = {"jwt_secret": SECRET, "public_channels": ("*",)}


class Injected(RuntimeError):
    """The exception a test injects into a task."""


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def health(port: int, token: str | None = None) -> tuple[int, dict[str, Any]]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET /healthz HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
    response = await raw_request(HOST, port, request)
    return response.status, response.json()


async def metrics(port: int) -> str:
    response = await raw_request(HOST, port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    return response.body.decode()


def tracebacks(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info and text in str(r.exc_info[1])]


async def test_an_exception_in_the_listener_is_logged_shown_and_recovered(
    bus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with bus.relay(heartbeat=30.0, reconnect_min=0.05, **KEYED) as relay:
        client = await SseClient.open(HOST, relay.port, "/events/steady")
        try:
            with showing_frames(client):
                await client.wait_ready()
            listener = relay.listener
            step = listener._step
            calls = 0

            async def failing_step(conn: Any) -> None:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise Injected("injected into the listener")
                await step(conn)

            listener._step = failing_step  # type: ignore[method-assign]
            listener._wake.set()
            await wait_until(lambda: listener.failures == 1, timeout=30)
            assert tracebacks(caplog, "injected into the listener"), caplog.text
            await wait_until(lambda: relay.problem() is None, timeout=30)
            assert listener.reconnects >= 1
            status, detail = await health(relay.port, ADMIN)
            assert status == 200, detail
            assert detail["bus"]["failures"] == 1
            assert "Injected: injected into the listener" in detail["bus"]["last_failure"]
            assert metric(await metrics(relay.port), "sserelay_listener_failures_total") == 1
            # The stream opened before it gets what is published after it.
            await bus.notify("steady", "after the failure")
            with showing_frames(client):
                assert (await client.next_event()).data == "after the failure"
        finally:
            await client.close()


async def test_an_exception_in_the_pruner_restarts_it(
    durable_bus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"retention_count": 10, "prune_interval": 0.05, **KEYED}
    async with durable_bus.relay(heartbeat=30.0, **settings) as relay:
        prune = relay.log.prune
        calls = 0

        async def failing_prune(*args: Any) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise Injected("injected into the pruner")
            return await prune(*args)

        relay.log.prune = failing_prune  # type: ignore[method-assign]
        await wait_until(lambda: calls >= 3, timeout=30)  # it failed, was restarted, pruned
        assert tracebacks(caplog, "injected into the pruner"), caplog.text
        assert "pruner" in relay.tasks.running()
        status, detail = await health(relay.port, ADMIN)
        assert status == 200, detail
        assert detail["task_failures"] == {"pruner": 1}
        assert "Injected: injected into the pruner" in detail["last_failure"]
        text = await metrics(relay.port)
        assert 'sserelay_task_failures_total{task="pruner"} 1.0' in text


async def test_an_exception_in_a_catch_up_read_is_retried(
    durable_bus: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async with durable_bus.relay(heartbeat=30.0, **KEYED) as relay:
        first = await durable_bus.publish("replayed", "one")
        steady = await SseClient.open(HOST, relay.port, "/events/replayed")
        try:
            with showing_frames(steady):
                await steady.wait_ready()
            read_after = relay.log.read_after
            calls = 0

            async def failing_read(*args: Any, **kwargs: Any) -> Any:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise Injected("injected into a log read")
                return await read_after(*args, **kwargs)

            relay.log.read_after = failing_read  # type: ignore[method-assign]
            catching = await SseClient.open(
                HOST, relay.port, "/events/replayed?history=5", {"Accept": "text/event-stream"}
            )
            try:
                with showing_frames(catching):
                    assert (await catching.next_event()).id == first
                assert tracebacks(caplog, "injected into a log read"), caplog.text
                _, detail = await health(relay.port, ADMIN)
                assert detail["task_failures"] == {"log-read": 1}, detail
                assert 'sserelay_task_failures_total{task="log-read"} 1.0' in await metrics(
                    relay.port
                )
                second = await durable_bus.publish("replayed", "two")
                for client in (steady, catching):
                    with showing_frames(client):
                        event = await client.next_event()
                    assert (event.id, event.data) == (second, "two")
            finally:
                await catching.close()
        finally:
            await steady.close()


async def test_the_public_health_answer_names_no_detail(bus: Any) -> None:
    async with bus.relay(heartbeat=30.0, **KEYED) as relay:
        status, body = await health(relay.port)
        assert (status, body) == (200, {"status": "ok"})
        wrong = mint_token(SECRET, subscribe=["*"], ttl=600)  # valid, but not an admin
        assert await health(relay.port, wrong) == (200, {"status": "ok"})
        status, detail = await health(relay.port, ADMIN)
        assert detail["bus"]["broker"] == bus.kind and "pid" in detail


async def test_a_service_that_keeps_failing_is_fatal() -> None:
    fatal: list[str] = []
    tasks = Supervisor(lambda name, exc: fatal.append(name), max_restarts=2, window=60)
    runs = 0

    async def broken() -> None:
        nonlocal runs
        runs += 1
        raise Injected("always")

    tasks.service("broken", broken)
    await wait_until(lambda: fatal == ["broken"], timeout=30)
    assert runs == 3  # the first run and two restarts
    assert tasks.failures["broken"] == 3
    await tasks.close()


async def test_a_relay_whose_service_cannot_run_refuses_streams_and_says_why(
    bus: Any,
) -> None:
    async with bus.relay(heartbeat=30.0, **KEYED) as relay:
        relay.tasks.on_fatal("heartbeats", Injected("for the test"))
        await asyncio.wait_for(relay.failed(), 5)
        status, body = await health(relay.port)
        reason = "failed: the heartbeats cannot run"
        assert (status, body) == (503, {"status": "unavailable", "reason": reason})
        request = b"GET /events/x HTTP/1.1\r\nHost: x\r\n\r\n"
        response = await raw_request(HOST, relay.port, request)
        assert response.status == 503
        assert json.loads(response.body) == {"error": f"relay unavailable ({reason})"}
