//! Speech taps' settings per room, and the transcripts they store: listed and exported per
//! call (JSON, WebVTT, SRT), erased per speaker.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::not_found;
use crate::api::Body;
use crate::api::audit::{self, Change};
use crate::api::auth::{Caller, Perm};
use crate::api::state::AppState;
use crate::args;
use crate::db::{Db, transcripts};
use crate::error::ApiError;
use crate::ids::{RoomName, record_id};
use crate::pipeline::speech::{LANGUAGES, SpeechConfig};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/rooms/{name}/transcription", get(read).put(update))
        .route("/v1/calls/{id}/transcripts", get(export))
        .route("/v1/transcripts", delete(erase))
}

fn room_on_node(org: &str, name: &str) -> Option<RoomName> {
    RoomName::new(name).ok().map(|n| RoomName::in_org(org, &n))
}

fn reply(s: &AppState, org: &str, name: &str, c: &SpeechConfig) -> Json<Value> {
    let active = room_on_node(org, name).map_or(0, |r| s.speech.active_in(&r));
    let unavailable = s.speech.workers.check(c.model()).err().map(|e| e.to_string());
    Json(json!({
        "config": { "enabled": c.enabled, "language": c.language.as_deref().unwrap_or("auto"), "translate_to": c.translate_to },
        "model": c.model(),
        "available": unavailable.is_none(),
        "unavailable_reason": unavailable,
        "active_tracks": active,
    }))
}

async fn read(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::RoomsRead)?;
    Ok(reply(&s, org, &name, &current(&s.db, org, &name).await?))
}

/// The settings of the org's room `name`; 404 for a room it does not have.
async fn current(db: &Db, org: &str, name: &str) -> Result<SpeechConfig, ApiError> {
    let mut tx = db.begin(org).await?;
    let room = super::rooms::load(&mut tx, org, name).await?.id;
    let config =
        transcripts::room_row(&mut tx, org, &room).await?.map(|r| SpeechConfig::from_row(&r)).unwrap_or_default();
    tx.commit().await?;
    Ok(config)
}

/// A change: fields left out keep their value. `language: "auto"` detects it.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    enabled: Option<bool>,
    language: Option<String>,
    /// `null` turns translation off.
    #[serde(default, deserialize_with = "some")]
    translate_to: Option<Option<String>>,
}

/// Tells a field set to `null` from one left out.
fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn language(field: &str, code: &str) -> Result<String, ApiError> {
    let code = code.to_ascii_lowercase();
    if LANGUAGES.contains(&code.as_str()) {
        Ok(code)
    } else {
        Err(ApiError::unprocessable("invalid_language", format!("{field} {code:?} is not a language Whisper knows")))
    }
}

impl Update {
    fn apply(self, s: &AppState, base: SpeechConfig) -> Result<SpeechConfig, ApiError> {
        let mut c = base;
        if let Some(l) = self.language {
            c.language = if l.eq_ignore_ascii_case("auto") { None } else { Some(language("language", &l)?) };
        }
        if let Some(t) = self.translate_to {
            c.translate_to = t.map(|t| language("translate_to", &t)).transpose()?;
        }
        // Whisper translates into English; other targets need a text translator.
        if c.translate_to.as_deref().is_some_and(|t| t != "en") && s.speech.translator.is_none() {
            let msg = "only English is a translation target until a text translator is configured";
            return Err(ApiError::unprocessable("translation_unavailable", msg));
        }
        c.enabled = self.enabled.unwrap_or(c.enabled);
        Ok(c)
    }
}

async fn update(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(req): Body<Update>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::RoomsWrite)?;
    let now = s.clock.now_ms();
    // Model and capacity are checked before the write transaction, which must not wait on the
    // router; the settings they are checked against are read again inside it.
    let after = req.clone().apply(&s, current(&s.db, org, &name).await?)?;
    let room = room_on_node(org, &name);
    if after.enabled {
        if let Err(e) = s.speech.workers.check(after.model()) {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stt_unavailable", e.to_string()));
        }
        // The room's untranscribed tracks must fit under the node's limit.
        if let Some(room) = &room {
            let waiting = s.speech.audio_tracks(room).await.len().saturating_sub(s.speech.active_in(room));
            let (node, org) = s.speech.active(Some(org));
            let cap = s.speech.capacity;
            if node + waiting > cap.node || org + waiting > cap.per_org {
                let msg =
                    format!("this node transcribes at most {} tracks, {} of one org's rooms", cap.node, cap.per_org);
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "capacity", msg));
            }
        }
    }
    let mut tx = s.db.begin(org).await?;
    let room_id = super::rooms::load(&mut tx, org, &name).await?.id;
    let existing = transcripts::room_row(&mut tx, org, &room_id).await?;
    let before = existing.as_ref().map(SpeechConfig::from_row);
    let after = req.apply(&s, before.clone().unwrap_or_default())?;
    let values = args![i64::from(after.enabled), after.language.as_deref(), after.translate_to.as_deref(), now];
    let id = match &existing {
        Some(r) => {
            let mut a = values;
            a.extend(args![org, &r.id]);
            let sql = "UPDATE transcription_configs SET enabled = $1, language = $2, translate_to = $3, updated_at = $4 \
                       WHERE org_id = $5 AND id = $6";
            tx.execute(sql, a).await?;
            r.id.clone()
        }
        None => {
            let id = record_id("tcf", now);
            let mut a = values;
            a.extend(args![&id, org, &room_id]);
            let sql = "INSERT INTO transcription_configs (enabled, language, translate_to, created_at, updated_at, id, \
                       org_id, room_id) VALUES ($1, $2, $3, $4, $4, $5, $6, $7)";
            tx.execute(sql, a).await?;
            id
        }
    };
    let change = Change {
        action: "transcription.update",
        target_type: "transcription_config",
        target_id: Some(&id),
        before: before.map(|b| json!({ "room": name, "config": b })),
        after: Some(json!({ "room": name, "config": after })),
    };
    audit::commit(tx, &caller, org, now, change).await?;
    if let Some(room) = &room {
        s.speech.set_room(room, after.clone()).await;
    }
    Ok(reply(&s, org, &name, &after))
}

