"""Channel patterns in tokens and settings: an exact name, or a name with ``*`` wildcards.

Each ``*`` matches any run of zero or more characters (``room-*``, ``*-feed``,
``user/*/inbox``, ``*``). Nothing else is special: ``?``, ``[`` and ``\\`` are literal, and
there is no escape, so a pattern cannot grant a channel whose name contains ``*`` without
also granting the names the ``*`` matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import InvalidChannel
from ..wire.channels import MAX_CHANNEL_BYTES

CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a usable channel pattern, else raise InvalidChannel.

    The rules are those of channel names, applied to the text besides the ``*``s: at
    most 63 bytes of UTF-8, no NUL or control characters, valid unicode.
    """
    if not isinstance(pattern, str):
        raise InvalidChannel(f"channel pattern must be a string, not {type(pattern).__name__}")
    if not pattern:
        raise InvalidChannel("channel pattern is empty")
    shown = repr(pattern[:80])
    if any(0xD800 <= ord(c) <= 0xDFFF for c in pattern):
        raise InvalidChannel(f"channel pattern {shown} is not valid unicode")
    if CONTROL.search(pattern):
        raise InvalidChannel(f"channel pattern {shown} contains a control character")
    size = len(pattern.replace("*", "").encode("utf-8"))
    if size > MAX_CHANNEL_BYTES:
        raise InvalidChannel(
            f"channel pattern {shown} has {size} bytes besides its '*'s; "
            f"a channel name has at most {MAX_CHANNEL_BYTES}"
        )
    return pattern


def pattern_matches(pattern: str, channel: str) -> bool:
    """Whether ``channel`` matches ``pattern``, where each ``*`` matches zero or more
    characters and every other character only itself.

    No regex and no backtracking: the text before the first ``*`` must start the channel,
    the text after the last must end it, and each piece in between is found once, left
    to right, after the previous one (the leftmost match is always the best choice). So
    the cost is at most ``len(channel) * len(pattern)``, whatever the pattern, and
    ``a*a*a*a*b`` against ``aaaa...`` is as quick as any other.
    """
    if "*" not in pattern:
        return pattern == channel
    first, *middle, last = pattern.split("*")
    if len(first) + len(last) > len(channel):
        return False
    if not (channel.startswith(first) and channel.endswith(last)):
        return False
    position, end = len(first), len(channel) - len(last)
    for piece in middle:
        if piece:
            found = channel.find(piece, position, end)
            if found < 0:
                return False
            position = found + len(piece)
    return True


def matches_any(patterns: Iterable[str], channel: str) -> bool:
    return any(pattern_matches(pattern, channel) for pattern in patterns)
