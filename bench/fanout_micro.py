"""The Python around each write of the fan-out, without the write: three shapes of the loop
over 5,000 fake connections whose ``write`` is a C builtin that does nothing useful.

  today   ``[sub for sub in subs if not sub.deliver(event)]`` with the native front's
          ``deliver`` (write, then check the transport's buffer against the bound)
  flag    the same, but the buffer is checked only when ``pause_writing`` set a flag
  direct  ``for write in writes: write(frame)`` (the hub holding bound writes)

It prints nanoseconds per delivery (min of 7 repeats): what each shape adds to the kernel's
send, which is the rest of a delivery's 7-10 us. CPU-bound and short, so it is steadier on a
shared machine than a load run, but still only a guide.

    .venv/bin/python bench/fanout_micro.py
"""

from __future__ import annotations

import argparse
import timeit
from typing import Any

from sserelay.wire.envelope import Event

STREAMS = 5000


class Today:
    def __init__(self) -> None:
        self.chunked = True
        self._write = len
        self._buffered = int
        self.max_buffer = 262144

    def deliver(self, event: Event) -> bool:
        frame = event.chunked if self.chunked else event.frame
        self._write(frame)
        size = self._buffered()
        return not size or size <= self.max_buffer or size <= len(frame)


class Flag(Today):
    congested = False

    def deliver(self, event: Event) -> bool:
        frame = event.chunked if self.chunked else event.frame
        self._write(frame)
        if not self.congested:
            return True
        size = self._buffered()
        return size <= self.max_buffer or size <= len(frame)


def main() -> None:
    event = Event("c", "12345:1234567890123456789")
    today: dict[Any, None] = {Today(): None for _ in range(STREAMS)}
    flag: dict[Any, None] = {Flag(): None for _ in range(STREAMS)}
    writes = [len] * STREAMS

    def loop_today() -> object:
        return [s for s in today if not s.deliver(event)]

    def loop_flag() -> object:
        return [s for s in flag if not s.deliver(event)]

    def loop_direct() -> None:
        frame = event.chunked
        for write in writes:
            write(frame)

    for name, fn in (("today", loop_today), ("flag", loop_flag), ("direct", loop_direct)):
        best = min(timeit.repeat(fn, number=200, repeat=7)) / 200 / STREAMS * 1e9
        print(f"{name:8s} {best:6.0f} ns per delivery")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    main()
