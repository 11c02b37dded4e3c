"""Pure logic of capture: channel templates, rule checks, events from row changes."""

from __future__ import annotations

import json

import pytest

from sserelay.bus.postgres.capture.changes import TableCodec, encode_value, tail
from sserelay.bus.postgres.capture.pgoutput import (
    UNCHANGED,
    Column,
    Delete,
    Insert,
    Relation,
    Update,
)
from sserelay.bus.postgres.capture.rules import PUBLICATIONS, Rule, publication_for
from sserelay.bus.postgres.capture.tables import TableInfo, check_rule
from sserelay.bus.postgres.capture.template import RouteError, Template
from sserelay.errors import ConfigError


def test_templates_parse_render_and_match() -> None:
    static = Template.parse("orders")
    assert static.is_static and static.render(lambda f: None) == "orders"
    routed = Template.parse("orders:{customer_id}/{region}")
    assert routed.fields == ("customer_id", "region")
    values = {"customer_id": "42", "region": "eu"}
    assert routed.render(values.get) == "orders:42/eu"
    assert Template.parse("a{{b}}{x}").render({"x": "1"}.get) == "a{b}1"
    assert routed.pattern() == "^orders:(.+)/(.+)$"
    assert Template.parse("a.b{x}").pattern() == "^a\\.b(.+)$"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "non-empty"),
        ("orders:{", "without a column name"),
        ("orders:{}", "without a column name"),
        ("orders}", "'}' without '{'"),
        ("sserelay.{x}", "reserved"),
        ("x" * 64, "at most 63"),
        ("a\nb{x}", "control character"),
    ],
)
def test_bad_templates_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        Template.parse(text)
    assert reason in str(info.value)


def test_rows_that_make_no_channel_raise_route_error() -> None:
    routed = Template.parse("room-{id}")
    with pytest.raises(RouteError, match="column id is NULL"):
        routed.render(lambda f: None)
    with pytest.raises(RouteError, match="at most 63"):
        routed.render(lambda f: "x" * 80)
    with pytest.raises(RouteError, match="control character"):
        routed.render(lambda f: "a\nb")


def test_publications_cover_every_event_set() -> None:
    assert len(PUBLICATIONS) == 8
    assert publication_for(["insert", "update", "delete"]) == "sserelay_capture_iudt"
    assert publication_for(["delete", "insert"]) == "sserelay_capture_idt"
    assert publication_for(["truncate"]) == "sserelay_capture_t"
    assert PUBLICATIONS["sserelay_capture_it"] == ("insert", "truncate")


def _info(identity: str = "d", key: tuple[str, ...] = ("id",)) -> TableInfo:
    columns = ("id", "customer_id", "status")
    return TableInfo(
        1, "public", "orders", "r", identity, columns, columns if identity == "f" else key
    )


