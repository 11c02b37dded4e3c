"""Capture rules: which table's row changes go to which channel, and the publications
that make PostgreSQL send them.

A rule lives in ``sserelay.capture_rules`` (one per table). PostgreSQL decides what the
replication stream carries with *publications*; sserelay keeps eight, one per set of
row operations (``sserelay_capture_iudt`` publishes insert, update, delete and truncate;
``sserelay_capture_it`` insert and truncate; ``sserelay_capture_t`` truncate only...).
A table is in the one matching its rule's events, with the rule's column list and row
filter. One publication per operation set, rather than one for all, because a row filter
on a column outside the replica identity is only allowed in a publication that does not
publish UPDATE or DELETE.

:func:`add` checks a rule against the table before installing it, and installs it in one
transaction: whatever it refuses (a column list without the key, a filter on non-key
columns, a table without a replica identity...) would otherwise make the application's
own UPDATE and DELETE statements fail.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ....errors import ConfigError
from ..errors import first_line
from .tables import TableInfo, check_rule, inspect_table
from .template import Template

ROW_EVENTS = ("insert", "update", "delete")
EVENTS = (*ROW_EVENTS, "truncate")
DEFAULT_EVENTS = ROW_EVENTS
PUBLICATION_PREFIX = "sserelay_capture_"
RULES_TABLE = ("sserelay", "capture_rules")


def publication_for(events: Iterable[str]) -> str:
    """The publication a table whose rule captures ``events`` belongs in."""
    wanted = set(events)
    return PUBLICATION_PREFIX + "".join(op[0] for op in ROW_EVENTS if op in wanted) + "t"


#: Every publication sserelay uses, each publishing truncate plus a set of row events.
PUBLICATIONS: dict[str, tuple[str, ...]] = {
    publication_for(ops): (*ops, "truncate")
    for n in range(len(ROW_EVENTS), -1, -1)
    for ops in itertools.combinations(ROW_EVENTS, n)
}
#: The publication that also carries ``sserelay.capture_rules`` to the capturer.
CONTROL_PUBLICATION = publication_for(ROW_EVENTS)


@dataclass(frozen=True, slots=True)
class Rule:
    """One captured table."""

    relid: int
    schema: str
    table: str
    channel: Template
    event_prefix: str
    events: frozenset[str]
    columns: tuple[str, ...] | None = None
    row_filter: str | None = None

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def publication(self) -> str:
        return publication_for(self.events)

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.name,
            "channel": self.channel.text,
            "event_prefix": self.event_prefix,
            "events": [e for e in EVENTS if e in self.events],
            "columns": list(self.columns) if self.columns is not None else None,
            "where": self.row_filter,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Rule:
        """A rule from a ``capture_rules`` row: from SQL (jsonb as Python objects) or from
        the replication stream (every value as text)."""
        events = _json(row["events"])
        columns = _json(row["columns"])
        return cls(
            relid=int(row["relid"]),
            schema=str(row["table_schema"]),
            table=str(row["table_name"]),
            channel=Template.parse(str(row["channel"])),
            event_prefix=str(row["event_prefix"]),
            events=frozenset(str(e) for e in events),
            columns=None if columns is None else tuple(str(c) for c in columns),
            row_filter=None if row["row_filter"] is None else str(row["row_filter"]),
        )


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def check_events(events: Iterable[str]) -> frozenset[str]:
    found = [e.strip().lower() for e in ([events] if isinstance(events, str) else events)]
    unknown = sorted(set(found) - set(EVENTS))
    if not found or unknown:
        raise ConfigError(f"events must be some of {', '.join(EVENTS)}; not {unknown or 'none'}")
    return frozenset(found)


def check_event_prefix(prefix: str) -> str:
    if not prefix or any(c in prefix for c in "\r\n\x00"):
        raise ConfigError(f"event prefix {prefix!r} must be non-empty, without line breaks")
    return prefix


# -- installing and removing rules -----------------------------------------------------------


def _drop_from_publications(conn: psycopg.Connection[Any], info: TableInfo) -> None:
    rows = conn.execute(
        "SELECT pubname FROM pg_catalog.pg_publication_rel AS pr"
        " JOIN pg_catalog.pg_publication AS p ON p.oid = pr.prpubid"
        " WHERE pr.prrelid = %s AND p.pubname LIKE 'sserelay\\_capture\\_%%'",
        (info.relid,),
    ).fetchall()
    for (pubname,) in rows:
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                sql.Identifier(pubname), info.ident
            )
        )


def _add_to_publication(conn: psycopg.Connection[Any], info: TableInfo, rule: Rule) -> None:
    target: sql.Composable = info.ident
    if rule.columns is not None:
        target = sql.SQL("{} ({})").format(
            target, sql.SQL(", ").join(sql.Identifier(c) for c in rule.columns)
        )
    if rule.row_filter is not None:
        # The operator's own SQL expression, as `sserelay capture add --where` documents;
        # sent in the extended protocol (binary=True), which runs one statement only.
        target = sql.SQL("{} WHERE ({})").format(target, sql.SQL(rule.row_filter))
    statement = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
        sql.Identifier(rule.publication), target
    )
    conn.execute(statement, binary=True)


def _check_writers(conn: psycopg.Connection[Any], info: TableInfo, rule: Rule) -> None:
    """Let PostgreSQL say whether UPDATE and DELETE still work on the table: EXPLAIN
    initialises the plan, which runs the publication's replica identity checks."""
    if "update" in rule.events:
        column = sql.Identifier(info.columns[0])
        conn.execute(
            sql.SQL("EXPLAIN UPDATE {} SET {} = {} WHERE false").format(info.ident, column, column)
        )
    if "delete" in rule.events:
        conn.execute(sql.SQL("EXPLAIN DELETE FROM {} WHERE false").format(info.ident))


