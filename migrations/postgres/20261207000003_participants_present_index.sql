-- A join counts who is still in the call: only those rows, not the whole call's history.
CREATE INDEX participants_org_call_present ON participants (org_id, call_id) WHERE left_at IS NULL;
