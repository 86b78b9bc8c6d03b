//! Call history from router events: a call per room session (first join to close) and a
//! participant row per join, with leave time and reason. Rooms somebody joins without one
//! recorded get their record, as LiveKit auto-creates them. Writing history never holds up
//! media: events come off the router's broadcast, and a database that cannot keep up or is
//! down loses rows, counted in `auralink_history_events_dropped_total`. When history falls
//! behind the broadcast it catches up from the router's state (`sfu::mirror`), so a missed
//! leave or close is still written, late and with reason `unknown`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::args;
use crate::db::calls::open_call;
use crate::db::{Db, DbError, Tx};
use crate::ids::{Identity, ParticipantId, RoomName, record_id};
use crate::sfu::core::{LeaveReason, SfuEvent};
use crate::sfu::driver::SfuHandle;
use crate::sfu::mirror::Follower;
use crate::signal::livekit::Registry;
use crate::wall::Clock;

#[derive(Debug, Default)]
pub struct HistoryStats {
    pub recorded: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(sqlx::FromRow)]
struct Id {
    id: String,
}

#[derive(sqlx::FromRow)]
struct Count {
    n: i64,
}

/// Records router events until the router stops.
pub fn spawn(db: Db, sfu: SfuHandle, registry: Arc<Registry>, clock: Clock) -> Arc<HistoryStats> {
    let stats = Arc::new(HistoryStats::default());
    let mut follower = Follower::new(sfu, "call history");
    tokio::spawn({
        let stats = Arc::clone(&stats);
        async move {
            while let Some(batch) = follower.next().await {
                for e in batch {
                    match record(&db, &registry, &e, clock.now_ms()).await {
                        Ok(true) => {
                            stats.recorded.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(false) => {}
                        Err(err) => {
                            tracing::warn!(error = %err, event = ?e, "call history not recorded");
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    });
    stats
}

/// Writes what `e` changes; false for events history does not keep.
async fn record(db: &Db, registry: &Registry, e: &SfuEvent, now: i64) -> Result<bool, DbError> {
    let (room, org) = match e {
        SfuEvent::RoomStarted { room }
        | SfuEvent::RoomClosed { room }
        | SfuEvent::ParticipantJoined { room, .. }
        | SfuEvent::ParticipantLeft { room, .. } => match room.org() {
            Some(org) => (room, org.to_string()),
            None => return Ok(false),
        },
        _ => return Ok(false),
    };
    let mut tx = db.begin(&org).await?;
    match e {
        SfuEvent::RoomStarted { .. } => start_call(&mut tx, &org, room, now).await?,
        SfuEvent::RoomClosed { .. } => end_call(&mut tx, &org, room, now).await?,
        SfuEvent::ParticipantJoined { participant, identity, .. } => {
            let name = registry.participant(*participant).map(|m| m.name).unwrap_or_default();
            joined(&mut tx, &org, room, *participant, identity, &name, now).await?
        }
        SfuEvent::ParticipantLeft { participant, reason, .. } => {
            left(&mut tx, &org, room, *participant, *reason, now).await?
        }
        _ => unreachable!("filtered above"),
    }
    tx.commit().await?;
    Ok(true)
}

async fn start_call(tx: &mut Tx, org: &str, room: &RoomName, now: i64) -> Result<(), DbError> {
    let sql = "INSERT INTO rooms (id, org_id, name, metadata, created_at, updated_at) \
               VALUES ($1, $2, $3, '', $4, $4) ON CONFLICT DO NOTHING";
    tx.execute(sql, args![record_id("room", now), org, room.local(), now]).await?;
    let sql = "SELECT id FROM rooms WHERE org_id = $1 AND name = $2 AND deleted_at IS NULL";
    let room_id = tx.fetch_one::<Id>(sql, args![org, room.local()]).await?.id;
    // A call still open here was cut short by a restart of this node.
    let sql = "UPDATE calls SET ended_at = $1, end_reason = 'interrupted' WHERE org_id = $2 AND room_id = $3 \
               AND ended_at IS NULL";
    tx.execute(sql, args![now, org, &room_id]).await?;
    let id = record_id("call", now);
    let sid = format!("RM_{}", &id["call_".len()..]);
    let sql = "INSERT INTO calls (id, org_id, room_id, sid, started_at) VALUES ($1, $2, $3, $4, $5)";
    tx.execute(sql, args![&id, org, &room_id, &sid, now]).await?;
    Ok(())
}

async fn end_call(tx: &mut Tx, org: &str, room: &RoomName, now: i64) -> Result<(), DbError> {
    let Some(call) = open_call(tx, org, room).await? else { return Ok(()) };
    let sql = "UPDATE participants SET left_at = $1, leave_reason = 'room_closed' WHERE org_id = $2 \
               AND call_id = $3 AND left_at IS NULL";
    tx.execute(sql, args![now, org, &call]).await?;
    let sql = "UPDATE calls SET ended_at = $1, end_reason = 'closed' WHERE org_id = $2 AND id = $3";
    tx.execute(sql, args![now, org, &call]).await?;
    Ok(())
}

async fn joined(
    tx: &mut Tx,
    org: &str,
    room: &RoomName,
    participant: ParticipantId,
    identity: &Identity,
    name: &str,
    now: i64,
) -> Result<(), DbError> {
    let Some(call) = open_call(tx, org, room).await? else { return Ok(()) };
    let sql = "INSERT INTO participants (id, org_id, call_id, identity, name, sid, kind, joined_at) \
               VALUES ($1, $2, $3, $4, $5, $6, 'human', $7) ON CONFLICT DO NOTHING";
    let args = args![record_id("part", now), org, &call, identity.as_str(), name, participant.to_string(), now];
    tx.execute(sql, args).await?;
    let sql = "SELECT COUNT(*) AS n FROM participants WHERE org_id = $1 AND call_id = $2 AND left_at IS NULL";
    let n = tx.fetch_one::<Count>(sql, args![org, &call]).await?.n;
    let sql = "UPDATE calls SET max_participants = $1 WHERE org_id = $2 AND id = $3 AND max_participants < $1";
    tx.execute(sql, args![n, org, &call]).await?;
    Ok(())
}

async fn left(
    tx: &mut Tx,
    org: &str,
    room: &RoomName,
    participant: ParticipantId,
    reason: LeaveReason,
    now: i64,
) -> Result<(), DbError> {
    let Some(call) = open_call(tx, org, room).await? else { return Ok(()) };
    let reason = serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let sql = "UPDATE participants SET left_at = $1, leave_reason = $2 WHERE org_id = $3 AND call_id = $4 \
               AND sid = $5 AND left_at IS NULL";
    tx.execute(sql, args![now, reason, org, &call, participant.to_string()]).await?;
    Ok(())
}
