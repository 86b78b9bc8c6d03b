//! The rooms table as the signaling layer reads it when somebody joins.

use super::{Db, DbError};

/// A room's stored metadata and limits (`None`: unset).
#[derive(Debug, sqlx::FromRow)]
pub struct RoomSettings {
    pub metadata: String,
    pub empty_timeout_secs: Option<i64>,
    pub max_participants: Option<i64>,
}

/// The settings of `org`'s live (not deleted) room `name`, if it has a record.
pub async fn settings(db: &Db, org: &str, name: &str) -> Result<Option<RoomSettings>, DbError> {
    let mut tx = db.begin_read(org).await?;
    let sql = "SELECT metadata, empty_timeout_secs, max_participants FROM rooms \
               WHERE org_id = $1 AND name = $2 AND deleted_at IS NULL";
    let row = tx.fetch_optional(sql, crate::args![org, name]).await?;
    tx.commit().await?;
    Ok(row)
}

/// The id of `org`'s live (not deleted) room `name`, if it has a record.
pub async fn id_of(tx: &mut super::Tx, org: &str, name: &str) -> Result<Option<String>, DbError> {
    #[derive(sqlx::FromRow)]
    struct Id {
        id: String,
    }
    let sql = "SELECT id FROM rooms WHERE org_id = $1 AND name = $2 AND deleted_at IS NULL";
    Ok(tx.fetch_optional::<Id>(sql, crate::args![org, name]).await?.map(|r| r.id))
}
