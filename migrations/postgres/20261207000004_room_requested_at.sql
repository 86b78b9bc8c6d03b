-- When a room was last asked for through the API (LiveKit's CreateRoom, POST /v1/rooms): a
-- room that nobody has joined since is listed until its empty timeout runs out from then.
-- Kept apart from updated_at, which a metadata change moves too. Rooms recorded only because
-- someone joined have none.
ALTER TABLE rooms ADD COLUMN requested_at BIGINT;
UPDATE rooms SET requested_at = updated_at WHERE deleted_at IS NULL;
