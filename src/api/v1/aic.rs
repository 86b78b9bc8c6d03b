//! AIC settings (the org's default and per-room overrides) and the live per-track metrics.
//! A room without an override runs with the org's default, an org without one with the
//! built-in default (ADAPTIVE).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{not_found, open};
use crate::api::Body;
use crate::api::audit::{self, Change};
use crate::api::auth::{Caller, Perm};
use crate::api::state::AppState;
use crate::args;
use crate::codec::modes::{Mode, ModelType};
use crate::db::Tx;
use crate::db::aic::{self, AicRow, Counters};
use crate::error::ApiError;
use crate::ids::{RoomName, TrackId, record_id};
use crate::pipeline::aic::{AicConfig, AicStats, LATENCY_BUCKETS};
use crate::pipeline::control::settings;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/aic/config", get(read_org).put(update_org))
        .route("/v1/rooms/{name}/aic", get(read_room).put(update_room).delete(remove_room))
        .route("/v1/rooms/{name}/aic/metrics", get(read_metrics))
}

/// What a settings change reaches.
enum Scope<'a> {
    /// The org's default: every room of the org without an override.
    Org,
    /// The room with this name.
    Room(&'a str),
}

/// Audits a settings change, commits it, and hands the settings each room it reaches runs
/// with now to that room's running stages.
async fn apply(
    s: &AppState,
    tx: Tx,
    caller: &Caller,
    org: &str,
    now: i64,
    change: Change<'_>,
    scope: Scope<'_>,
) -> Result<(), ApiError> {
    audit::commit(tx, caller, org, now, change).await?;
    let rooms = match scope {
        Scope::Org => s.aic.open_rooms(org).await,
        Scope::Room(name) => RoomName::new(name).map(|n| vec![RoomName::in_org(org, &n)]).unwrap_or_default(),
    };
    for room in rooms {
        match settings::aic(&s.db, org, room.local()).await {
            Ok(config) => s.aic.set_room(&room, config).await,
            // Stored: the room's new tracks read it when they come.
            Err(e) => tracing::warn!(%room, error = %e, "AIC settings not handed to the running stages"),
        }
    }
    Ok(())
}

fn reply(config: &AicConfig, source: &str) -> Json<Value> {
    Json(json!({ "config": config, "source": source }))
}

/// A change: fields left out keep the value they have now.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    mode: Option<String>,
    target_ratio: Option<f64>,
    max_latency_ms: Option<i64>,
    model_type: Option<String>,
    use_gpu: Option<bool>,
    min_quality: Option<f64>,
    enabled: Option<bool>,
    loopback: Option<bool>,
}

impl Update {
    /// `base` with this change, validated.
    fn apply(self, base: AicConfig) -> Result<AicConfig, ApiError> {
        let invalid = |msg: &str| ApiError::unprocessable("invalid_field", msg.to_string());
        let mut c = base;
        if let Some(m) = self.mode {
            let mode = Mode::parse(&m).ok_or_else(|| invalid("mode must be CONSERVATIVE, ADAPTIVE or AGGRESSIVE"))?;
            // A new mode brings its own size target unless one is given with it.
            if mode != c.mode && self.target_ratio.is_none() {
                c.target_ratio = mode.target_ratio();
            }
            c.mode = mode;
        }
        if let Some(r) = self.target_ratio {
            if !(0.01..=1.0).contains(&r) {
                return Err(invalid("target_ratio must be between 0.01 and 1"));
            }
            c.target_ratio = r;
        }
        if let Some(ms) = self.max_latency_ms {
            if !(1..=1000).contains(&ms) {
                return Err(invalid("max_latency_ms must be between 1 and 1000"));
            }
            c.max_latency_ms = ms as u32;
        }
        if let Some(t) = self.model_type {
            c.model_type = ModelType::parse(&t).ok_or_else(|| invalid("model_type must be aic-v1 or aic-v2"))?;
        }
        if let Some(q) = self.min_quality {
            if !(1.0..=5.0).contains(&q) {
                return Err(invalid("min_quality must be between 1 and 5"));
            }
            c.min_quality = q;
        }
        c.use_gpu = self.use_gpu.unwrap_or(c.use_gpu);
        c.enabled = self.enabled.unwrap_or(c.enabled);
        c.loopback = self.loopback.unwrap_or(c.loopback);
        Ok(c)
    }
}

