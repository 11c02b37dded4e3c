-- sserelay presence: who is subscribed to the channels that opted in (`serve --presence`),
-- across all relays. See docs/presence.md.
--
-- UNLOGGED: the rows are each relay's live state, rewritten by the relays; they need no
-- WAL, are not replicated, and a crash of the server empties the table (every relay then
-- writes its rows again at its next flush).

CREATE UNLOGGED TABLE sserelay.presence (
    -- The relay process that holds the streams (host, pid and a random part).
    relay        text NOT NULL,
    channel      text NOT NULL,
    -- The token's `sub`; '' counts the streams without one (anonymous).
    subject      text NOT NULL,
    -- Open streams of this subject on this channel at this relay; 0 while the subject
    -- lingers (its last stream ended less than the coalescing window ago).
    connections  integer NOT NULL CHECK (connections >= 0),
    -- The row's lease: the relay renews it while it runs; readers ignore expired rows
    -- (a dead relay's) and the relays' periodic prune deletes them.
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (channel, subject, relay)
);

CREATE INDEX presence_relay ON sserelay.presence (relay);

COMMENT ON TABLE sserelay.presence IS
    'Presence: one row per relay, channel and subject; rows whose expires_at has passed are stale';

-- One relay's flush, in one round trip: the changed rows (p_counts NULL deletes a row),
-- then the lease of every row of the relay renewed once half of it has gone. With
-- p_events, the changed channels are locked (transaction advisory locks, so the relays'
-- flushes of one channel take turns) and the function returns the non-anonymous
-- subjects that joined or left the channel across all relays.
CREATE FUNCTION sserelay.presence_write(
    p_relay text,
    p_lease interval,
    p_channels text[],
    p_subjects text[],
    p_counts integer[],
    p_events boolean
) RETURNS TABLE (out_channel text, out_kind text, out_subject text)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    c text;
    s text;
    n integer;
    mine boolean;
    others boolean;
BEGIN
    IF p_events THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('sserelay.presence:' || t.name, 0))
        FROM (SELECT DISTINCT u.name FROM unnest(p_channels) AS u(name) ORDER BY 1) AS t;
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_channels, 1), 0) LOOP
        c := p_channels[i];
        s := p_subjects[i];
        n := p_counts[i];
        IF p_events AND s <> '' THEN
            SELECT EXISTS (
                SELECT 1 FROM sserelay.presence p
                WHERE p.channel = c AND p.subject = s AND p.relay <> p_relay
                  AND p.expires_at > now()
            ) INTO others;
            SELECT EXISTS (
                SELECT 1 FROM sserelay.presence p
                WHERE p.channel = c AND p.subject = s AND p.relay = p_relay
                  AND p.expires_at > now()
            ) INTO mine;
        END IF;
        IF n IS NULL THEN
            DELETE FROM sserelay.presence p
            WHERE p.channel = c AND p.subject = s AND p.relay = p_relay;
        ELSE
            INSERT INTO sserelay.presence AS p (relay, channel, subject, connections, expires_at)
            VALUES (p_relay, c, s, n, now() + p_lease)
            ON CONFLICT (channel, subject, relay) DO UPDATE
                SET connections = excluded.connections, expires_at = excluded.expires_at;
        END IF;
        IF p_events AND s <> '' AND NOT others THEN
            IF n IS NULL AND mine THEN
                out_channel := c; out_kind := 'sserelay.leave'; out_subject := s;
                RETURN NEXT;
            ELSIF n IS NOT NULL AND NOT mine THEN
                out_channel := c; out_kind := 'sserelay.join'; out_subject := s;
                RETURN NEXT;
            END IF;
        END IF;
    END LOOP;
    UPDATE sserelay.presence p SET expires_at = now() + p_lease
    WHERE p.relay = p_relay AND p.expires_at < now() + p_lease / 2;
END
$$;

-- Who is on a channel, across all relays: one row per subject ('' = anonymous streams).
CREATE FUNCTION sserelay.presence_of(p_channel text)
RETURNS TABLE (subject text, connections bigint)
LANGUAGE sql STABLE AS $$
    SELECT p.subject, sum(p.connections)
    FROM sserelay.presence p
    WHERE p.channel = p_channel AND p.expires_at > now()
    GROUP BY p.subject
$$;

-- Delete the rows whose lease has passed (a dead relay's). With p_events, the channels
-- concerned are locked first (as presence_write does) and the non-anonymous subjects
-- that are now on no relay are returned: they left with the dead relay.
CREATE FUNCTION sserelay.presence_prune(p_events boolean)
RETURNS TABLE (out_channel text, out_kind text, out_subject text)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_events THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('sserelay.presence:' || t.name, 0))
        FROM (
            SELECT DISTINCT p.channel AS name FROM sserelay.presence p
            WHERE p.expires_at < now() ORDER BY 1
        ) AS t;
    END IF;
    RETURN QUERY
    WITH gone AS (
        DELETE FROM sserelay.presence p WHERE p.expires_at < now()
        RETURNING p.channel, p.subject
    )
    SELECT DISTINCT g.channel, 'sserelay.leave'::text, g.subject FROM gone g
    WHERE p_events AND g.subject <> '' AND NOT EXISTS (
        SELECT 1 FROM sserelay.presence p
        WHERE p.channel = g.channel AND p.subject = g.subject AND p.expires_at > now()
    );
END
$$;
