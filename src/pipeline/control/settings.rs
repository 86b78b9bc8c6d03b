//! A room's stage settings as stored: AIC (the room's override, else the org's default, else
//! the built-in default) and transcription (the room's, else off).

use crate::codec::modes::{Mode, ModelType};
use crate::db::aic::{self, AicRow};
use crate::db::transcripts::{self, SpeechRow};
use crate::db::{Db, DbError, Tx, rooms};
use crate::pipeline::aic::AicConfig;
use crate::pipeline::speech::SpeechConfig;

/// Where a room's AIC settings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Room,
    Org,
    Default,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Room => "room",
            Source::Org => "org",
            Source::Default => "default",
        }
    }
}

impl AicConfig {
    /// Names the API never stores (it validates them) read as the defaults'.
    pub fn from_row(row: &AicRow) -> AicConfig {
        let default = AicConfig::default();
        AicConfig {
            mode: Mode::parse(&row.mode).unwrap_or(default.mode),
            target_ratio: row.target_ratio_pct as f64 / 100.0,
            max_latency_ms: row.max_latency_ms as u32,
            model_type: ModelType::parse(&row.model_type).unwrap_or(default.model_type),
            use_gpu: row.use_gpu != 0,
            min_quality: row.min_quality_centi as f64 / 100.0,
            enabled: row.enabled != 0,
            loopback: row.loopback != 0,
        }
    }
}

impl SpeechConfig {
    pub fn from_row(row: &SpeechRow) -> SpeechConfig {
        SpeechConfig {
            enabled: row.enabled != 0,
            language: row.language.clone(),
            translate_to: row.translate_to.clone(),
        }
    }
}

/// The AIC settings the room with this id runs with (none: a room not on record, which runs
/// with the org's), read in the caller's transaction.
pub async fn aic_effective(tx: &mut Tx, org: &str, room_id: Option<&str>) -> Result<(AicConfig, Source), DbError> {
    if let Some(id) = room_id
        && let Some(row) = aic::room_row(tx, org, id).await?
    {
        return Ok((AicConfig::from_row(&row), Source::Room));
    }
    Ok(match aic::org_row(tx, org).await? {
        Some(row) => (AicConfig::from_row(&row), Source::Org),
        None => (AicConfig::default(), Source::Default),
    })
}

/// The AIC settings of `org`'s room named `name`.
pub async fn aic(db: &Db, org: &str, name: &str) -> Result<AicConfig, DbError> {
    let mut tx = db.begin_read(org).await?;
    let room = rooms::id_of(&mut tx, org, name).await?;
    let (config, _) = aic_effective(&mut tx, org, room.as_deref()).await?;
    tx.commit().await?;
    Ok(config)
}

/// The transcription settings of `org`'s room named `name` (off for a room not on record or
/// never set).
pub async fn speech(db: &Db, org: &str, name: &str) -> Result<SpeechConfig, DbError> {
    let mut tx = db.begin_read(org).await?;
    let config = match rooms::id_of(&mut tx, org, name).await? {
        Some(id) => {
            transcripts::room_row(&mut tx, org, &id).await?.map(|r| SpeechConfig::from_row(&r)).unwrap_or_default()
        }
        None => SpeechConfig::default(),
    };
    tx.commit().await?;
    Ok(config)
}
