"""The pgoutput decoder, on real messages recorded from PostgreSQL 15
(``pgoutput_messages.txt``, made by ``record_pgoutput.py``), and on anything else."""

from __future__ import annotations

import contextlib
import datetime
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sserelay.bus.postgres.capture.lsn import format_lsn, parse_lsn
from sserelay.bus.postgres.capture.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    DecodeError,
    Delete,
    Insert,
    Message,
    Relation,
    Truncate,
    Type,
    Update,
    decode,
)
from sserelay.bus.postgres.capture.stream import Keepalive, XLogData, parse_copy_data, status_update

RECORDED = [
    (label, bytes.fromhex(payload))
    for label, payload in (
        line.split()
        for line in (Path(__file__).parent / "pgoutput_messages.txt").read_text().splitlines()
    )
]


def recorded(label: str) -> bytes:
    return next(payload for name, payload in RECORDED if name == label)


def test_every_recorded_message_decodes() -> None:
    kinds = {
        "B": Begin,
        "C": Commit,
        "R": Relation,
        "Y": Type,
        "I": Insert,
        "U": Update,
        "D": Delete,
        "T": Truncate,
        "M": Message,
    }
    for label, payload in RECORDED:
        assert isinstance(decode(payload), kinds[label.split(":")[1]]), label


def test_begin_and_commit_agree() -> None:
    begin = decode(recorded("insert:B"))
    commit = decode(recorded("insert:C"))
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert begin.final_lsn == commit.commit_lsn < commit.end_lsn
    assert begin.commit_time == commit.commit_time
    assert begin.commit_time.tzinfo is datetime.UTC
    assert abs(begin.commit_time.year - datetime.datetime.now().year) <= 1
    assert begin.xid > 0


def test_relation_and_type() -> None:
    mood = decode(recorded("insert:Y"))
    rel = decode(recorded("insert:R"))
    assert isinstance(mood, Type) and (mood.namespace, mood.name) == ("public", "mood")
    assert isinstance(rel, Relation)
    assert (rel.namespace, rel.name, rel.replica_identity) == ("public", "t", "d")
    assert rel.qualified_name == "public.t"
    assert [c.name for c in rel.columns] == ["id", "name", "m", "big", "n", "ok"]
    assert [c.key for c in rel.columns] == [True, False, False, False, False, False]
    assert [c.type_oid for c in rel.columns] == [23, 25, mood.oid, 25, 1700, 16]
    full = decode(recorded("insert_full:R"))
    assert isinstance(full, Relation) and full.replica_identity == "f"
    assert all(c.key for c in full.columns)


def test_insert_values_are_text() -> None:
    insert = decode(recorded("insert:I"))
    assert isinstance(insert, Insert)
    assert insert.new == ("1", "héllo", "happy", "x" * 3000, "1.50", "t")


def test_unchanged_toast_and_changed_key() -> None:
    update = decode(recorded("update_toast_unchanged:U"))
    assert isinstance(update, Update)
    assert update.old is None
    assert update.new == ("1", "b", "happy", UNCHANGED, "1.50", "t")
    moved = decode(recorded("update_key_changed:U"))
    assert isinstance(moved, Update) and moved.old_is_key
    assert moved.old == ("1", None, None, None, None, None)
    assert moved.new[0] == "2" and moved.new[3] is UNCHANGED


def test_full_identity_sends_old_rows() -> None:
    update = decode(recorded("update_full:U"))
    assert isinstance(update, Update) and not update.old_is_key
    assert update.old == ("1", "a") and update.new == ("1", None)
    delete = decode(recorded("delete_full:D"))
    assert isinstance(delete, Delete) and delete.old == ("1", None) and not delete.old_is_key
    keyed = decode(recorded("delete_key:D"))
    assert isinstance(keyed, Delete) and keyed.old_is_key and keyed.old[0] == "2"


def test_truncate_and_message() -> None:
    truncate = decode(recorded("truncate:T"))
    t = decode(recorded("insert:R"))
    f = decode(recorded("insert_full:R"))
    assert isinstance(truncate, Truncate) and isinstance(t, Relation) and isinstance(f, Relation)
    assert truncate.relation_oids == (t.oid, f.oid) and truncate.options == 0
    message = decode(recorded("message:M"))
    assert message == Message(True, message.lsn, "pfx", b"content")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty message"),
        (b"Z", "unknown message type"),
        (b"S\x00\x00\x00\x01\x00", "Stream Start message: protocol version 1 never sends it"),
        (b"B\x00", "Begin message of 2 bytes: truncated (final LSN) at byte 1"),
        (b"I\x00\x00\x00\x01X", "expected 'N' before the new tuple"),
        (b"I\x00\x00\x00\x01N\xff\xff", "negative column count -1"),
        (b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x09ab", "value length 9 past the end"),
        (b"I\x00\x00\x00\x01N\x00\x01q", "unknown column kind b'q'"),
        (b"I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x01\xff", "text value is not UTF-8"),
        (b"I\x00\x00\x00\x01N\x00\x00!", "1 bytes left over"),
        (b"R\x00\x00\x00\x01nsp", "unterminated string (namespace)"),
        (b"T\x7f\xff\xff\xff\x00", "relation count 2147483647 past the end"),
    ],
)
def test_malformed_messages_say_what_is_wrong(payload: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match="pgoutput: ") as info:
        decode(payload)
    assert reason in str(info.value)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_decode_error(payload: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(payload)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([p for _, p in RECORDED if len(p) < 200]), st.data())
def test_mutated_real_messages_decode_or_raise_decode_error(
    payload: bytes, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(payload)))
    spot = data.draw(st.integers(0, max(len(payload) - 1, 0)))
    byte = data.draw(st.integers(0, 255))
    for candidate in (payload[:cut], payload[:spot] + bytes([byte]) + payload[spot + 1 :]):
        with contextlib.suppress(DecodeError):
            decode(candidate)


def test_lsn_spelling() -> None:
    assert format_lsn(0x16B3748) == "0/16B3748"
    assert format_lsn((3 << 32) | 0xA) == "3/A"
    for text in ("0/0", "0/16B3748", "FFFFFFFF/FFFFFFFF"):
        assert format_lsn(parse_lsn(text)) == text
    for bad in ("", "16B3748", "x/1", "0/100000000", "1/2/3"):
        with pytest.raises(DecodeError):
            parse_lsn(bad)


def test_replication_framing() -> None:
    xlog = b"w" + struct.pack(">QQq", 10, 20, 30) + b"B..."
    assert parse_copy_data(xlog) == XLogData(10, 20, 30, b"B...")
    keepalive = b"k" + struct.pack(">Qq?", 99, 5, True)
    assert parse_copy_data(keepalive) == Keepalive(99, 5, True)
    for bad in (b"w\x00", b"k\x00\x00", b"?"):
        with pytest.raises(DecodeError):
            parse_copy_data(bad)
    update = status_update(200, 100, reply=True)
    kind, received, flushed, applied, _clock, reply = struct.unpack(">cQQQq?", update)
    assert (kind, received, flushed, applied, reply) == (b"r", 200, 100, 100, True)