#[derive(Serialize, sqlx::FromRow)]
struct Transcript {
    id: String,
    identity: String,
    track: String,
    start_ms: i64,
    end_ms: i64,
    text: String,
    language: String,
    source_language: Option<String>,
    confidence_milli: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    /// `json` (default), `vtt` or `srt`.
    format: Option<String>,
}

#[derive(sqlx::FromRow)]
struct CallStart {
    started_at: i64,
}

/// A call's transcripts in speaking order; times relative to the call's start.
async fn export(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let org = caller.require(Perm::CallsRead)?;
    let format = q.format.as_deref().unwrap_or("json");
    if !["json", "vtt", "srt"].contains(&format) {
        return Err(ApiError::unprocessable("invalid_field", "format must be json, vtt or srt"));
    }
    let mut tx = s.db.begin(org).await?;
    let call: CallStart = tx
        .fetch_optional("SELECT started_at FROM calls WHERE org_id = $1 AND id = $2", args![org, &id])
        .await?
        .ok_or_else(|| not_found("call"))?;
    let sql = "SELECT id, identity, track, start_ms, end_ms, text, language, source_language, confidence_milli \
               FROM transcripts WHERE org_id = $1 AND call_id = $2 ORDER BY start_ms, id";
    let rows: Vec<Transcript> = tx.fetch_all(sql, args![org, &id]).await?;
    tx.commit().await?;
    let rel = |ms: i64| (ms - call.started_at).max(0);
    Ok(match format {
        "json" => {
            let items: Vec<Value> = rows
                .iter()
                .map(|t| {
                    json!({
                        "id": t.id, "participant": t.identity, "track": t.track,
                        "start_ms": rel(t.start_ms), "end_ms": rel(t.end_ms), "text": t.text,
                        "language": t.language, "source_language": t.source_language,
                        "confidence": t.confidence_milli as f64 / 1000.0,
                    })
                })
                .collect();
            Json(json!({ "call": id, "transcripts": items })).into_response()
        }
        "vtt" => {
            let mut out = String::from("WEBVTT\n");
            for (i, t) in rows.iter().enumerate() {
                let cue = format!("{} --> {}", timestamp(rel(t.start_ms), '.'), timestamp(rel(t.end_ms), '.'));
                out += &format!("\n{}\n{cue}\n<v {}>{}\n", i + 1, cue_text(&t.identity), cue_text(&t.text));
            }
            ([(header::CONTENT_TYPE, "text/vtt; charset=utf-8")], out).into_response()
        }
        _ => {
            let mut out = String::new();
            for (i, t) in rows.iter().enumerate() {
                let cue = format!("{} --> {}", timestamp(rel(t.start_ms), ','), timestamp(rel(t.end_ms), ','));
                let line = format!("{}: {}", t.identity, t.text).replace('\n', " ");
                out += &format!("{}\n{cue}\n{line}\n\n", i + 1);
            }
            ([(header::CONTENT_TYPE, "application/x-subrip; charset=utf-8")], out).into_response()
        }
    })
}

/// `hh:mm:ss.mmm` (WebVTT) or `hh:mm:ss,mmm` (SRT).
fn timestamp(ms: i64, sep: char) -> String {
    format!("{:02}:{:02}:{:02}{sep}{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// Text that cannot end a cue or open a tag in WebVTT.
fn cue_text(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace("-->", "--&gt;").replace('\n', " ")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseQuery {
    identity: String,
}

/// Erases everything a speaker said, in every call of the org (a data subject's request).
async fn erase(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<EraseQuery>,
) -> Result<Json<Value>, ApiError> {
    let org = caller.require(Perm::UsersWrite)?;
    super::check_len("identity", &q.identity, 256)?;
    let now = s.clock.now_ms();
    let mut tx = s.db.begin(org).await?;
    let deleted =
        tx.execute("DELETE FROM transcripts WHERE org_id = $1 AND identity = $2", args![org, &q.identity]).await?;
    let change = Change {
        action: "transcripts.erase",
        target_type: "participant",
        target_id: Some(&q.identity),
        before: None,
        after: Some(json!({ "deleted": deleted })),
    };
    audit::commit(tx, &caller, org, now, change).await?;
    Ok(Json(json!({ "deleted": deleted })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cue_times_and_text() {
        assert_eq!(timestamp(3_723_004, '.'), "01:02:03.004");
        assert_eq!(timestamp(59_999, ','), "00:00:59,999");
        assert_eq!(cue_text("a --> <b> & c\nd"), "a --&gt; &lt;b&gt; &amp; c d");
    }
}
