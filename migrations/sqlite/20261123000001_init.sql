-- AuraLink initial schema (SQLite). Reference: docs/data-model.md.
-- Same tables, columns and names as migrations/postgres/20261123000001_init.sql.
-- ids: TEXT (prefixed ULID-like, generated in Rust). Times: INTEGER unix milliseconds, bound
-- from Rust. JSON: TEXT + CHECK (json_valid). PRAGMAs (foreign_keys, WAL, busy_timeout) are set
-- by the connection options, not here. sqlx runs this file inside one transaction.

CREATE TABLE orgs (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    metadata    TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    deleted_at  INTEGER
) STRICT;

CREATE TABLE users (
    id            TEXT    NOT NULL PRIMARY KEY,
    org_id        TEXT    NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    email         TEXT    NOT NULL,
    display_name  TEXT    NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    deleted_at    INTEGER,
    UNIQUE (org_id, id)
) STRICT;
CREATE UNIQUE INDEX users_org_email_live ON users (org_id, lower(email)) WHERE deleted_at IS NULL;

CREATE TABLE memberships (
    org_id      TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    role        TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (org_id, user_id),
    FOREIGN KEY (org_id, user_id) REFERENCES users (org_id, id) ON DELETE CASCADE
) STRICT;

CREATE TABLE api_keys (
    id            TEXT    NOT NULL PRIMARY KEY,
    org_id        TEXT    NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    user_id       TEXT,                                   -- NULL: service key
    name          TEXT    NOT NULL,
    prefix        TEXT    NOT NULL UNIQUE,                -- public part of alk_<prefix>_<secret>
    secret_hash   BLOB    NOT NULL CHECK (length(secret_hash) = 32),  -- SHA-256(secret)
    role          TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    scopes        TEXT    NOT NULL CHECK (json_valid(scopes) AND json_type(scopes) = 'array'),
    expires_at    INTEGER,
    last_used_at  INTEGER,
    last_used_ip  TEXT,
    created_by    TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    revoked_by    TEXT,
    UNIQUE (org_id, id),
    FOREIGN KEY (org_id, user_id) REFERENCES users (org_id, id) ON DELETE CASCADE
) STRICT;

CREATE TABLE livekit_keys (
    id          TEXT    NOT NULL PRIMARY KEY,
    org_id      TEXT    NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    api_key     TEXT    NOT NULL UNIQUE,                  -- JWT iss
    secret_ct   BLOB    NOT NULL,                         -- nonce || AES-256-GCM ciphertext || tag
    enc_key_id  TEXT    NOT NULL,                         -- master key version
    name        TEXT    NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    UNIQUE (org_id, id)
) STRICT;

-- Pre-tenant lookup: API key prefix / LiveKit api_key -> org. No secret here.
CREATE TABLE key_lookup (
    kind    TEXT NOT NULL CHECK (kind IN ('api_key', 'livekit_key')),
    lookup  TEXT NOT NULL,
    org_id  TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    PRIMARY KEY (kind, lookup)
) STRICT;

CREATE TABLE rooms (
    id                  TEXT    NOT NULL PRIMARY KEY,
    org_id              TEXT    NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name                TEXT    NOT NULL,
    metadata            TEXT    NOT NULL DEFAULT '',      -- LiveKit free-form string, not JSON
    empty_timeout_secs  INTEGER,
    max_participants    INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    deleted_at          INTEGER,
    UNIQUE (org_id, id)
) STRICT;
CREATE UNIQUE INDEX rooms_org_name_live ON rooms (org_id, name) WHERE deleted_at IS NULL;

CREATE TABLE calls (
    id                TEXT    NOT NULL PRIMARY KEY,
    org_id            TEXT    NOT NULL,
    room_id           TEXT    NOT NULL,
    sid               TEXT    NOT NULL UNIQUE,            -- LiveKit room sid "RM_..."
    node_id           TEXT    NOT NULL DEFAULT '',
    started_at        INTEGER NOT NULL,
    ended_at          INTEGER,
    end_reason        TEXT,
    max_participants  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (org_id, id),
    FOREIGN KEY (org_id, room_id) REFERENCES rooms (org_id, id) ON DELETE CASCADE
) STRICT;
CREATE UNIQUE INDEX calls_open ON calls (room_id) WHERE ended_at IS NULL;
CREATE INDEX calls_org_started ON calls (org_id, started_at DESC);

CREATE TABLE participants (
    id            TEXT    NOT NULL PRIMARY KEY,
    org_id        TEXT    NOT NULL,
    call_id       TEXT    NOT NULL,
    identity      TEXT    NOT NULL,
    name          TEXT    NOT NULL DEFAULT '',
    sid           TEXT    NOT NULL,                       -- "PA_...", node-local, never a key
    kind          TEXT    NOT NULL CHECK (kind IN ('human', 'agent', 'ingress')),
    metadata      TEXT    NOT NULL DEFAULT '',            -- LiveKit free-form string, not JSON
    joined_at     INTEGER NOT NULL,
    left_at       INTEGER,
    leave_reason  TEXT,
    CHECK (left_at IS NULL OR left_at >= joined_at),
    FOREIGN KEY (org_id, call_id) REFERENCES calls (org_id, id) ON DELETE CASCADE
) STRICT;
CREATE INDEX participants_org_call_joined ON participants (org_id, call_id, joined_at);
CREATE UNIQUE INDEX participants_call_identity_live ON participants (call_id, identity) WHERE left_at IS NULL;

-- Append-only; no FK to orgs (the log outlives its org).
CREATE TABLE audit_log (
    id           TEXT    NOT NULL PRIMARY KEY,
    org_id       TEXT    NOT NULL,
    at           INTEGER NOT NULL,
    actor_type   TEXT    NOT NULL CHECK (actor_type IN ('api_key', 'admin', 'livekit_key', 'system')),
    actor_id     TEXT    NOT NULL,
    action       TEXT    NOT NULL,                        -- e.g. 'room.create'
    target_type  TEXT    NOT NULL,
    target_id    TEXT,
    before       TEXT    CHECK (before IS NULL OR json_valid(before)),
    after        TEXT    CHECK (after IS NULL OR json_valid(after)),
    request_id   TEXT,
    ip           TEXT,
    user_agent   TEXT
) STRICT;
CREATE INDEX audit_log_org_id ON audit_log (org_id, id DESC);
CREATE INDEX audit_log_org_target ON audit_log (org_id, target_type, target_id);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;

-- No FK to orgs: platform-admin requests use org_id 'platform'.
CREATE TABLE idempotency_keys (
    org_id         TEXT    NOT NULL,
    principal_id   TEXT    NOT NULL,
    key            TEXT    NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    method         TEXT    NOT NULL,
    path           TEXT    NOT NULL,
    request_hash   BLOB    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('in_progress', 'done')),
    status         INTEGER,
    response_body  BLOB,
    content_type   TEXT,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    PRIMARY KEY (org_id, principal_id, key)
) STRICT;
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
