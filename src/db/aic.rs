//! Stored AIC settings (`aic_configs`: an org's default and per-room overrides) and the
//! counters of tracks that left the stage (`aic_metrics`).

use super::{Db, DbError, Tx};
use crate::args;
use crate::ids::record_id;

/// A stored settings row, as the API validated it.
#[derive(Debug, sqlx::FromRow)]
pub struct AicRow {
    pub id: String,
    pub mode: String,
    pub target_ratio_pct: i64,
    pub max_latency_ms: i64,
    pub model_type: String,
    pub use_gpu: i64,
    pub min_quality_centi: i64,
    pub enabled: i64,
    pub loopback: i64,
}

macro_rules! select {
    ($tail:literal) => {
        concat!(
            "SELECT id, mode, target_ratio_pct, max_latency_ms, model_type, use_gpu, min_quality_centi, enabled, loopback ",
            "FROM aic_configs WHERE org_id = $1 AND ",
            $tail
        )
    };
}

/// The org's default, if it set one.
pub async fn org_row(tx: &mut Tx, org: &str) -> Result<Option<AicRow>, DbError> {
    tx.fetch_optional(select!("room_id IS NULL"), args![org]).await
}

/// The room's override, if it has one.
pub async fn room_row(tx: &mut Tx, org: &str, room_id: &str) -> Result<Option<AicRow>, DbError> {
    tx.fetch_optional(select!("room_id = $2"), args![org, room_id]).await
}

/// A track's AIC counters, as the stage keeps them and as `aic_metrics` stores them.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Counters {
    pub frames_aic: i64,
    pub frames_opus: i64,
    pub aic_bytes: i64,
    pub opus_bytes: i64,
    pub saved_bytes: i64,
    pub latency_us_sum: i64,
    pub latency_count: i64,
    pub quality_milli_sum: i64,
    pub quality_count: i64,
    pub fallback_count: i64,
}

/// A track that left the AIC stage, with what it did there.
pub struct EndedTrack<'a> {
    pub room: &'a str,
    pub track: String,
    pub participant: String,
    pub mode: &'a str,
    pub counters: Counters,
    pub started_at: i64,
    pub ended_at: i64,
}

const INSERT_METRICS: &str = "INSERT INTO aic_metrics (id, org_id, room, track, participant, mode, frames_aic, \
    frames_opus, aic_bytes, opus_bytes, saved_bytes, latency_us_sum, latency_count, quality_milli_sum, quality_count, \
    fallback_count, started_at, ended_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
    $16, $17, $18)";

/// Keeps an ended track's counters.
pub async fn insert_metrics(db: &Db, org: &str, t: EndedTrack<'_>) -> Result<(), DbError> {
    let c = &t.counters;
    let values = args![
        record_id("aim", t.ended_at),
        org,
        t.room,
        t.track,
        t.participant,
        t.mode,
        c.frames_aic,
        c.frames_opus,
        c.aic_bytes,
        c.opus_bytes,
        c.saved_bytes,
        c.latency_us_sum,
        c.latency_count,
        c.quality_milli_sum,
        c.quality_count,
        c.fallback_count,
        t.started_at,
        t.ended_at.max(t.started_at)
    ];
    let mut tx = db.begin(org).await?;
    tx.execute(INSERT_METRICS, values).await?;
    tx.commit().await
}