_UPSERT_SQL = """
INSERT INTO sserelay.capture_rules
    (relid, table_schema, table_name, channel, event_prefix, events, columns, row_filter)
VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s)
ON CONFLICT (relid) DO UPDATE SET
    table_schema = EXCLUDED.table_schema, table_name = EXCLUDED.table_name,
    channel = EXCLUDED.channel, event_prefix = EXCLUDED.event_prefix,
    events = EXCLUDED.events, columns = EXCLUDED.columns, row_filter = EXCLUDED.row_filter
"""


def add(
    conn: psycopg.Connection[Any],
    table: str,
    channel: str,
    *,
    columns: Sequence[str] | None = None,
    row_filter: str | None = None,
    events: Iterable[str] = DEFAULT_EVENTS,
    event_prefix: str | None = None,
) -> Rule:
    """Capture ``table``'s row changes on ``channel`` (replacing its rule if it has one).

    The capture must be installed (:func:`sserelay.capture.slot.install`). Everything
    happens in one transaction: the rule, and the table's move into its publication.
    """
    info = inspect_table(conn, table)
    rule = Rule(
        relid=info.relid,
        schema=info.schema,
        table=info.name,
        channel=Template.parse(channel),
        event_prefix=check_event_prefix(info.name if event_prefix is None else event_prefix),
        events=check_events(events),
        columns=None if columns is None else tuple(columns),
        row_filter=(row_filter.strip() or None) if row_filter is not None else None,
    )
    check_rule(info, rule)
    saved = rule.as_dict()
    try:
        with conn.transaction():
            conn.execute(
                _UPSERT_SQL,
                (
                    rule.relid,
                    rule.schema,
                    rule.table,
                    rule.channel.text,
                    rule.event_prefix,
                    json.dumps(saved["events"]),
                    None if rule.columns is None else json.dumps(saved["columns"]),
                    rule.row_filter,
                ),
            )
            _drop_from_publications(conn, info)
            _add_to_publication(conn, info, rule)
            _check_writers(conn, info, rule)
    except psycopg.Error as exc:
        raise _refused(exc, info) from None
    return rule


def _refused(exc: psycopg.Error, info: TableInfo) -> ConfigError:
    diag = exc.diag
    text = " ".join(p for p in (diag.message_primary, diag.message_detail) if p)
    if diag.message_primary and diag.message_primary.startswith(("cannot update", "cannot delete")):
        text += (
            f" (the replica identity of {info.schema}.{info.name} is "
            f"{', '.join(info.key) or 'empty'}: filter only on it, capture fewer events, or "
            "ALTER TABLE ... REPLICA IDENTITY FULL)"
        )
    if diag.sqlstate == "42P01" and "capture_rules" in str(exc):
        text = "capture is not installed in this database: run `sserelay capture install`"
    return ConfigError(f"capture add {info.schema}.{info.name}: {text or first_line(exc)}")


_REMOVE_BY_OID_SQL = (
    "DELETE FROM sserelay.capture_rules WHERE relid = %s RETURNING relid, table_schema, table_name"
)
_REMOVE_BY_NAME_SQL = """
DELETE FROM sserelay.capture_rules
WHERE relid = pg_catalog.to_regclass(%s)
   OR table_schema || '.' || table_name IN (%s, 'public.' || %s)
RETURNING relid, table_schema, table_name
"""


def remove(conn: psycopg.Connection[Any], table: str | int) -> bool:
    """Stop capturing ``table`` (a name as in SQL, or the table's oid); False if it had
    no rule. A table that was dropped is found by the name its rule recorded."""
    try:
        with conn.transaction():
            if isinstance(table, int):
                cursor = conn.execute(_REMOVE_BY_OID_SQL, (table,))
            else:
                cursor = conn.execute(_REMOVE_BY_NAME_SQL, (table, table, table))
            rows = cursor.fetchall()
            for relid, schema, name in rows:
                info = TableInfo(int(relid), schema, name, "r", "d", (), ())
                exists = conn.execute("SELECT 1 FROM pg_catalog.pg_class WHERE oid = %s", (relid,))
                if exists.fetchone() is not None:
                    _drop_from_publications(conn, info)
    except psycopg.Error as exc:
        raise ConfigError(f"capture remove {table}: {first_line(exc)}") from None
    return bool(rows)


def load_rules(conn: psycopg.Connection[Any]) -> list[Rule]:
    """Every rule, by table name."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT relid, table_schema, table_name, channel, event_prefix, events, columns,"
            " row_filter FROM sserelay.capture_rules ORDER BY table_schema, table_name"
        )
        return [Rule.from_row(row) for row in cur.fetchall()]


async def aload_rules(conn: psycopg.AsyncConnection[Any]) -> dict[int, Rule]:
    """Every rule, by table oid (for the capturer)."""
    async with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        await cur.execute(
            "SELECT relid, table_schema, table_name, channel, event_prefix, events, columns,"
            " row_filter FROM sserelay.capture_rules"
        )
        return {int(row["relid"]): Rule.from_row(row) for row in await cur.fetchall()}
