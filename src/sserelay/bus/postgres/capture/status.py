"""How capture is doing, as the database sees it: the slot, the lag, the last capture.

Any relay (leader or standby) and ``sserelay capture status`` read the same query.

- ``lag_bytes``: WAL written since the slot's confirmed position (what the server keeps
  for the capturer, and what it still has to decode).
- ``lag_seconds``: from heartbeats. The consuming capturer emits one every few seconds
  (``pg_logical_emit_message``); it comes back through the slot after every change
  committed before it, and the capturer records when it was emitted (E) and captured
  (C). The lag is the larger of C - E (how late the last one was) and now - E -
  interval (how overdue the next one is), so it is near 0 while capture keeps up, and
  grows by a second per second once it stops. None before the first heartbeat.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

STATUS_SQL = """
SELECT st.slot_name, s.slot_name IS NOT NULL, coalesce(s.active, false), s.wal_status,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
       s.confirmed_flush_lsn::text, st.commit_lsn::text, st.commit_time, st.captured_at,
       st.transactions, st.events, st.rows_skipped, st.last_error, st.last_error_at,
       st.heartbeat_at, st.heartbeat_seen_at, st.heartbeat_interval, st.lost_at,
       st.lost_reason, now(), (SELECT count(*) FROM sserelay.capture_rules)
FROM sserelay.capture_state AS st
LEFT JOIN pg_catalog.pg_replication_slots AS s ON s.slot_name = st.slot_name
"""


@dataclass(frozen=True, slots=True)
class SlotStatus:
    slot: str
    slot_exists: bool
    slot_active: bool
    #: ``reserved``, ``extended``, ``unreserved`` or ``lost`` (PostgreSQL's words).
    wal_status: str | None
    lag_bytes: int | None
    confirmed_lsn: str | None
    last_commit_lsn: str
    last_commit_time: datetime.datetime | None
    captured_at: datetime.datetime | None
    transactions: int
    events: int
    rows_skipped: int
    last_error: str | None
    last_error_at: datetime.datetime | None
    heartbeat_at: datetime.datetime | None
    heartbeat_seen_at: datetime.datetime | None
    heartbeat_interval: float | None
    lost_at: datetime.datetime | None
    lost_reason: str | None
    now: datetime.datetime
    rules: int

    @property
    def lost(self) -> bool:
        return self.lost_at is not None or not self.slot_exists or self.wal_status == "lost"

    @property
    def lag_seconds(self) -> float | None:
        return lag_seconds(
            self.heartbeat_at, self.heartbeat_seen_at, self.heartbeat_interval, self.now
        )

    def as_dict(self) -> dict[str, Any]:
        out = {k: _plain(v) for k, v in asdict(self).items()}
        out["lag_seconds"] = self.lag_seconds
        out["lost"] = self.lost
        return out


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime.datetime) else value


def lag_seconds(
    emitted: datetime.datetime | None,
    captured: datetime.datetime | None,
    interval: float | None,
    now: datetime.datetime,
) -> float | None:
    """The capture lag from the last captured heartbeat (see the module docstring)."""
    if emitted is None or captured is None:
        return None
    late = (captured - emitted).total_seconds()
    overdue = (now - emitted).total_seconds() - (interval or 0.0)
    return round(max(late, overdue, 0.0), 3)


def describe(status: SlotStatus) -> list[str]:
    """The status for a person: ``sserelay capture status``, ``manage.py sserelay_capture
    --status``."""
    state = "LOST" if status.lost else ("active" if status.slot_active else "inactive")
    lag = status.lag_seconds
    lines = [
        f"slot:           {status.slot} ({state}, wal_status {status.wal_status or '-'})",
        f"lag:            {status.lag_bytes if status.lag_bytes is not None else '-'} bytes, "
        f"{'-' if lag is None else f'{lag:.1f}'} s",
        f"last captured:  commit {status.last_commit_lsn} at "
        f"{status.last_commit_time.isoformat() if status.last_commit_time else '-'}",
        f"captured:       {status.transactions} transactions, {status.events} events, "
        f"{status.rows_skipped} rows skipped; {status.rules} tables",
    ]
    if status.last_error:
        lines.append(f"last error:     {status.last_error} ({status.last_error_at})")
    if status.lost:
        lines.append(
            f"lost:           {status.lost_reason or 'the slot is gone'}; run "
            "`sserelay capture reset-slot`"
        )
    return lines


def _status(row: tuple[Any, ...] | None) -> SlotStatus | None:
    if row is None:
        return None
    return SlotStatus(*row)


def read_status(conn: psycopg.Connection[Any]) -> SlotStatus | None:
    """The status, or None when capture is not installed."""
    if conn.execute("SELECT to_regclass('sserelay.capture_state')").fetchone() == (None,):
        return None
    return _status(conn.execute(STATUS_SQL).fetchone())


async def aread_status(conn: psycopg.AsyncConnection[Any]) -> SlotStatus | None:
    """Async twin of :func:`read_status`."""
    cursor = await conn.execute("SELECT to_regclass('sserelay.capture_state')")
    if await cursor.fetchone() == (None,):
        return None
    cursor = await conn.execute(STATUS_SQL)
    return _status(await cursor.fetchone())
