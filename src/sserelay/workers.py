"""``--workers N``: N relay processes on one port, each with its own single listener.

The parent binds the socket, forks the workers (each runs its own event loop,
hub and LISTEN connection on the inherited socket; the kernel spreads new
connections between them), restarts a worker that dies, and on SIGTERM/SIGINT
passes the signal on and waits for them to shut down gracefully.

A worker whose supervisor dies (even by SIGKILL) is told by the kernel
(``PR_SET_PDEATHSIG`` on Linux) and, everywhere, notices its parent is gone within
a second: it shuts down as on SIGTERM, so no orphan keeps the port.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import sys
import threading
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


#: prctl(2) option: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGTERM this worker when its supervisor ``parent`` dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    def watch() -> None:  # portable fallback (and the race before prctl took effect)
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="sserelay-parent-watch", daemon=True).start()


def supervise(count: int, run_worker: Callable[[int], int], grace: float) -> int:
    """Fork ``count`` workers running ``run_worker(index)`` (which returns its exit
    status); return when all have stopped."""
    children: dict[int, int] = {}  # pid -> index
    stopping = False

    parent = os.getpid()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _die_with_parent(parent)
            _tag_logs(f"worker {index}")
            code = 0
            try:
                code = run_worker(index)
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


def _tag_logs(tag: str) -> None:
    """Put ``tag`` in every log line of this process (workers log to one terminal)."""
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        fmt = formatter._fmt if formatter is not None and formatter._fmt else "%(message)s"
        handler.setFormatter(logging.Formatter(fmt.replace("%(name)s", f"[{tag}] %(name)s")))


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
