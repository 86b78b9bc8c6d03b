-- AIC (neural audio compression) settings: one org default (room_id NULL) and per-room
-- overrides. Ratios and qualities are stored as integers (percent, hundredths) so both
-- databases store them the same way.
CREATE TABLE aic_configs (
    id                  TEXT    NOT NULL PRIMARY KEY,
    org_id              TEXT    NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    room_id             TEXT,
    mode                TEXT    NOT NULL CHECK (mode IN ('conservative', 'adaptive', 'aggressive')),
    target_ratio_pct    INTEGER NOT NULL CHECK (target_ratio_pct BETWEEN 1 AND 100),
    max_latency_ms      INTEGER NOT NULL CHECK (max_latency_ms BETWEEN 1 AND 1000),
    model_type          TEXT    NOT NULL,
    use_gpu             INTEGER NOT NULL CHECK (use_gpu IN (0, 1)),
    min_quality_centi   INTEGER NOT NULL CHECK (min_quality_centi BETWEEN 100 AND 500),
    enabled             INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    FOREIGN KEY (org_id, room_id) REFERENCES rooms (org_id, id) ON DELETE CASCADE
) STRICT;
CREATE UNIQUE INDEX aic_configs_org_default ON aic_configs (org_id) WHERE room_id IS NULL;
CREATE UNIQUE INDEX aic_configs_room ON aic_configs (org_id, room_id) WHERE room_id IS NOT NULL;
