"""``--workers N``: N relay processes on one port, each with its own single listener.

The parent binds the socket, forks the workers (each runs its own event loop,
hub and LISTEN connection on the inherited socket; the kernel spreads new
connections between them), restarts a worker that dies, and on SIGTERM/SIGINT
passes the signal on and waits for them to shut down gracefully.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

log = logging.getLogger("sserelay.workers")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket shared by the workers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def supervise(count: int, run_worker: Callable[[int], None], grace: float) -> int:
    """Fork ``count`` workers running ``run_worker(index)``; return when all have stopped."""
    children: dict[int, int] = {}  # pid -> index
    stopping = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                run_worker(index)
            except BaseException:
                log.exception("worker %d crashed", index)
                code = 1
            finally:
                os._exit(code)  # never run the parent's atexit handlers in a worker
        children[pid] = index

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            _signal(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(count):
        spawn(index)
    deadline: float | None = None
    while children:
        if stopping and deadline is None:
            deadline = time.monotonic() + grace
        if deadline is not None and time.monotonic() > deadline:
            for pid in children:
                _signal(pid, signal.SIGKILL)
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.1)
            continue
        index = children.pop(pid)
        if not stopping:
            log.error(
                "worker %d (pid %d) exited with status %d; restarting",
                index,
                pid,
                os.waitstatus_to_exitcode(status),
            )
            time.sleep(0.5)
            spawn(index)
    return 0


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
