-- sserelay durable channels, version 2: retention (sserelay.prune).

-- Delete old events: per channel, those created more than max_age ago and/or those
-- beyond the newest max_count (an event goes if either rule says so; a NULL rule is off).
--
-- Only a prefix of each channel's log is deleted, so the log stays contiguous
-- (oldest .. last id, no holes): an event older than max_age that sits after a newer
-- one waits for the next run. Deletes go by (channel, id) ranges in batches.
-- sserelay.channels is not touched (its rows keep each channel's last id, so ids are
-- never reused), and deleted rows are ones no publisher writes: publishers never wait.
--
-- Returns the number of events deleted, or NULL when another prune is running (one
-- pruner at a time, by a transaction-level advisory lock).
CREATE FUNCTION sserelay.prune(max_age interval DEFAULT NULL, max_count integer DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    batch      constant integer := 10000;
    -- int8 of the bytes 'sseprune': the same key as sserelay.schema.PRUNE_LOCK_KEY
    lock_key   constant bigint := 8319104470314479205;
    ch         text;
    lo         bigint;
    keep_from  bigint;
    cut        bigint;
    bound      bigint;
    n          bigint;
    total      bigint := 0;
BEGIN
    IF max_count < 0 THEN
        RAISE EXCEPTION 'sserelay.prune: max_count must not be negative, not %', max_count
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_age < interval '0' THEN
        RAISE EXCEPTION 'sserelay.prune: max_age must not be negative, not %', max_age
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_age IS NULL AND max_count IS NULL THEN
        RETURN 0;
    END IF;
    IF NOT pg_catalog.pg_try_advisory_xact_lock(lock_key) THEN
        RETURN NULL;
    END IF;

    -- Every channel that has events, by a loose scan of the primary key's index (one
    -- index probe per channel, where DISTINCT would read every row).
    FOR ch IN
        WITH RECURSIVE present(channel) AS (
            (SELECT e.channel FROM sserelay.events AS e ORDER BY e.channel LIMIT 1)
            UNION ALL
            SELECT (SELECT e.channel FROM sserelay.events AS e
                    WHERE e.channel > p.channel ORDER BY e.channel LIMIT 1)
            FROM present AS p WHERE p.channel IS NOT NULL
        )
        SELECT p.channel FROM present AS p WHERE p.channel IS NOT NULL
    LOOP
        SELECT min(e.id) INTO lo FROM sserelay.events AS e WHERE e.channel = ch;
        CONTINUE WHEN lo IS NULL;
        keep_from := lo;

        IF max_count IS NOT NULL THEN
            -- the newest event beyond the newest max_count, if there is one
            SELECT e.id INTO cut FROM sserelay.events AS e
            WHERE e.channel = ch ORDER BY e.id DESC OFFSET max_count LIMIT 1;
            IF FOUND THEN
                keep_from := greatest(keep_from, cut + 1);
            END IF;
        END IF;

        IF max_age IS NOT NULL THEN
            -- the first event young enough to keep; none: the whole log is old
            SELECT e.id INTO cut FROM sserelay.events AS e
            WHERE e.channel = ch AND e.created_at >= now() - max_age
            ORDER BY e.id LIMIT 1;
            IF NOT FOUND THEN
                SELECT max(e.id) + 1 INTO cut FROM sserelay.events AS e WHERE e.channel = ch;
            END IF;
            keep_from := greatest(keep_from, cut);
        END IF;

        WHILE lo < keep_from LOOP
            bound := least(lo + batch, keep_from);
            DELETE FROM sserelay.events AS e
            WHERE e.channel = ch AND e.id >= lo AND e.id < bound;
            GET DIAGNOSTICS n = ROW_COUNT;
            total := total + n;
            -- skip any gap in the ids instead of walking it batch by batch
            SELECT coalesce(min(e.id), keep_from) INTO lo FROM sserelay.events AS e
            WHERE e.channel = ch AND e.id >= bound AND e.id < keep_from;
        END LOOP;
    END LOOP;
    RETURN total;
END
$$;

COMMENT ON FUNCTION sserelay.prune(interval, integer) IS
    'Delete events older than max_age and/or beyond the newest max_count per channel; '
    'returns the count deleted, NULL if another prune is running.';
