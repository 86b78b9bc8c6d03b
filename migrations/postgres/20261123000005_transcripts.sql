-- Speech taps: a room's transcription settings, and the final captions kept as transcripts.
CREATE TABLE transcription_configs (
    id            TEXT    NOT NULL PRIMARY KEY,
    org_id        TEXT    NOT NULL,
    room_id       TEXT    NOT NULL,
    enabled       BIGINT NOT NULL CHECK (enabled IN (0, 1)),
    language      TEXT,                               -- NULL: detected per utterance
    translate_to  TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    UNIQUE (org_id, room_id),
    FOREIGN KEY (org_id, room_id) REFERENCES rooms (org_id, id) ON DELETE CASCADE
);

-- One utterance of one speaker. The call is the room's open call when it was spoken (NULL if
-- none was on record); times are wall-clock ms.
CREATE TABLE transcripts (
    id                TEXT    NOT NULL PRIMARY KEY,
    org_id            TEXT    NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    call_id           TEXT,
    room              TEXT    NOT NULL,
    identity          TEXT    NOT NULL,
    track             TEXT    NOT NULL,
    start_ms          BIGINT NOT NULL,
    end_ms            BIGINT NOT NULL CHECK (end_ms >= start_ms),
    text              TEXT    NOT NULL,
    language          TEXT    NOT NULL,
    source_language   TEXT,
    confidence_milli  BIGINT NOT NULL CHECK (confidence_milli BETWEEN 0 AND 1000),
    created_at        BIGINT NOT NULL
);
CREATE INDEX transcripts_call ON transcripts (org_id, call_id, start_ms);
CREATE INDEX transcripts_identity ON transcripts (org_id, identity);

GRANT SELECT, INSERT, UPDATE, DELETE ON transcription_configs TO auralink_app;
GRANT SELECT, INSERT, DELETE ON transcripts TO auralink_app;
ALTER TABLE transcription_configs ENABLE ROW LEVEL SECURITY;
ALTER TABLE transcription_configs FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON transcription_configs
    USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));
ALTER TABLE transcripts ENABLE ROW LEVEL SECURITY;
ALTER TABLE transcripts FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON transcripts
    USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));
