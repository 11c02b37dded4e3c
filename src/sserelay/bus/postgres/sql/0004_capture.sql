-- sserelay change data capture, version 4: capture rules, the capturer's progress, and
-- the function it writes events through. See docs/capture.md.
--
-- The publications and the replication slot are not made here: `sserelay capture add`
-- (sserelay.bus.postgres.capture.slot.install) makes them, as they need rights a migration should not
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

-- End a log transaction: record the last source transaction it holds (and the counts),
-- moving commit_lsn from the value the capturer last saw. If another capturer moved it
-- first, raise serialization_failure: the caller's transaction (its events) rolls back.
CREATE FUNCTION sserelay.capture_advance(
    expected pg_lsn, new_commit_lsn pg_lsn, new_end_lsn pg_lsn, new_commit_time timestamptz,
    captured integer, logged integer, skipped integer, error text,
    heartbeat timestamptz, interval_seconds double precision)
RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    UPDATE sserelay.capture_state AS s SET
        commit_lsn = new_commit_lsn,
        end_lsn = coalesce(new_end_lsn, s.end_lsn),
        commit_time = coalesce(new_commit_time, s.commit_time),
        captured_at = CASE WHEN captured > 0 THEN now() ELSE s.captured_at END,
        transactions = s.transactions + captured,
        events = s.events + logged,
        rows_skipped = s.rows_skipped + skipped,
        last_error = coalesce(error, s.last_error),
        last_error_at = CASE WHEN error IS NULL THEN s.last_error_at ELSE now() END,
        heartbeat_at = coalesce(heartbeat, s.heartbeat_at),
        heartbeat_seen_at = CASE WHEN heartbeat IS NULL THEN s.heartbeat_seen_at ELSE now() END,
        heartbeat_interval = coalesce(interval_seconds, s.heartbeat_interval)
    WHERE s.commit_lsn = expected;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sserelay: capture_state.commit_lsn is no longer %: another capturer wrote',
            expected USING ERRCODE = 'serialization_failure';
    END IF;
END
$$;

-- Publish a batch of captured events, in order: the same log rows, ids and notifications
-- as calling sserelay.publish(channel, data, event) for each in turn, set-based (so the
-- durable name, sserelay.notify_channel(channel), is notified: migration 0003). (Calling
-- sserelay.publish per event updates the channel's row once per event; within one
-- transaction those versions pile up, and a 20,000-row transaction on one channel costs
-- 3x per event what a 1,000-row one does. Here each channel's row is updated once per
-- batch.) The notification payload is built exactly as sserelay.publish builds it: a
-- change there must be made here too (tests/capture/test_capture_write.py compares them).
--
-- batch: a JSON array of [channel, event, data] (event may be null). Returns the count.
CREATE FUNCTION sserelay.capture_write(batch json)
RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    channels  text[];
    payloads  text[];
    ch        text;
    payload   text;
    n         integer := 0;
BEGIN
    WITH b AS (
        SELECT e.pos, e.v->>0 AS ch, e.v->>1 AS ev, e.v->>2 AS d
        FROM json_array_elements(batch) WITH ORDINALITY AS e(v, pos)
    ), counts AS (
        SELECT b.ch, count(*) AS k FROM b GROUP BY b.ch
    ), bumped AS (
        -- The row lock taken here is held until commit, as in sserelay.publish.
        INSERT INTO sserelay.channels AS c (channel, last_id)
        SELECT sserelay.check_channel(counts.ch), counts.k FROM counts
        ON CONFLICT (channel) DO UPDATE SET last_id = c.last_id + EXCLUDED.last_id
        RETURNING c.channel, c.last_id
    ), numbered AS (
        SELECT b.pos, b.ch, b.ev, b.d,
               bumped.last_id - counts.k
                   + row_number() OVER (PARTITION BY b.ch ORDER BY b.pos) AS id
        FROM b JOIN counts ON counts.ch = b.ch JOIN bumped ON bumped.channel = b.ch
    ), logged AS (
        INSERT INTO sserelay.events (channel, id, event, data)
        SELECT numbered.ch, numbered.id, numbered.ev, numbered.d FROM numbered
    ), notified AS (
        SELECT numbered.pos, numbered.ch,
               CASE WHEN octet_length(numbered.d) < 8000 THEN
                   '{"seq":' || numbered.id
                   || coalesce(',"event":' || to_json(numbered.ev)::text, '')
                   || ',"data":' || to_json(numbered.d)::text || '}'
               END AS payload,
               numbered.id
        FROM numbered
    )
    SELECT array_agg(notified.ch ORDER BY notified.pos),
           array_agg(CASE WHEN notified.payload IS NULL OR octet_length(notified.payload) >= 8000
                          THEN '{"seq":' || notified.id || ',"large":true}'
                          ELSE notified.payload END
                     ORDER BY notified.pos)
    INTO channels, payloads
    FROM notified;

    FOR ch, payload IN SELECT u.ch, u.payload FROM unnest(channels, payloads) AS u(ch, payload)
    LOOP
        PERFORM pg_catalog.pg_notify(sserelay.notify_channel(ch), payload);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

COMMENT ON FUNCTION sserelay.capture_write(json) IS
    'Change data capture: publish a batch of captured events in order, as sserelay.publish would';
