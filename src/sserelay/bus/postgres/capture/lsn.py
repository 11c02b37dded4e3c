"""LSNs (WAL positions) as PostgreSQL spells them: ``0/16B3748``."""

from __future__ import annotations

from .pgoutput import DecodeError


def format_lsn(lsn: int) -> str:
    """``0/16B3748``: PostgreSQL's spelling of an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """The inverse of :func:`format_lsn`."""
    high, sep, low = text.partition("/")
    try:
        if not sep:
            raise ValueError(text)
        value = (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise DecodeError(f"{text!r} is not an LSN like 0/16B3748") from None
    if not 0 <= value < 2**64 or int(low, 16) >= 2**32:
        raise DecodeError(f"{text!r} is not an LSN like 0/16B3748")
    return value
