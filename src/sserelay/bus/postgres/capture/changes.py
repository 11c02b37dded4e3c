"""From a decoded row change to the event published for it: channel, name and JSON data.

The data of each event is a JSON object:

- ``insert``: ``{"new": {...the row...}, "lsn": "0/1A2B3C8", "commit_time": "..."}``
- ``update``: ``{"new": {...}, "key": {...the row's replica-identity key before...}, ...}``,
  plus ``"unchanged": ["body"]`` naming TOASTed columns the update left alone (their
  values are not in the WAL, so not in ``new``) unless the old row supplied them;
- ``delete``: ``{"key": {...}, ...}``: a tombstone, the key only (the whole old row with
  REPLICA IDENTITY FULL);
- ``truncate``: ``{"lsn": ..., "commit_time": ...}``.

``lsn`` is the source transaction's commit LSN and ``commit_time`` its commit time, the
same for every event of one transaction. Values are typed: booleans, integers, floats,
numerics (as JSON numbers, NaN and infinities as strings), json and jsonb as JSON,
timestamps in ISO 8601 (``2024-05-01T12:00:00+00:00``, in UTC) as ``to_json`` writes
them; every other type as the string PostgreSQL writes for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ....core.channel import MISSED_EVENT
from ....errors import SseRelayError
from .pgoutput import UNCHANGED, Delete, Insert, Relation, Tuple, Update, Value
from .rules import Rule
from .template import RouteError

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_SPECIAL_NUMBERS = frozenset({"NaN", "Infinity", "-Infinity"})


def _string(text: str) -> str:
    return _dumps(text)


def _raw(text: str) -> str:
    return text


def _bool(text: str) -> str:
    return "true" if text == "t" else "false"


def _number(text: str) -> str:
    return _dumps(text) if text in _SPECIAL_NUMBERS else text


_OFFSET = re.compile(r"([+-]\d\d)$")


def _timestamp(text: str) -> str:
    """``2024-05-01 12:00:00.5+00`` (the stream's DateStyle ISO, TimeZone UTC) as JSON's
    usual ``2024-05-01T12:00:00.5+00:00``, like PostgreSQL's own ``to_json``. Infinities
    and BC dates stay as PostgreSQL writes them."""
    if not text[:4].isdigit() or text.endswith(" BC"):
        return _dumps(text)
    return _dumps(_OFFSET.sub(r"\1:00", text.replace(" ", "T", 1)))


#: Type OID -> how its text form becomes JSON. Others are strings.
_ENCODERS: dict[int, Callable[[str], str]] = {
    16: _bool,  # bool
    20: _raw,  # int8
    21: _raw,  # int2
    23: _raw,  # int4
    26: _raw,  # oid
    700: _number,  # float4
    701: _number,  # float8
    1700: _number,  # numeric
    114: _raw,  # json
    3802: _raw,  # jsonb
    1114: _timestamp,  # timestamp
    1184: _timestamp,  # timestamptz
}


def encode_value(type_oid: int, value: Value) -> str:
    """One column value as JSON text (``UNCHANGED`` is the caller's business)."""
    if value is None:
        return "null"
    if isinstance(value, bytes):  # binary format: never asked for, but never lost either
        return _dumps(value.hex())
    if isinstance(value, str):
        return _ENCODERS.get(type_oid, _string)(value)
    raise SseRelayError(f"cannot encode {value!r}")


@dataclass(frozen=True, slots=True)
class CapturedEvent:
    channel: str
    event: str
    data: str


class TableCodec:
    """A relation's columns and a rule, prepared once per Relation message."""

    def __init__(self, relation: Relation, rule: Rule) -> None:
        self.relation = relation
        self.rule = rule
        columns = relation.columns
        self.names = tuple(c.name for c in columns)
        self.keys = tuple(_dumps(c.name) + ":" for c in columns)
        self.encoders = tuple(_ENCODERS.get(c.type_oid, _string) for c in columns)
        self.key_index = tuple(i for i, c in enumerate(columns) if c.key)
        self.index = {c.name: i for i, c in enumerate(columns)}
        missing = [f for f in rule.channel.fields if f not in self.index]
        #: Why no row can be routed (a template column not in the stream), or None.
        self.broken = (
            f"channel template {rule.channel.text!r}: column {', '.join(missing)} is not "
            f"published for {relation.qualified_name}"
            if missing
            else None
        )
        prefix = rule.event_prefix
        self.names_by_op = {op: f"{prefix}.{op}" for op in ("insert", "update", "delete")}
        self.truncate_event = f"{prefix}.truncate"

    def _object(self, values: Tuple, indexes: Sequence[int] | None = None) -> tuple[str, list[str]]:
        """``{"col": value, ...}`` and the names of unchanged TOASTed columns left out."""
        parts = []
        unchanged = []
        keys, encoders = self.keys, self.encoders
        for i in range(len(values)) if indexes is None else indexes:
            value = values[i]
            if value is None:
                parts.append(keys[i] + "null")
            elif isinstance(value, str):
                parts.append(keys[i] + encoders[i](value))
            elif value is UNCHANGED:
                unchanged.append(self.names[i])
            else:
                parts.append(keys[i] + encode_value(0, value))
        return "{" + ",".join(parts) + "}", unchanged

    def _channel(self, values: Tuple, key_only: bool) -> str:
        if self.broken is not None:
            raise RouteError(self.broken)

        def value(name: str) -> str | None:
            i = self.index[name]
            if key_only and i not in self.key_index:
                raise RouteError(f"column {name} is not in the replica identity")
            found = values[i] if i < len(values) else None
            if found is UNCHANGED:
                raise RouteError(f"column {name} is an unchanged TOASTed value")
            if isinstance(found, bytes):
                return found.hex()
            return found

        return self.rule.channel.render(value)

    def _check_width(self, values: Tuple) -> None:
        if len(values) != len(self.names):
            raise RouteError(
                f"{len(values)} values for the {len(self.names)} columns of "
                f"{self.relation.qualified_name}"
            )

    def insert(self, change: Insert, tail: str) -> CapturedEvent:
        self._check_width(change.new)
        row, _ = self._object(change.new)
        channel = self._channel(change.new, False)
        return CapturedEvent(channel, self.names_by_op["insert"], '{"new":' + row + tail)

    def update(self, change: Update, tail: str) -> CapturedEvent:
        new, old = change.new, change.old
        self._check_width(new)
        if old is not None and not change.old_is_key and UNCHANGED in new:
            new = tuple(o if n is UNCHANGED else n for n, o in zip(new, old, strict=False))
        row, unchanged = self._object(new)
        source = old if old is not None else new
        key, _ = self._object(source, self.key_index)
        data = '{"new":' + row + ',"key":' + key
        if unchanged:
            data += ',"unchanged":' + _dumps(unchanged)
        channel = self._channel(new, False)
        return CapturedEvent(channel, self.names_by_op["update"], data + tail)

    def delete(self, change: Delete, tail: str) -> CapturedEvent:
        self._check_width(change.old)
        indexes = self.key_index if change.old_is_key else None
        key, _ = self._object(change.old, indexes)
        channel = self._channel(change.old, change.old_is_key)
        return CapturedEvent(channel, self.names_by_op["delete"], '{"key":' + key + tail)


def tail(lsn: str, commit_time: str) -> str:
    """The end of every event's data in one transaction: its commit LSN and time."""
    return ',"lsn":' + _dumps(lsn) + ',"commit_time":' + _dumps(commit_time) + "}"


def truncate_data(lsn: str, commit_time: str) -> str:
    return "{" + tail(lsn, commit_time)[1:]


def missed_event(channel: str, reason: str) -> CapturedEvent:
    """``missed`` on ``channel`` (the name the relay gives its own, logged here since the
    changes were lost for every reader: the slot was): a page that sees it reloads its
    state."""
    return CapturedEvent(channel, MISSED_EVENT, _dumps({"channel": channel, "reason": reason}))
