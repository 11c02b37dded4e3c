-- sserelay durable channels, version 3: durable notifications on a channel of their own.
--
-- Until version 2, sserelay.publish notified the event's own channel with a payload
-- starting {"seq":..., which a raw NOTIFY of user text could imitate and so move a
-- relay's position. From version 3 it notifies 'sserelay.d.' || md5 of the channel's
-- UTF-8 bytes instead: a name in the reserved 'sserelay.' namespace that no stream can
-- subscribe to and no raw NOTIFY of a channel's own name produces. Relays LISTEN on
-- both names and trust only the second for durable events, whose positions they check
-- against the log. Relays older than this version receive no live durable events once
-- it is installed (their clients catch up from the log when they reconnect): upgrade
-- the relays with the schema (docs/durable.md, "Upgrading").

CREATE FUNCTION sserelay.notify_channel(channel text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT 'sserelay.d.' || md5(convert_to(channel, 'UTF8')) $$;

COMMENT ON FUNCTION sserelay.notify_channel(text) IS
    'The channel sserelay.publish notifies for a durable channel''s events.';

CREATE OR REPLACE FUNCTION sserelay.publish(channel text, data text, event text DEFAULT NULL)
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
    PERFORM pg_catalog.pg_notify(sserelay.notify_channel(publish.channel), payload);
    RETURN new_id;
END
$$;
