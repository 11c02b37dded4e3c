"""Channel names: what a stream may ask for and what PostgreSQL will LISTEN on.

PostgreSQL identifiers are at most 63 bytes (``NAMEDATALEN - 1``) and may not
contain NUL. We also refuse control characters, which have no business in a
channel name and would end up in logs and headers, and the ``sserelay.``
prefix, which the relay keeps for its own channels (the listener's probe).

Names are case-sensitive and used exactly as given: the relay LISTENs on the
quoted identifier. ``NOTIFY Lobby`` in SQL folds to ``lobby``; use
``NOTIFY "Lobby"`` or ``pg_notify('Lobby', ...)`` to reach a mixed-case name.
"""

from __future__ import annotations

import re

from ..errors import InvalidChannel

MAX_CHANNEL_BYTES = 63
RESERVED_PREFIX = "sserelay."

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_channel(name: object) -> str:
    """Return ``name`` if it is a usable channel name, else raise :class:`InvalidChannel`."""
    if not isinstance(name, str):
        raise InvalidChannel(f"channel name must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidChannel("channel name is empty")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_CHANNEL_BYTES:
        raise InvalidChannel(
            f"channel name is {size} bytes; PostgreSQL allows at most {MAX_CHANNEL_BYTES}"
        )
    if "\x00" in name:
        raise InvalidChannel("channel name contains a NUL character")
    if _CONTROL.search(name):
        raise InvalidChannel("channel name contains a control character")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise InvalidChannel("channel name is not valid unicode")
    if name.startswith(RESERVED_PREFIX):
        raise InvalidChannel(f"channel names starting with {RESERVED_PREFIX!r} are reserved")
    return name
