-- Where an org's LiveKit webhooks go: a JSON array of http(s) URLs (at most 5).
ALTER TABLE orgs ADD COLUMN webhook_urls TEXT NOT NULL DEFAULT '[]' CHECK (json_type(webhook_urls) = 'array');
