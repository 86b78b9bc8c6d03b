-- AIC per-track aggregates, written when a track leaves the AIC stage (it ends, or its room
-- turns AIC off). Rooms are named, not referenced: a room need not be on record to run AIC.
CREATE TABLE aic_metrics (
    id                  TEXT    NOT NULL PRIMARY KEY,
    org_id              TEXT    NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    room                TEXT    NOT NULL,
    track               TEXT    NOT NULL,
    participant         TEXT    NOT NULL,
    mode                TEXT    NOT NULL CHECK (mode IN ('conservative', 'adaptive', 'aggressive')),
    frames_aic          INTEGER NOT NULL CHECK (frames_aic >= 0),
    frames_opus         INTEGER NOT NULL CHECK (frames_opus >= 0),
    aic_bytes           INTEGER NOT NULL CHECK (aic_bytes >= 0),
    opus_bytes          INTEGER NOT NULL CHECK (opus_bytes >= 0),
    saved_bytes         INTEGER NOT NULL CHECK (saved_bytes >= 0),
    latency_us_sum      INTEGER NOT NULL CHECK (latency_us_sum >= 0),
    latency_count       INTEGER NOT NULL CHECK (latency_count >= 0),
    quality_milli_sum   INTEGER NOT NULL CHECK (quality_milli_sum >= 0),
    quality_count       INTEGER NOT NULL CHECK (quality_count >= 0),
    fallback_count      INTEGER NOT NULL CHECK (fallback_count >= 0),
    started_at          INTEGER NOT NULL,
    ended_at            INTEGER NOT NULL CHECK (ended_at >= started_at)
) STRICT;
CREATE INDEX aic_metrics_room ON aic_metrics (org_id, room, ended_at);
