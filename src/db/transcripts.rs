//! Stored transcription settings per room (`transcription_configs`) and final captions
//! (`transcripts`).

use super::calls::open_call;
use super::{Db, DbError, Tx};
use crate::args;
use crate::ids::{RoomName, record_id};

/// A room's stored transcription settings.
#[derive(Debug, sqlx::FromRow)]
pub struct SpeechRow {
    pub id: String,
    pub enabled: i64,
    pub language: Option<String>,
    pub translate_to: Option<String>,
}

/// The room's settings, if it has any.
pub async fn room_row(tx: &mut Tx, org: &str, room_id: &str) -> Result<Option<SpeechRow>, DbError> {
    let sql =
        "SELECT id, enabled, language, translate_to FROM transcription_configs WHERE org_id = $1 AND room_id = $2";
    tx.fetch_optional(sql, args![org, room_id]).await
}

/// A final caption, kept with the call it was said in.
pub struct Transcript<'a> {
    pub room: &'a RoomName,
    pub identity: &'a str,
    pub track: &'a str,
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: &'a str,
    pub language: &'a str,
    pub source_language: Option<&'a str>,
    pub confidence: f64,
}

pub async fn insert(db: &Db, org: &str, t: Transcript<'_>, now: i64) -> Result<(), DbError> {
    let mut tx = db.begin(org).await?;
    let call = open_call(&mut tx, org, t.room).await?;
    tx.execute(
        "INSERT INTO transcripts (id, org_id, call_id, room, identity, track, start_ms, end_ms, text, language, \
         source_language, confidence_milli, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
         $12, $13)",
        args![
            record_id("tsc", now),
            org,
            call,
            t.room.local(),
            t.identity,
            t.track,
            t.start_ms,
            t.end_ms.max(t.start_ms),
            t.text,
            t.language,
            t.source_language,
            (t.confidence * 1000.0).round() as i64,
            now
        ],
    )
    .await?;
    tx.commit().await
}
