"""A table as the catalogs describe it, and what a capture rule may ask of it.

:func:`check_rule` refuses, with the reason and a way out, whatever would not work or
would break the application's writers: PostgreSQL accepts a publication whose column
list lacks the replica identity, or whose row filter uses other columns, and then fails
every UPDATE or DELETE on the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ....errors import ConfigError
from ..errors import first_line

if TYPE_CHECKING:
    from .rules import Rule


@dataclass(frozen=True, slots=True)
class TableInfo:
    relid: int
    schema: str
    name: str
    kind: str
    #: ``d`` default (primary key), ``n`` nothing, ``f`` full, ``i`` index.
    identity: str
    columns: tuple[str, ...]
    #: The replica identity's columns (all of them for FULL).
    key: tuple[str, ...]

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (``"chat_message"``): a table's spelling that
    :func:`inspect_table` reads back exactly, whatever its case or characters."""
    return '"' + name.replace('"', '""') + '"'


_TABLE_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relreplident
FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass(%s)
"""
_COLUMNS_SQL = """
SELECT attname FROM pg_catalog.pg_attribute
WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum
"""
_KEY_SQL = """
SELECT a.attname
FROM pg_catalog.pg_index AS i
JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = %s AND CASE %s WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident
                                   ELSE false END
ORDER BY a.attnum
"""


def inspect_table(conn: psycopg.Connection[Any], table: str) -> TableInfo:
    """The table named ``table`` (SQL syntax: ``orders``, ``public.orders``, ``"Orders"``)."""
    try:
        with conn.transaction():
            row = conn.execute(_TABLE_SQL, (table,)).fetchone()
    except psycopg.Error as exc:
        raise ConfigError(f"{table!r} is not a table name: {first_line(exc)}") from None
    if row is None:
        raise ConfigError(f"no table {table!r} (spell it as in SQL: public.orders)")
    relid, schema, name, kind, identity = row
    if kind not in ("r", "p"):
        raise ConfigError(f"{schema}.{name} is not a table (relkind {kind!r}); capture tables")
    if schema == "sserelay":
        raise ConfigError("the sserelay schema's own tables cannot be captured")
    columns = tuple(r[0] for r in conn.execute(_COLUMNS_SQL, (relid,)))
    key = (
        columns
        if identity == "f"
        else tuple(r[0] for r in conn.execute(_KEY_SQL, (relid, identity)))
    )
    return TableInfo(int(relid), schema, name, kind, identity, columns, key)


def check_rule(info: TableInfo, rule: Rule) -> None:
    """Refuse, with a reason and a way out, what would not work or would break writers."""
    table = info.name if info.schema == "public" else f"{info.schema}.{info.name}"
    columns = rule.columns
    if columns is not None:
        unknown = [c for c in columns if c not in info.columns]
        if unknown or not columns:
            raise ConfigError(f"{table} has no column {', '.join(unknown) or '(none given)'}")
    published = columns if columns is not None else info.columns
    for field in rule.channel.fields:
        if field not in info.columns:
            raise ConfigError(f"channel template {rule.channel.text!r}: {table} has no {field}")
        if field not in published:
            raise ConfigError(
                f"channel template {rule.channel.text!r} uses {field}, which --columns leaves out"
            )
    keyed = rule.events & {"update", "delete"}
    if not keyed:
        return
    ops = " and ".join(sorted(e.upper() for e in keyed))
    if not info.key:
        raise ConfigError(
            f"{table} has no replica identity (no primary key): once its {ops} are published, "
            f"PostgreSQL refuses them. Add a primary key, or ALTER TABLE {table} REPLICA "
            "IDENTITY FULL, or capture --events insert"
        )
    if columns is not None:
        missing = [k for k in info.key if k not in columns]
        if missing:
            raise ConfigError(
                f"--columns must include the replica identity of {table} "
                f"({', '.join(info.key)}) when {ops} are captured; missing {', '.join(missing)}"
            )
    if "delete" in rule.events and info.identity != "f":
        outside = [f for f in rule.channel.fields if f not in info.key]
        if outside:
            raise ConfigError(
                f"channel template {rule.channel.text!r} uses {', '.join(outside)}, but a DELETE "
                f"carries only the replica identity of {table} ({', '.join(info.key)}): "
                f"ALTER TABLE {table} REPLICA IDENTITY FULL, or capture without delete"
            )
