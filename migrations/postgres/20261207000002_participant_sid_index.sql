-- A leave finds its participant row by sid within the open call: without this index every
-- leave read the whole call's rows, so a long call made each leave slower and warmed every
-- pooled connection's page cache with the table.
CREATE INDEX participants_org_call_sid ON participants (org_id, call_id, sid);
