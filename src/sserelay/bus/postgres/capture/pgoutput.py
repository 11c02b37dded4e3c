"""A decoder of PostgreSQL's ``pgoutput`` messages (protocol version 1).

The format is PostgreSQL's "Logical Replication Message Formats" (docs, chapter
"Frontend/Backend Protocol"): each ``XLogData`` payload of a logical replication stream
is one message, its first byte saying which. Version 1 (no ``streaming``, no
``two_phase``) has Begin, Commit, Origin, Relation, Type, Insert, Update, Delete,
Truncate, and Message (with the ``messages`` option). Integers are big-endian; strings
end with a NUL; column values are text in the connection's ``client_encoding`` (the
stream asks for UTF8).

:func:`decode` turns one payload into one of the message classes below, or raises
:class:`DecodeError` naming what is wrong: it reads only the bytes it is given, checks
every length against them, and so never loops longer than the input nor reads past it.
"""

from __future__ import annotations

import datetime
import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ....errors import SseRelayError

#: Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
PG_EPOCH: Final = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


class DecodeError(SseRelayError):
    """A ``pgoutput`` message that does not follow the protocol."""


class _Unchanged(enum.Enum):
    """The value of a TOASTed column an UPDATE did not change (not sent by the server)."""

    UNCHANGED = "UNCHANGED"


#: A column value the server did not send: stored out of line and unchanged by the UPDATE.
UNCHANGED: Final = _Unchanged.UNCHANGED

#: One column of a tuple: NULL, unchanged TOAST, text, or (binary format) bytes.
Value = str | bytes | _Unchanged | None
Tuple = tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time: datetime.datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime.datetime


@dataclass(frozen=True, slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    type_modifier: int
    #: Part of the replica identity (the key sent with UPDATE and DELETE).
    key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    #: ``d`` default (primary key), ``n`` nothing, ``f`` full, ``i`` index.
    replica_identity: str
    columns: tuple[Column, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace or 'pg_catalog'}.{self.name}"


@dataclass(frozen=True, slots=True)
class Type:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: Tuple


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    #: The old replica-identity key (``K``, sent when the key changed) or the whole old
    #: row (``O``, REPLICA IDENTITY FULL); None when neither was sent.
    old: Tuple | None
    old_is_key: bool
    new: Tuple


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: Tuple
    #: True: ``old`` holds the key columns only (others None); False: the whole row.
    old_is_key: bool


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Message:
    """``pg_logical_emit_message()`` output."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


PgOutputMessage = (
    Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | Message
)

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")

#: What each message byte names, for errors about messages version 1 never sends.
_NAMES = {
    b"S": "Stream Start",
    b"E": "Stream Stop",
    b"c": "Stream Commit",
    b"A": "Stream Abort",
    b"b": "Begin Prepare",
    b"P": "Prepare",
    b"K": "Commit Prepared",
    b"r": "Rollback Prepared",
    b"p": "Stream Prepare",
}


class _Reader:
    """A cursor over one message's bytes; every read checks the length first."""

    __slots__ = ("data", "kind", "pos")

    def __init__(self, data: bytes, kind: str) -> None:
        self.data = data
        self.kind = kind
        self.pos = 1

    def fail(self, what: str) -> DecodeError:
        return DecodeError(
            f"pgoutput: {self.kind} message of {len(self.data)} bytes: {what} at byte {self.pos}"
        )

    def _unpack(self, fmt: struct.Struct, what: str) -> int:
        if self.pos + fmt.size > len(self.data):
            raise self.fail(f"truncated ({what})")
        (value,) = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return int(value)

    def int8(self, what: str) -> int:
        return self._unpack(_I8, what)

    def byte(self, what: str) -> bytes:
        if self.pos >= len(self.data):
            raise self.fail(f"truncated ({what})")
        self.pos += 1
        return self.data[self.pos - 1 : self.pos]

    def int16(self, what: str) -> int:
        return self._unpack(_I16, what)

    def int32(self, what: str) -> int:
        return self._unpack(_I32, what)

    def oid(self, what: str) -> int:
        return self._unpack(_U32, what)

    def lsn(self, what: str) -> int:
        return self._unpack(_U64, what)

    def timestamp(self, what: str) -> datetime.datetime:
        micros = self._unpack(_I64, what)
        try:
            return PG_EPOCH + datetime.timedelta(microseconds=micros)
        except OverflowError:
            raise self.fail(f"{what} out of range ({micros})") from None

    def string(self, what: str) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.fail(f"unterminated string ({what})")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        return _text(self, raw, what)

    def counted(self, what: str) -> bytes:
        size = self.int32(what)
        if size < 0 or self.pos + size > len(self.data):
            raise self.fail(f"{what} length {size} past the end")
        self.pos += size
        return self.data[self.pos - size : self.pos]

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} bytes left over")


