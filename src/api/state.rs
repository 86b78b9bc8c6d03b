//! The state every route shares.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::{history, ratelimit, webhook};
use crate::db::Db;
use crate::pipeline::control::aic::AicTaps;
use crate::pipeline::control::speech::SpeechTaps;
use crate::sfu::driver::SfuHandle;
use crate::signal::livekit::LiveKitState;
use crate::signal::whip::WhipState;
use crate::wall::Clock;

/// Shared state of every route.
#[derive(Clone)]
pub struct AppState {
    pub sfu: SfuHandle,
    pub whip: WhipState,
    pub livekit: LiveKitState,
    /// Set on shutdown: `/readyz` fails so load balancers stop sending new sessions.
    pub draining: Arc<AtomicBool>,
    /// The dev key pair, when the server runs in dev mode: enables `/dev/token` for the demo.
    pub dev_keys: Option<(String, String)>,
    /// See [`crate::config::Config::web_dir`].
    pub web_dir: PathBuf,
    pub db: Db,
    /// See [`crate::config::Config::admin_key`].
    pub admin_key: Option<String>,
    pub clock: Clock,
    /// Seals secrets stored in the database.
    pub secrets: crate::secrets::SecretBox,
    /// Redis, when configured.
    pub redis: Option<crate::db::redis::Redis>,
    pub limiter: Arc<ratelimit::RateLimiter>,
    /// Failed authentications per client address.
    pub auth_failures: Arc<ratelimit::RateLimiter>,
    /// Webhook delivery counters (all zero without webhook URLs).
    pub webhooks: Arc<webhook::WebhookStats>,
    /// Call history counters.
    pub history: Arc<history::HistoryStats>,
    /// Where neural stages run.
    pub devices: Arc<crate::codec::device::Devices>,
    /// The AIC stages on tracks.
    pub aic: Arc<AicTaps>,
    /// The speech stages on tracks, and the node's Whisper workers.
    pub speech: Arc<SpeechTaps>,
}

/// Largest JSON body the control API reads.
pub const MAX_BODY: usize = 64 * 1024;