/// Writes `c` as the row `existing` (or a new one) for the org (`room_id` `None`) or a room.
async fn store(
    tx: &mut Tx,
    org: &str,
    room_id: Option<&str>,
    existing: Option<&AicRow>,
    c: &AicConfig,
    now: i64,
) -> Result<String, ApiError> {
    let values = args![
        c.mode.as_str(),
        (c.target_ratio * 100.0).round() as i64,
        i64::from(c.max_latency_ms),
        c.model_type.as_str(),
        i64::from(c.use_gpu),
        (c.min_quality * 100.0).round() as i64,
        i64::from(c.enabled),
        i64::from(c.loopback),
        now
    ];
    let id = match existing {
        Some(row) => {
            let sql = "UPDATE aic_configs SET mode = $1, target_ratio_pct = $2, max_latency_ms = $3, model_type = $4, \
                       use_gpu = $5, min_quality_centi = $6, enabled = $7, loopback = $8, updated_at = $9 \
                       WHERE org_id = $10 AND id = $11";
            let mut a = values;
            a.extend(args![org, &row.id]);
            tx.execute(sql, a).await?;
            row.id.clone()
        }
        None => {
            let id = record_id("aic", now);
            let sql = "INSERT INTO aic_configs (mode, target_ratio_pct, max_latency_ms, model_type, use_gpu, \
                       min_quality_centi, enabled, loopback, created_at, updated_at, id, org_id, room_id) \
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11, $12)";
            let mut a = values;
            a.extend(args![&id, org, room_id]);
            tx.execute(sql, a).await?;
            id
        }
    };
    Ok(id)
}

async fn read_org(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::RoomsRead)?;
    let mut tx = s.db.begin(org).await?;
    let (config, source) = settings::aic_effective(&mut tx, org, None).await?;
    tx.commit().await?;
    Ok(reply(&config, source.as_str()))
}

async fn update_org(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<Update>,
) -> Result<Json<Value>, ApiError> {
    let (org, now, mut tx) = open(&s, &caller, Perm::RoomsWrite).await?;
    let existing = aic::org_row(&mut tx, org).await?;
    let before = existing.as_ref().map(AicConfig::from_row);
    let after = req.apply(before.clone().unwrap_or_default())?;
    let id = store(&mut tx, org, None, existing.as_ref(), &after, now).await?;
    let change = Change {
        action: "aic.update",
        target_type: "aic_config",
        target_id: Some(&id),
        before: before.map(|b| json!(b)),
        after: Some(json!(after)),
    };
    apply(&s, tx, &caller, org, now, change, Scope::Org).await?;
    Ok(reply(&after, "org"))
}

async fn read_room(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::RoomsRead)?;
    let mut tx = s.db.begin(org).await?;
    let room = super::rooms::load(&mut tx, org, &name).await?.id;
    let (config, source) = settings::aic_effective(&mut tx, org, Some(&room)).await?;
    tx.commit().await?;
    let mut body = reply(&config, source.as_str());
    body["active_tracks"] = json!(active_tracks(&s, org, &name).len());
    Ok(body)
}

fn active_tracks(s: &AppState, org: &str, name: &str) -> Vec<(TrackId, Arc<AicStats>)> {
    RoomName::new(name).map_or_else(|_| Vec::new(), |n| s.aic.active_tracks(&RoomName::in_org(org, &n)))
}