def _text(reader: _Reader, raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise reader.fail(f"{what} is not UTF-8") from None


_unpack_i32 = _I32.unpack_from


def _tuple(r: _Reader) -> Tuple:
    """TupleData. The hot loop of capture (once per column of every row): locals only."""
    count = r.int16("column count")
    if count < 0:
        raise r.fail(f"negative column count {count}")
    values: list[Value] = [None] * count
    data = r.data
    size = len(data)
    pos = r.pos
    for i in range(count):
        if pos >= size:
            r.pos = pos
            raise r.fail("truncated (column kind)")
        kind = data[pos]
        pos += 1
        if kind == 0x74 or kind == 0x62:  # 't' text, 'b' binary: Int32 length, bytes
            if pos + 4 > size:
                r.pos = pos
                raise r.fail("truncated (value length)")
            (length,) = _unpack_i32(data, pos)
            pos += 4
            end = pos + length
            if length < 0 or end > size:
                r.pos = pos
                raise r.fail(f"value length {length} past the end")
            if kind == 0x74:
                try:
                    values[i] = data[pos:end].decode()
                except UnicodeDecodeError:
                    r.pos = pos
                    raise r.fail("text value is not UTF-8") from None
            else:
                values[i] = data[pos:end]
            pos = end
        elif kind == 0x75:  # 'u': unchanged TOASTed value
            values[i] = UNCHANGED
        elif kind != 0x6E:  # 'n' is NULL, already there
            r.pos = pos - 1
            raise r.fail(f"unknown column kind {bytes([kind])!r}")
    r.pos = pos
    return tuple(values)


def _new_tuple(r: _Reader) -> Tuple:
    marker = r.byte("tuple marker")
    if marker != b"N":
        raise r.fail(f"expected 'N' before the new tuple, got {marker!r}")
    return _tuple(r)


def _begin(r: _Reader) -> Begin:
    return Begin(r.lsn("final LSN"), r.timestamp("commit time"), r.oid("xid"))


def _commit(r: _Reader) -> Commit:
    return Commit(
        r.int8("flags"), r.lsn("commit LSN"), r.lsn("end LSN"), r.timestamp("commit time")
    )


def _origin(r: _Reader) -> Origin:
    return Origin(r.lsn("origin LSN"), r.string("origin name"))


def _relation(r: _Reader) -> Relation:
    oid = r.oid("relation oid")
    namespace = r.string("namespace")
    name = r.string("relation name")
    identity = r.byte("replica identity").decode("latin-1")
    if identity not in "dnfi":
        raise r.fail(f"unknown replica identity {identity!r}")
    count = r.int16("column count")
    if count < 0:
        raise r.fail(f"negative column count {count}")
    columns = []
    for _ in range(count):
        flags = r.int8("column flags")
        columns.append(
            Column(r.string("column name"), r.oid("type oid"), r.int32("typmod"), bool(flags & 1))
        )
    return Relation(oid, namespace, name, identity, tuple(columns))


def _type(r: _Reader) -> Type:
    return Type(r.oid("type oid"), r.string("type namespace"), r.string("type name"))


def _insert(r: _Reader) -> Insert:
    return Insert(r.oid("relation oid"), _new_tuple(r))


def _update(r: _Reader) -> Update:
    oid = r.oid("relation oid")
    marker = r.byte("tuple marker")
    old: Tuple | None = None
    if marker in (b"K", b"O"):
        old = _tuple(r)
        return Update(oid, old, marker == b"K", _new_tuple(r))
    if marker != b"N":
        raise r.fail(f"expected 'K', 'O' or 'N', got {marker!r}")
    return Update(oid, None, False, _tuple(r))


def _delete(r: _Reader) -> Delete:
    oid = r.oid("relation oid")
    marker = r.byte("tuple marker")
    if marker not in (b"K", b"O"):
        raise r.fail(f"expected 'K' or 'O', got {marker!r}")
    return Delete(oid, _tuple(r), marker == b"K")


def _truncate(r: _Reader) -> Truncate:
    count = r.int32("relation count")
    options = r.int8("options")
    if count < 0 or r.pos + 4 * count > len(r.data):
        raise r.fail(f"relation count {count} past the end")
    return Truncate(options, tuple(r.oid("relation oid") for _ in range(count)))


def _message(r: _Reader) -> Message:
    flags = r.int8("flags")
    return Message(bool(flags & 1), r.lsn("LSN"), r.string("prefix"), bytes(r.counted("content")))


_DECODERS: dict[bytes, tuple[str, Callable[[_Reader], PgOutputMessage]]] = {
    b"B": ("Begin", _begin),
    b"C": ("Commit", _commit),
    b"O": ("Origin", _origin),
    b"R": ("Relation", _relation),
    b"Y": ("Type", _type),
    b"I": ("Insert", _insert),
    b"U": ("Update", _update),
    b"D": ("Delete", _delete),
    b"T": ("Truncate", _truncate),
    b"M": ("Message", _message),
}


def decode(payload: bytes) -> PgOutputMessage:
    """One ``XLogData`` payload -> its message; :class:`DecodeError` if it is malformed."""
    if not payload:
        raise DecodeError("pgoutput: empty message")
    kind = payload[:1]
    entry = _DECODERS.get(kind)
    if entry is None:
        name = _NAMES.get(kind)
        if name is not None:
            raise DecodeError(f"pgoutput: {name} message: protocol version 1 never sends it")
        raise DecodeError(f"pgoutput: unknown message type {kind!r}")
    name, decoder = entry
    reader = _Reader(payload, name)
    message = decoder(reader)
    reader.end()
    return message
