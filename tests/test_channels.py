"""Channel names: every rule of ``channels.validate_channel``, and PostgreSQL agreeing."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from sserelay.errors import InvalidChannel, SseRelayError
from sserelay.wire.channels import MAX_CHANNEL_BYTES, RESERVED_PREFIX, validate_channel


@pytest.mark.parametrize(
    "name",
    [
        "lobby",
        "Lobby",  # case is kept: LISTEN uses the quoted identifier
        "a",
        "room:42",
        "user/7/inbox",
        "with space",
        "'; DROP TABLE x; --",
        'quote"d',
        "back\\slash",
        "%41",
        "sserelay",  # only the prefix with its dot is reserved
        "sserelayx",
        "SSERELAY.upper",  # names are case-sensitive, so is the prefix
        "x.sserelay.",
        "é" * 31,  # 62 bytes
        "€" * 21,  # 63 bytes
        "x" * MAX_CHANNEL_BYTES,
        "😀" * 15 + "abc",  # 63 bytes
        "\u2028\x85\ufeff",  # not ASCII control characters
        " ",
    ],
)
def test_accepted(name: str) -> None:
    assert validate_channel(name) is name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "channel name is empty"),
        ("x" * 64, "channel name is 64 bytes; PostgreSQL allows at most 63"),
        ("é" * 32, "channel name is 64 bytes; PostgreSQL allows at most 63"),
        ("😀" * 16, "channel name is 64 bytes; PostgreSQL allows at most 63"),
        ("a\x00b", "channel name contains a NUL character"),
        ("\x00", "channel name contains a NUL character"),
        ("a\nb", "channel name contains a control character"),
        ("a\rb", "channel name contains a control character"),
        ("tab\t", "channel name contains a control character"),
        ("\x1b[31m", "channel name contains a control character"),
        ("\x1f", "channel name contains a control character"),
        ("del\x7f", "channel name contains a control character"),
        ("\ud800", "channel name is not valid unicode"),
        ("a\udfffb", "channel name is not valid unicode"),
        ("sserelay.", "channel names starting with 'sserelay.' are reserved"),
        ("sserelay.probe.1.abc", "channel names starting with 'sserelay.' are reserved"),
    ],
)
def test_refused(name: str, reason: str) -> None:
    with pytest.raises(InvalidChannel) as info:
        validate_channel(name)
    assert str(info.value) == reason
    assert isinstance(info.value, SseRelayError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("name", "kind"), [(None, "NoneType"), (b"lobby", "bytes"), (42, "int")])
def test_not_a_string(name: object, kind: str) -> None:
    with pytest.raises(InvalidChannel, match=f"channel name must be a string, not {kind}"):
        validate_channel(name)


def test_size_is_checked_before_content() -> None:
    # A huge name is refused by size, without scanning it for anything else.
    with pytest.raises(InvalidChannel, match="bytes"):
        validate_channel("\x00" * 100)


def _valid(name: str) -> bool:
    """The rules from the module docstring, written out independently."""
    return (
        0 < len(name.encode("utf-8", "surrogatepass")) <= 63
        and not re.search(r"[\x00-\x1f\x7f\ud800-\udfff]", name)
        and not name.startswith(RESERVED_PREFIX)
    )


names = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=70),
    st.text(st.sampled_from("ab.é😀\x00\x1f\x7f\ud800 "), max_size=70),
    st.text(max_size=10).map(lambda s: RESERVED_PREFIX + s),
)


@settings(deadline=None)
@given(name=names)
def test_any_name(name: str) -> None:
    if _valid(name):
        assert validate_channel(name) is name
    else:
        with pytest.raises(InvalidChannel) as info:
            validate_channel(name)
        assert "\n" not in str(info.value)


# -- PostgreSQL agrees -------------------------------------------------------------


@pytest.fixture(scope="module")
def pg(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def _round_trip(conn: psycopg.Connection[tuple[object, ...]], name: str) -> str:
    """LISTEN on ``name`` as the relay does, pg_notify it as publish does; what arrives."""
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
    try:
        token = uuid.uuid4().hex
        conn.execute("SELECT pg_notify(%s, %s)", (name, token))
        for notify in conn.notifies(timeout=10, stop_after=1):
            assert notify.payload == token
            return notify.channel
        raise AssertionError(f"no notification on {name!r} within 10 s")
    finally:
        conn.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(name)))


@pytest.mark.integration
@pytest.mark.parametrize(
    "name", ["Lobby", "'; DROP TABLE x; --", 'a"b', "€" * 21, "x" * 63, "\u2028\x85"]
)
def test_postgres_accepts_edge_names(pg: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    assert _round_trip(pg, validate_channel(name)) == name


@pytest.mark.integration
@settings(max_examples=40, deadline=None)
@given(name=names.filter(_valid))
def test_postgres_accepts_every_valid_name(
    pg: psycopg.Connection[tuple[object, ...]], name: str
) -> None:
    assert _round_trip(pg, validate_channel(name)) == name
