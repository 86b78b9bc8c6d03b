-- Which API key minted each key (NULL: made by the admin key, or with its org), so that
-- revoking a key, or removing its user, revokes what it minted too, transitively.
ALTER TABLE api_keys ADD COLUMN created_by_key TEXT;
UPDATE api_keys SET created_by_key = substr(created_by, 9) WHERE created_by LIKE 'api_key:%';
CREATE INDEX api_keys_created_by_key ON api_keys (org_id, created_by_key);
-- Keys minted by a key revoked before this migration go with it, as they would from now on.
WITH RECURSIVE gone (id, at) AS (
    SELECT id, revoked_at FROM api_keys WHERE revoked_at IS NOT NULL
    UNION
    SELECT k.id, g.at FROM api_keys k JOIN gone g ON k.created_by_key = g.id
)
UPDATE api_keys
SET revoked_at = (SELECT MIN(at) FROM gone WHERE gone.id = api_keys.id), revoked_by = 'system:migration'
WHERE revoked_at IS NULL AND id IN (SELECT id FROM gone);
