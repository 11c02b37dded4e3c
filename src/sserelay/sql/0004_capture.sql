-- sserelay change data capture, version 4: capture rules, the capturer's progress, and
-- the function it writes events through. See docs/capture.md.
--
-- The publications and the replication slot are not made here: `sserelay capture add`
-- (sserelay.capture.slot.install) makes them, as they need rights a migration should not
-- (REPLICATION, table ownership) and a server with wal_level = logical.

-- One row per captured table: which channel its row changes go to, and how.
-- The capturer reads this table from the replication stream itself (it is in the
-- publication sserelay_capture_iudt), so a rule takes effect exactly at the commit
-- that changed it.
CREATE TABLE sserelay.capture_rules (
    relid         oid PRIMARY KEY,
    table_schema  text NOT NULL,
    table_name    text NOT NULL,
    -- The channel template: 'orders' or 'orders:{customer_id}'.
    channel       text NOT NULL,
    -- Events are named <event_prefix>.insert / .update / .delete / .truncate.
    event_prefix  text NOT NULL,
    -- JSON arrays: the events captured (["insert","update","delete"]), and the columns
    -- published (NULL: all of them).
    events        jsonb NOT NULL,
    columns       jsonb,
    -- The publication's row filter, as given (NULL: every row).
    row_filter    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (jsonb_typeof(events) = 'array'),
    CHECK (columns IS NULL OR jsonb_typeof(columns) = 'array')
);

COMMENT ON TABLE sserelay.capture_rules IS
    'Change data capture: one rule per captured table (managed by `sserelay capture add`)';

-- The capture of this database (one at most): its slot, and the last source transaction
-- whose events are in the log. The capturer updates this row in the same transaction as
-- the events it writes, and confirms the slot only after that commit; after any crash it
-- skips source transactions at or below commit_lsn. So each change is logged once.
CREATE TABLE sserelay.capture_state (
    singleton           boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    slot_name           text NOT NULL,
    commit_lsn          pg_lsn NOT NULL DEFAULT '0/0',
    end_lsn             pg_lsn NOT NULL DEFAULT '0/0',
    commit_time         timestamptz,
    captured_at         timestamptz,
    transactions        bigint NOT NULL DEFAULT 0,
    events              bigint NOT NULL DEFAULT 0,
    -- Rows that could not be published (a channel template giving an invalid name).
    rows_skipped        bigint NOT NULL DEFAULT 0,
    last_error          text,
    last_error_at       timestamptz,
    -- The last heartbeat captured: when it was emitted, when it was captured, and the
    -- interval between heartbeats (seconds). The lag in seconds is computed from these.
    heartbeat_at        timestamptz,
    heartbeat_seen_at   timestamptz,
    heartbeat_interval  double precision,
    -- Set when the capturer found the slot dropped or invalidated; cleared by a reset.
    lost_at             timestamptz,
    lost_reason         text
);

COMMENT ON TABLE sserelay.capture_state IS
    'Change data capture: the slot and the last captured source transaction';

-- Publish a batch of captured events, in array order, through sserelay.publish (so
-- they are logged and notified exactly as any durable event). The caller has checked
-- every channel and event name; the arrays have one entry per event.
CREATE FUNCTION sserelay.capture_write(channels text[], events text[], datas text[])
RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    ch  text;
    ev  text;
    d   text;
    n   integer := 0;
BEGIN
    FOR ch, ev, d IN
        SELECT u.ch, u.ev, u.d
        FROM unnest(channels, events, datas) WITH ORDINALITY AS u(ch, ev, d, pos)
        ORDER BY u.pos
    LOOP
        PERFORM sserelay.publish(ch, d, ev);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

COMMENT ON FUNCTION sserelay.capture_write(text[], text[], text[]) IS
    'Change data capture: publish a batch of captured events in order';
