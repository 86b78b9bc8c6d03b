//! Calls: a room's sessions from its first participant to its closing.

use super::{DbError, Tx};
use crate::ids::RoomName;

#[derive(sqlx::FromRow)]
struct Id {
    id: String,
}

/// The open call of the org's room, whether or not the room was deleted since.
pub async fn open_call(tx: &mut Tx, org: &str, room: &RoomName) -> Result<Option<String>, DbError> {
    let sql = "SELECT c.id AS id FROM calls c JOIN rooms r ON r.org_id = c.org_id AND r.id = c.room_id \
               WHERE c.org_id = $1 AND r.name = $2 AND c.ended_at IS NULL ORDER BY c.started_at DESC LIMIT 1";
    Ok(tx.fetch_optional::<Id>(sql, crate::args![org, room.local()]).await?.map(|r| r.id))
}
