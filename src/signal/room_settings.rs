//! The control API's settings of a room, read when a participant joins it: its metadata and
//! the limits the router applies (`max_participants`, `empty_timeout_secs`).

use std::time::Duration;

use crate::db::{Db, rooms};
use crate::sfu::core::RoomLimits;

/// The metadata and limits stored for `org`'s room; none if there is no such row. A
/// database that cannot answer does not keep anyone out of a room: media does not need it.
pub async fn stored(db: &Db, org: &str, room: &str) -> (String, RoomLimits) {
    match rooms::settings(db, org, room).await {
        Ok(Some(r)) => {
            let limits = RoomLimits {
                // The API keeps both in range (0 to 100000, 0 to 86400); 0 means unset.
                max_participants: r.max_participants.unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
                empty_timeout: r.empty_timeout_secs.filter(|s| *s > 0).map(|s| Duration::from_secs(s as u64)),
            };
            (r.metadata, limits)
        }
        Ok(None) => Default::default(),
        Err(e) => {
            tracing::warn!(error = %e, "room settings unavailable; joining without them");
            Default::default()
        }
    }
}