def _rule(
    channel: str = "orders", events: tuple[str, ...] = ("insert", "update", "delete"), **kw: object
) -> Rule:
    return Rule(1, "public", "orders", Template.parse(channel), "orders", frozenset(events), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("info", "rule", "reason"),
    [
        (_info(), _rule(columns=("id", "nope")), "has no column nope"),
        (_info(), _rule("o:{nope}"), "has no nope"),
        (_info(), _rule("o:{status}", columns=("id",)), "which --columns leaves out"),
        (_info(key=()), _rule(), "no replica identity"),
        (_info(), _rule(columns=("status",)), "must include the replica identity"),
        (_info(), _rule("o:{customer_id}"), "a DELETE carries only the replica identity"),
    ],
)
def test_rules_that_would_break_writers_are_refused(
    info: TableInfo, rule: Rule, reason: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        check_rule(info, rule)
    assert reason in str(exc.value)


def test_rules_that_work_pass() -> None:
    check_rule(_info(key=()), _rule(events=("insert",)))
    check_rule(_info(), _rule("o:{customer_id}", events=("insert", "update")))
    check_rule(_info("f"), _rule("o:{customer_id}"))
    check_rule(_info(), _rule(columns=("id", "status")))


def _codec(channel: str = "orders:{customer_id}") -> TableCodec:
    relation = Relation(
        1,
        "public",
        "orders",
        "d",
        (
            Column("id", 23, -1, True),
            Column("customer_id", 20, -1, False),
            Column("status", 25, -1, False),
            Column("total", 1700, -1, False),
            Column("paid", 16, -1, False),
            Column("meta", 3802, -1, False),
            Column("ratio", 701, -1, False),
        ),
    )
    return TableCodec(relation, _rule(channel))


TAIL = tail("0/16B3748", "2024-05-01T12:00:00+00:00")


def test_insert_event() -> None:
    event = _codec().insert(
        Insert(1, ("7", "42", 'say "hi"', "12.50", "t", '{"a": [1]}', "NaN")), TAIL
    )
    assert (event.channel, event.event) == ("orders:42", "orders.insert")
    assert json.loads(event.data) == {
        "new": {
            "id": 7,
            "customer_id": 42,
            "status": 'say "hi"',
            "total": 12.5,
            "paid": True,
            "meta": {"a": [1]},
            "ratio": "NaN",
        },
        "lsn": "0/16B3748",
        "commit_time": "2024-05-01T12:00:00+00:00",
    }


def test_update_event_keys_and_unchanged_toast() -> None:
    codec = _codec()
    row = ("7", "42", UNCHANGED, None, "f", None, "1e+100")
    event = codec.update(Update(1, None, False, row), TAIL)
    data = json.loads(event.data)
    assert data["key"] == {"id": 7} and data["unchanged"] == ["status"]
    assert data["new"] == {
        "id": 7,
        "customer_id": 42,
        "total": None,
        "paid": False,
        "meta": None,
        "ratio": 1e100,
    }
    moved = codec.update(Update(1, ("6", None, None, None, None, None, None), True, row), TAIL)
    assert json.loads(moved.data)["key"] == {"id": 6}
    full = codec.update(Update(1, ("7", "41", "old text", None, "t", None, None), False, row), TAIL)
    assert json.loads(full.data)["new"]["status"] == "old text"
    assert "unchanged" not in json.loads(full.data)


def test_delete_event_is_a_tombstone() -> None:
    codec = _codec("orders")
    event = codec.delete(Delete(1, ("7", None, None, None, None, None, None), True), TAIL)
    assert (event.channel, event.event) == ("orders", "orders.delete")
    assert json.loads(event.data) == {
        "key": {"id": 7},
        "lsn": "0/16B3748",
        "commit_time": "2024-05-01T12:00:00+00:00",
    }
    with pytest.raises(RouteError, match="not in the replica identity"):
        _codec().delete(Delete(1, ("7", None, None, None, None, None, None), True), TAIL)


def test_route_errors() -> None:
    codec = _codec()
    with pytest.raises(RouteError, match="NULL"):
        codec.insert(Insert(1, ("7", None, "a", "1", "t", None, None)), TAIL)
    with pytest.raises(RouteError, match="unchanged TOASTed"):
        codec.update(Update(1, None, False, ("7", UNCHANGED, "a", "1", "t", None, None)), TAIL)
    with pytest.raises(RouteError, match="2 values for the 7 columns"):
        codec.insert(Insert(1, ("7", "1")), TAIL)
    broken = TableCodec(codec.relation, _rule("o:{gone}"))
    with pytest.raises(RouteError, match="column gone is not published"):
        broken.insert(Insert(1, ("7", "1", "a", "1", "t", None, None)), TAIL)


def test_value_encoding() -> None:
    assert encode_value(25, "a\u2028b") == '"a\u2028b"'
    assert encode_value(1700, "-Infinity") == '"-Infinity"'
    assert encode_value(20, "-9223372036854775808") == "-9223372036854775808"
    assert encode_value(17, b"\x00\xff") == '"00ff"'
    assert encode_value(16, None) == "null"
    assert encode_value(1184, "2024-05-01 12:00:00.5+00") == '"2024-05-01T12:00:00.5+00:00"'
    assert encode_value(1184, "2024-05-01 12:00:00+05:30") == '"2024-05-01T12:00:00+05:30"'
    assert encode_value(1114, "2024-05-01 12:00:00") == '"2024-05-01T12:00:00"'
    assert encode_value(1184, "infinity") == '"infinity"'
    assert encode_value(1184, "0044-03-15 12:00:00+00 BC") == '"0044-03-15 12:00:00+00 BC"'
