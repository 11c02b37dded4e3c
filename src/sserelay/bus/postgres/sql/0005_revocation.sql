-- sserelay revocation, version 5: tokens withdrawn before they expire. See docs/revocation.md.
--
-- A revocation names a token subject (`sub`), one token (`jti`) or a channel pattern, and
-- the time it was made: every relay ends the streams it covers and refuses the tokens it
-- names that were issued (`iat`) before that time. Relays read this table when they
-- start and whenever their connection comes back, and LISTEN on the channel
-- 'sserelay.revoked' for new rows; they ignore rows older than their `revocation_ttl`.

CREATE TABLE sserelay.revocations (
    kind        text NOT NULL CHECK (kind IN ('subject', 'jti', 'channel')),
    value       text NOT NULL CHECK (value <> '' AND length(value) <= 255),
    revoked_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (kind, value)
);

CREATE INDEX revocations_revoked_at ON sserelay.revocations (revoked_at);

COMMENT ON TABLE sserelay.revocations IS
    'Revoked token subjects, token ids (jti) and channel patterns (sserelay.revoke)';

-- Revoke one subject, one jti or one channel pattern (exactly one of them), now: insert (or
-- move forward) its row, delete rows older than `keep`, and notify every relay (at commit).
-- Returns the revocation's time: tokens issued before it are refused.
CREATE FUNCTION sserelay.revoke(
    subject text DEFAULT NULL, jti text DEFAULT NULL, channel text DEFAULT NULL,
    keep interval DEFAULT '24 hours')
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    given integer := (subject IS NOT NULL)::integer + (jti IS NOT NULL)::integer
                     + (channel IS NOT NULL)::integer;
    r_kind text;
    r_value text;
    r_at timestamptz := clock_timestamp();
BEGIN
    IF given <> 1 THEN
        RAISE EXCEPTION 'sserelay.revoke needs exactly one of subject, jti or channel'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    r_kind := CASE WHEN subject IS NOT NULL THEN 'subject'
                   WHEN jti IS NOT NULL THEN 'jti' ELSE 'channel' END;
    r_value := coalesce(subject, jti, channel);
    IF r_value = '' OR length(r_value) > 255 OR r_value ~ '[\x01-\x1f\x7f]' THEN
        RAISE EXCEPTION 'sserelay.revoke: the % must be 1 to 255 characters without control characters', r_kind
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO sserelay.revocations AS r (kind, value, revoked_at)
        VALUES (r_kind, r_value, r_at)
        ON CONFLICT (kind, value) DO UPDATE SET revoked_at = greatest(r.revoked_at, r_at);
    DELETE FROM sserelay.revocations WHERE revoked_at < r_at - keep;
    PERFORM pg_notify('sserelay.revoked', json_build_object(
        'kind', r_kind, 'value', r_value, 'at', extract(epoch FROM r_at))::text);
    RETURN r_at;
END
$$;

COMMENT ON FUNCTION sserelay.revoke(text, text, text, interval) IS
    'Revoke the tokens of a subject, one token (jti) or a channel pattern issued before now';
