-- sserelay durable channels, version 1: the log tables and the publish function.
--
-- Applied by `sserelay migrate` (sserelay.schema.migrate) inside one transaction,
-- under an advisory lock; the runner records the version in sserelay.schema_version.
-- See docs/durable.md.

CREATE SCHEMA IF NOT EXISTS sserelay;

COMMENT ON SCHEMA sserelay IS
    'sserelay durable channels (managed by `sserelay migrate`; see sserelay.schema_version)';

CREATE TABLE sserelay.schema_version (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per durable channel: the last id handed out. Publishing updates this row,
-- and the row lock it takes is held until commit: that serialises publishers of one
-- channel, so ids follow commit order. Rows are never deleted (not even by prune),
-- so ids are never reused.
CREATE TABLE sserelay.channels (
    channel  text PRIMARY KEY,
    last_id  bigint NOT NULL
);

-- The log. (channel, id) is also the read path: "events of a channel after id N".
CREATE TABLE sserelay.events (
    channel     text NOT NULL,
    id          bigint NOT NULL,
    event       text,
    data        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, id)
);

-- The same rules as sserelay.channels.validate_channel in Python.
CREATE FUNCTION sserelay.check_channel(channel text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    size integer := octet_length(channel);
BEGIN
    IF channel IS NULL OR size = 0 THEN
        RAISE EXCEPTION 'sserelay: channel name is empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF size > 63 THEN
        RAISE EXCEPTION 'sserelay: channel name is % bytes; PostgreSQL allows at most 63', size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- text cannot hold NUL; the other control characters have no business in a name
    IF channel ~ '[\x01-\x1f\x7f]' THEN
        RAISE EXCEPTION 'sserelay: channel name contains a control character'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF starts_with(channel, 'sserelay.') THEN
        RAISE EXCEPTION 'sserelay: channel names starting with ''sserelay.'' are reserved'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN channel;
END
$$;

-- Publish one event on a durable channel: append it to the log and pg_notify it,
-- in the caller's transaction. Returns the event's id (1, 2, 3, ... per channel).
-- Nothing is logged or notified if the transaction rolls back.
--
-- Notification payload (JSON text): {"seq":ID,"event":EVENT,"data":DATA} (no "event" when
-- it is NULL), or {"seq":ID,"large":true} when that would not fit in a NOTIFY payload
-- (8000 bytes): the relay then reads the event from sserelay.events.
CREATE FUNCTION sserelay.publish(channel text, data text, event text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    new_id   bigint;
    payload  text;
BEGIN
    PERFORM sserelay.check_channel(publish.channel);
    IF publish.data IS NULL THEN
        RAISE EXCEPTION 'sserelay: event data is NULL (publish '''' for an empty event)'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF publish.event ~ '[\r\n]' THEN
        RAISE EXCEPTION 'sserelay: an SSE event name may not contain a line break'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The row lock taken here is held until commit: a concurrent publisher on this
    -- channel waits for us, then draws the next id. So ids follow commit order.
    INSERT INTO sserelay.channels AS c (channel, last_id)
    VALUES (publish.channel, 1)
    ON CONFLICT (channel) DO UPDATE SET last_id = c.last_id + 1
    RETURNING c.last_id INTO new_id;

    INSERT INTO sserelay.events (channel, id, event, data)
    VALUES (publish.channel, new_id, publish.event, publish.data);

    IF octet_length(publish.data) < 8000 THEN
        payload := '{"seq":' || new_id
            || coalesce(',"event":' || to_json(publish.event)::text, '')
            || ',"data":' || to_json(publish.data)::text || '}';
    END IF;
    IF payload IS NULL OR octet_length(payload) >= 8000 THEN
        payload := '{"seq":' || new_id || ',"large":true}';
    END IF;
    PERFORM pg_catalog.pg_notify(publish.channel, payload);
    RETURN new_id;
END
$$;

COMMENT ON FUNCTION sserelay.publish(text, text, text) IS
    'Append an event to a durable channel''s log and notify it; returns its id.';