/// The room's tracks running the AIC stage on this node, with their counters so far.
async fn read_metrics(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::RoomsRead)?;
    let mut tx = s.db.begin(org).await?;
    super::rooms::load(&mut tx, org, &name).await?;
    let sql = "SELECT track, participant, mode, frames_aic, frames_opus, aic_bytes, opus_bytes, saved_bytes, \
               latency_us_sum, latency_count, quality_milli_sum, quality_count, fallback_count, started_at, ended_at \
               FROM aic_metrics WHERE org_id = $1 AND room = $2 ORDER BY ended_at DESC, id DESC LIMIT 50";
    let ended: Vec<Ended> = tx.fetch_all(sql, args![org, &name]).await?;
    tx.commit().await?;
    let ended: Vec<Value> = ended
        .into_iter()
        .map(|e| {
            let mut v = e.counters.json();
            v["track"] = json!(e.track);
            v["participant"] = json!(e.participant);
            v["mode"] = json!(e.mode.to_uppercase());
            v["started_at"] = json!(e.started_at);
            v["ended_at"] = json!(e.ended_at);
            v
        })
        .collect();
    let tracks: Vec<Value> = active_tracks(&s, org, &name)
        .into_iter()
        .map(|(track, st)| {
            let mut v = Counters::of(&st).json();
            v["track"] = json!(track.to_string());
            v["fallen_back"] = json!(st.fallen_back.load(Relaxed) > 0);
            // The per-frame latency histogram, as /metrics has the node's: frames at or under
            // each bound (cumulative), for running tracks (`aic_metrics` keeps the mean).
            let buckets = st.latency_buckets.iter().zip(LATENCY_BUCKETS);
            v["latency_histogram"] =
                buckets.map(|(n, le)| json!({ "le_ms": le * 1000.0, "frames": n.load(Relaxed) })).collect();
            v
        })
        .collect();
    Ok(Json(json!({ "tracks": tracks, "ended": ended })))
}

impl Counters {
    /// The API's view: counts, and ratios and means (null until there is something to divide by).
    fn json(&self) -> Value {
        let per = |num: i64, den: i64| (den > 0).then(|| num as f64 / den as f64);
        json!({
            "frames_aic": self.frames_aic,
            "frames_opus": self.frames_opus,
            "aic_bytes": self.aic_bytes,
            "opus_bytes": self.opus_bytes,
            "bandwidth_saved_bytes": self.saved_bytes,
            "compression_ratio": per(self.aic_bytes, self.opus_bytes),
            // 50 frames a second.
            "bitrate_bps": per(self.aic_bytes.saturating_mul(8 * 50), self.frames_aic),
            "latency_ms_mean": per(self.latency_us_sum, self.latency_count.saturating_mul(1000)),
            "quality_estimate": per(self.quality_milli_sum, self.quality_count.saturating_mul(1000)),
            "fallback_count": self.fallback_count,
        })
    }
}

/// A track's counters kept when it left the stage.
#[derive(sqlx::FromRow)]
struct Ended {
    track: String,
    participant: String,
    mode: String,
    #[sqlx(flatten)]
    counters: Counters,
    started_at: i64,
    ended_at: i64,
}

/// Sets the room's override; a room without one starts from what it runs with now.
async fn update_room(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(req): Body<Update>,
) -> Result<Json<Value>, ApiError> {
    let (org, now, mut tx) = open(&s, &caller, Perm::RoomsWrite).await?;
    let room = super::rooms::load(&mut tx, org, &name).await?.id;
    let existing = aic::room_row(&mut tx, org, &room).await?;
    let (current, _) = settings::aic_effective(&mut tx, org, Some(&room)).await?;
    let after = req.apply(current.clone())?;
    let id = store(&mut tx, org, Some(&room), existing.as_ref(), &after, now).await?;
    let change = Change {
        action: "aic.update",
        target_type: "aic_config",
        target_id: Some(&id),
        before: existing.map(|r| json!({ "room": name, "config": AicConfig::from_row(&r) })),
        after: Some(json!({ "room": name, "config": after })),
    };
    apply(&s, tx, &caller, org, now, change, Scope::Room(&name)).await?;
    Ok(reply(&after, "room"))
}

/// Drops the room's override: it runs with the org's settings again.
async fn remove_room(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (org, now, mut tx) = open(&s, &caller, Perm::RoomsWrite).await?;
    let room = super::rooms::load(&mut tx, org, &name).await?.id;
    let existing = aic::room_row(&mut tx, org, &room).await?.ok_or_else(|| not_found("AIC override"))?;
    tx.execute("DELETE FROM aic_configs WHERE org_id = $1 AND id = $2", args![org, &existing.id]).await?;
    let change = Change {
        action: "aic.delete",
        target_type: "aic_config",
        target_id: Some(&existing.id),
        before: Some(json!({ "room": name, "config": AicConfig::from_row(&existing) })),
        after: None,
    };
    apply(&s, tx, &caller, org, now, change, Scope::Room(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}
