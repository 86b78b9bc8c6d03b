-- AuraLink initial schema (PostgreSQL). Reference: docs/data-model.md.
-- Same tables, columns and names as migrations/sqlite/20261123000001_init.sql.
-- ids: TEXT (prefixed ULID-like, generated in Rust). Times: BIGINT unix milliseconds, bound
-- from Rust. JSON: TEXT (not JSONB) so one Rust type decodes both engines; validity is checked
-- with a ::json cast. sqlx runs this file inside one transaction: nothing here may need to run
-- outside one (no CREATE INDEX CONCURRENTLY).

CREATE TABLE orgs (
    id          TEXT   NOT NULL PRIMARY KEY,
    name        TEXT   NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    metadata    TEXT   NOT NULL DEFAULT '{}' CHECK (json_typeof(metadata::json) IS NOT NULL),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    deleted_at  BIGINT
);

CREATE TABLE users (
    id            TEXT   NOT NULL PRIMARY KEY,
    org_id        TEXT   NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    email         TEXT   NOT NULL,
    display_name  TEXT   NOT NULL DEFAULT '',
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    deleted_at    BIGINT,
    UNIQUE (org_id, id)
);
CREATE UNIQUE INDEX users_org_email_live ON users (org_id, lower(email)) WHERE deleted_at IS NULL;

CREATE TABLE memberships (
    org_id      TEXT   NOT NULL,
    user_id     TEXT   NOT NULL,
    role        TEXT   NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (org_id, user_id),
    FOREIGN KEY (org_id, user_id) REFERENCES users (org_id, id) ON DELETE CASCADE
);

CREATE TABLE api_keys (
    id            TEXT   NOT NULL PRIMARY KEY,
    org_id        TEXT   NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    user_id       TEXT,                                   -- NULL: service key
    name          TEXT   NOT NULL,
    prefix        TEXT   NOT NULL UNIQUE,                 -- public part of alk_<prefix>_<secret>
    secret_hash   BYTEA  NOT NULL CHECK (octet_length(secret_hash) = 32),  -- SHA-256(secret)
    role          TEXT   NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    scopes        TEXT   NOT NULL CHECK (json_typeof(scopes::json) = 'array'),
    expires_at    BIGINT,
    last_used_at  BIGINT,
    last_used_ip  TEXT,
    created_by    TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    revoked_by    TEXT,
    UNIQUE (org_id, id),
    FOREIGN KEY (org_id, user_id) REFERENCES users (org_id, id) ON DELETE CASCADE
);

CREATE TABLE livekit_keys (
    id          TEXT   NOT NULL PRIMARY KEY,
    org_id      TEXT   NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    api_key     TEXT   NOT NULL UNIQUE,                   -- JWT iss
    secret_ct   BYTEA  NOT NULL,                          -- nonce || AES-256-GCM ciphertext || tag
    enc_key_id  TEXT   NOT NULL,                          -- master key version
    name        TEXT   NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    UNIQUE (org_id, id)
);

-- Pre-tenant lookup: API key prefix / LiveKit api_key -> org. No secret here.
-- Deliberately WITHOUT row-level security: it is how a request learns which org to scope to.
CREATE TABLE key_lookup (
    kind    TEXT NOT NULL CHECK (kind IN ('api_key', 'livekit_key')),
    lookup  TEXT NOT NULL,
    org_id  TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    PRIMARY KEY (kind, lookup)
);

CREATE TABLE rooms (
    id                  TEXT    NOT NULL PRIMARY KEY,
    org_id              TEXT    NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name                TEXT    NOT NULL,
    metadata            TEXT    NOT NULL DEFAULT '',      -- LiveKit free-form string, not JSON
    empty_timeout_secs  BIGINT,
    max_participants    BIGINT,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL,
    deleted_at          BIGINT,
    UNIQUE (org_id, id)
);
CREATE UNIQUE INDEX rooms_org_name_live ON rooms (org_id, name) WHERE deleted_at IS NULL;

CREATE TABLE calls (
    id                TEXT    NOT NULL PRIMARY KEY,
    org_id            TEXT    NOT NULL,
    room_id           TEXT    NOT NULL,
    sid               TEXT    NOT NULL UNIQUE,            -- LiveKit room sid "RM_..."
    node_id           TEXT    NOT NULL DEFAULT '',
    started_at        BIGINT  NOT NULL,
    ended_at          BIGINT,
    end_reason        TEXT,
    max_participants  BIGINT NOT NULL DEFAULT 0,
    UNIQUE (org_id, id),
    FOREIGN KEY (org_id, room_id) REFERENCES rooms (org_id, id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX calls_open ON calls (room_id) WHERE ended_at IS NULL;
CREATE INDEX calls_org_started ON calls (org_id, started_at DESC);

CREATE TABLE participants (
    id            TEXT   NOT NULL PRIMARY KEY,
    org_id        TEXT   NOT NULL,
    call_id       TEXT   NOT NULL,
    identity      TEXT   NOT NULL,
    name          TEXT   NOT NULL DEFAULT '',
    sid           TEXT   NOT NULL,                        -- "PA_...", node-local, never a key
    kind          TEXT   NOT NULL CHECK (kind IN ('human', 'agent', 'ingress')),
    metadata      TEXT   NOT NULL DEFAULT '',             -- LiveKit free-form string, not JSON
    joined_at     BIGINT NOT NULL,
    left_at       BIGINT,
    leave_reason  TEXT,
    CHECK (left_at IS NULL OR left_at >= joined_at),
    FOREIGN KEY (org_id, call_id) REFERENCES calls (org_id, id) ON DELETE CASCADE
);
CREATE INDEX participants_org_call_joined ON participants (org_id, call_id, joined_at);
CREATE UNIQUE INDEX participants_call_identity_live ON participants (call_id, identity) WHERE left_at IS NULL;

-- Append-only; no FK to orgs (the log outlives its org).
CREATE TABLE audit_log (
    id           TEXT   NOT NULL PRIMARY KEY,
    org_id       TEXT   NOT NULL,
    at           BIGINT NOT NULL,
    actor_type   TEXT   NOT NULL CHECK (actor_type IN ('api_key', 'admin', 'livekit_key', 'system')),
    actor_id     TEXT   NOT NULL,
    action       TEXT   NOT NULL,                         -- e.g. 'room.create'
    target_type  TEXT   NOT NULL,
    target_id    TEXT,
    before       TEXT   CHECK (before IS NULL OR json_typeof(before::json) IS NOT NULL),
    after        TEXT   CHECK (after IS NULL OR json_typeof(after::json) IS NOT NULL),
    request_id   TEXT,
    ip           TEXT,
    user_agent   TEXT
);
CREATE INDEX audit_log_org_id ON audit_log (org_id, id DESC);
CREATE INDEX audit_log_org_target ON audit_log (org_id, target_type, target_id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only' USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- No FK to orgs: platform-admin requests use org_id 'platform'.
CREATE TABLE idempotency_keys (
    org_id         TEXT    NOT NULL,
    principal_id   TEXT    NOT NULL,
    key            TEXT    NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    method         TEXT    NOT NULL,
    path           TEXT    NOT NULL,
    request_hash   BYTEA   NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('in_progress', 'done')),
    status         BIGINT,
    response_body  BYTEA,
    content_type   TEXT,
    created_at     BIGINT  NOT NULL,
    expires_at     BIGINT  NOT NULL,
    PRIMARY KEY (org_id, principal_id, key)
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);

-- ---------------------------------------------------------------------------------------------
-- Application role. Roles are cluster-wide and parallel test databases run this migration at
-- the same time: a concurrent CREATE ROLE waits for the other transaction and then fails with
-- unique_violation, an existing role gives duplicate_object; both are fine.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'auralink_app') THEN
        CREATE ROLE auralink_app NOLOGIN NOSUPERUSER NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- Let the migrating owner `SET ROLE auralink_app` (the app pool does so after connecting).
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_catalog.pg_auth_members m
        JOIN pg_catalog.pg_roles r ON r.oid = m.roleid
        JOIN pg_catalog.pg_roles u ON u.oid = m.member
        WHERE r.rolname = 'auralink_app' AND u.rolname = current_user
    ) THEN
        GRANT auralink_app TO CURRENT_USER;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO auralink_app', current_schema());
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO auralink_app',
                   current_schema());
    -- sqlx's bookkeeping table: read-only for the app (it exists when sqlx runs this file).
    IF to_regclass(format('%I._sqlx_migrations', current_schema())) IS NOT NULL THEN
        EXECUTE format('REVOKE ALL ON TABLE %I._sqlx_migrations FROM auralink_app', current_schema());
        EXECUTE format('GRANT SELECT ON TABLE %I._sqlx_migrations TO auralink_app', current_schema());
    END IF;
END
$$;
-- Append-only audit log: the app may only read and insert.
REVOKE UPDATE, DELETE ON audit_log FROM auralink_app;

-- ---------------------------------------------------------------------------------------------
-- Row-level security. Every request runs in a transaction that first does
-- SELECT set_config('app.org_id', $1, true); an unset setting matches no row.
ALTER TABLE orgs ENABLE ROW LEVEL SECURITY;
ALTER TABLE orgs FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON orgs
    USING (id = current_setting('app.org_id', true))
    WITH CHECK (id = current_setting('app.org_id', true));

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON users
    USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));

ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON memberships
    USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON api_keys
    USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));

ALTER TABLE livekit_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE livekit_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON livekit_keys
    USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));

ALTER TABLE rooms ENABLE ROW LEVEL SECURITY;
ALTER TABLE rooms FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON rooms
    USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));

ALTER TABLE calls ENABLE ROW LEVEL SECURITY;
ALTER TABLE calls FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON calls
    USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));

ALTER TABLE participants ENABLE ROW LEVEL SECURITY;
ALTER TABLE participants FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON participants
    USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));

ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation ON idempotency_keys
    USING (org_id = current_setting('app.org_id', true))
    WITH CHECK (org_id = current_setting('app.org_id', true));

-- audit_log: read and append only; no UPDATE/DELETE policy (and no grant, and the trigger).
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY org_isolation_select ON audit_log FOR SELECT
    USING (org_id = current_setting('app.org_id', true));
CREATE POLICY org_isolation_insert ON audit_log FOR INSERT
    WITH CHECK (org_id = current_setting('app.org_id', true));

-- key_lookup: no row-level security (see above).
