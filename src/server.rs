//! Start-up: bind sockets, spawn the media router and the HTTP server, shut down cleanly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use str0m::Candidate;
use str0m::bwe::Bitrate;
use str0m::net::TcpType;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::ratelimit::RateLimiter;
use crate::api::webhook::{self, WebhookConfig, Webhooks};
use crate::api::{self, AppState};
use crate::codec::aic::track::AicDevices;
use crate::config::{Config, ConfigError};
use crate::db::redis::{Redis, RedisError};
use crate::db::{Db, DbError};
use crate::pipeline::control::aic::AicTaps;
use crate::pipeline::control::capacity::TapCapacity;
use crate::pipeline::control::speech::{SpeechSetup, SpeechTaps};
use crate::pipeline::speech::{MODEL_ENGLISH, MODEL_MULTILINGUAL, SpeechWorkers};
use crate::secrets::{SecretBox, SecretError};
use crate::sfu::driver::{self, SfuHandle};
use crate::sfu::ice_tcp::IceTcpLimits;
use crate::sfu::{Sfu, SfuConfig};
use crate::signal::livekit::LiveKitState;
use crate::signal::token::TokenVerifier;
use crate::signal::whip::WhipState;
use crate::wall::Clock;

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("binding {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("creating data dir {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("no usable ICE candidate for {0}")]
    Candidate(SocketAddr),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    SecretKey(#[from] SecretError),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("starting the speech workers: {0}")]
    Speech(std::io::Error),
}

/// A running server.
pub struct Server {
    pub http_addr: SocketAddr,
    pub udp_addrs: Vec<SocketAddr>,
    pub tcp_addrs: Vec<SocketAddr>,
    pub sfu: SfuHandle,
    /// The generated key pair when running in dev mode.
    pub dev_keys: Option<(String, String)>,
    /// The platform administrator's key (generated in dev mode).
    pub admin_key: Option<String>,
    pub db: Db,
    state: AppState,
    draining: Arc<AtomicBool>,
    shutdown: Option<oneshot::Sender<()>>,
    http: JoinHandle<()>,
}

impl Server {
    /// Stops accepting, marks not-ready, and waits for the HTTP server to finish.
    pub async fn shutdown(mut self) {
        self.draining.store(true, Ordering::Relaxed);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.http).await;
    }

    /// The HTTP application on the server's state, for driving it without a socket.
    pub fn router(&self) -> axum::Router {
        api::app(self.state.clone())
    }

    /// The state the routes share, for building the application with changes (a test clock).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Waits until the HTTP server stops.
    pub async fn wait(mut self) {
        let _ = (&mut self.http).await;
    }
}

/// Addresses to serve media on when none are configured: loopback, and the address of the
/// default route if the machine has one.
fn default_node_ips() -> Vec<IpAddr> {
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    // Connecting a UDP socket sends nothing; it only asks the kernel for a route.
    let primary = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip());
    if let Ok(ip) = primary
        && !ip.is_loopback()
        && !ip.is_unspecified()
    {
        ips.push(ip);
    }
    ips
}

/// Binds everything and starts serving.
pub async fn start(mut config: Config) -> Result<Server, StartError> {
    // Keys first: without them (and without dev mode) that is the thing to tell.
    let dev_keys = config.resolve_keys()?;
    config.resolve_admin_key()?;
    let secret_key = config.resolve_secret_key()?;
    config.create_data_dir().map_err(|source| StartError::DataDir { path: config.data_dir.clone(), source })?;
    let secrets = SecretBox::from_base64(&secret_key)?;
    let db = Db::open(&config.database_url()).await?;
    let redis = match &config.redis_url {
        Some(url) => Some(Redis::connect(url).await?),
        None => None,
    };
    let limiter = Arc::new(RateLimiter::new(config.rate_limit_per_minute, config.rate_limit_burst, redis.clone()));
    let auth_failures =
        Arc::new(RateLimiter::new(config.auth_failures_per_minute, config.auth_failure_burst, redis.clone()));
    api::twirp::ensure_node_org(&db, Clock::system().now_ms()).await?;
    tracing::info!(backend = db.backend(), "database ready");
    let ips = if config.rtc.node_ips.is_empty() { default_node_ips() } else { config.rtc.node_ips.clone() };

    let (mut udp, mut tcp, mut candidates) = (Vec::new(), Vec::new(), Vec::new());
    let (mut udp_addrs, mut tcp_addrs) = (Vec::new(), Vec::new());
    for &ip in &ips {
        let addr = SocketAddr::new(ip, config.rtc.udp_port);
        let sock =
            UdpSocket::bind(addr).await.map_err(|source| StartError::Bind { what: "media UDP", addr, source })?;
        let local = sock.local_addr().expect("bound socket has an address");
        candidates.push(Candidate::host(local, "udp").map_err(|_| StartError::Candidate(local))?);
        udp_addrs.push(local);
        udp.push(sock);

        let addr = SocketAddr::new(ip, config.rtc.tcp_port);
        let listener =
            TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what: "ICE-TCP", addr, source })?;
        let local = listener.local_addr().expect("bound listener has an address");
        let c = Candidate::builder()
            .tcp()
            .host(local)
            .tcptype(TcpType::Passive)
            .build()
            .map_err(|_| StartError::Candidate(local))?;
        candidates.push(c);
        tcp_addrs.push(local);
        tcp.push(listener);
    }

    let sfu = Sfu::new(SfuConfig {
        candidates,
        disconnect_timeout: config.rtc.disconnect_timeout(),
        connect_timeout: config.rtc.connect_timeout(),
        empty_room_timeout: config.room.empty_timeout(),
        initial_bwe: Bitrate::kbps(config.rtc.initial_bwe_kbps),
    });
    let handle = driver::spawn(sfu, udp, tcp, IceTcpLimits::default());

    let tokens = TokenVerifier::new(config.keys.clone());
    Arc::clone(&tokens.revocations).follow_leaves(handle.clone());
    if let Some(r) = &redis {
        tokens.revocations.use_redis(r.clone());
        api::v1::follow_revocations(r.clone(), handle.clone(), Arc::clone(&tokens.revocations));
    }
    let org_keys = api::v1::livekit_keys::load_all(&db, &secrets, &tokens).await?;
    tracing::info!(org_keys, "org LiveKit keys loaded");
    let stored = api::v1::livekit_keys::StoredKeys { db: db.clone(), secrets: secrets.clone() };
    // An org key revoked through another node stops working here within this.
    tokens.set_source(Arc::new(stored), std::time::Duration::from_secs(60));
    let whip = WhipState::new(
        handle.clone(),
        tokens.clone(),
        config.rtc.ice_servers.clone(),
        config.http.max_signal_body,
        db.clone(),
    );
    let livekit = LiveKitState {
        sfu: handle.clone(),
        tokens,
        ice_servers: config.rtc.ice_servers.clone(),
        registry: Default::default(),
        sessions: Default::default(),
        notices: Default::default(),
        db: db.clone(),
    };
    let node_hooks = match config.keys.iter().next() {
        Some((key, secret)) if !config.webhook_urls.is_empty() => {
            Some(WebhookConfig { urls: config.webhook_urls.clone(), api_key: key.clone(), api_secret: secret.clone() })
        }
        _ => None,
    };
    let hooks = Webhooks {
        node: node_hooks,
        db: db.clone(),
        secrets: secrets.clone(),
        allow_private_networks: config.webhook_allow_private_networks,
        own_addresses: ips.clone(),
    };
    let webhooks = webhook::spawn(hooks, handle.clone(), livekit.clone(), Clock::system());
    let history = api::history::spawn(db.clone(), handle.clone(), Arc::clone(&livekit.registry), Clock::system());
    let devices = Arc::new(crate::codec::device::Devices::detect());
    let aic_model = match AicDevices::load(&config.aic_model, &config.aic_enhancer, &devices) {
        Ok(m) => Some(Arc::new(m)),
        Err(e) => {
            tracing::warn!(error = %e, "AIC model not loaded: AIC is unavailable, tracks stay Opus");
            None
        }
    };
    let aic_capacity = TapCapacity { node: config.aic_max_tracks, per_org: config.aic_max_tracks_per_org };
    let aic = AicTaps::spawn(db.clone(), handle.clone(), aic_model, aic_capacity, Clock::system());
    let sc = &config.speech;
    let workers = SpeechWorkers::spawn(sc.models.clone(), devices.pick(true), sc.workers, sc.queue)
        .map_err(StartError::Speech)?;
    for model in [MODEL_ENGLISH, MODEL_MULTILINGUAL] {
        match workers.check(model) {
            Ok(()) => tracing::info!(model, "speech model present"),
            Err(e) => tracing::warn!(model, error = %e, "speech model missing: rooms that need it cannot transcribe"),
        }
    }
    let capacity = TapCapacity { node: sc.max_tracks, per_org: sc.max_tracks_per_org };
    let setup = SpeechSetup { workers, translator: None, capacity, pipelines: Arc::clone(&aic.pipelines) };
    let speech = SpeechTaps::spawn(db.clone(), handle.clone(), setup, Clock::system());
    let draining = Arc::new(AtomicBool::new(false));
    let state = AppState {
        sfu: handle.clone(),
        whip,
        livekit,
        draining: Arc::clone(&draining),
        dev_keys: dev_keys.clone(),
        web_dir: config.web_dir.clone(),
        db: db.clone(),
        admin_key: config.admin_key.clone(),
        clock: Clock::system(),
        secrets,
        redis,
        limiter,
        auth_failures,
        webhooks,
        history,
        devices,
        aic,
        speech,
    };
    let addr = SocketAddr::new(config.http_bind(), config.http.port);
    let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what: "HTTP", addr, source })?;
    let http_addr = listener.local_addr().expect("bound listener has an address");
    let (tx, rx) = oneshot::channel::<()>();
    let app = api::app(state.clone());
    let http = tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = rx.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "http server failed");
        }
    });
    tracing::info!(%http_addr, ?udp_addrs, ?tcp_addrs, "auralink serving");
    Ok(Server {
        http_addr,
        udp_addrs,
        tcp_addrs,
        sfu: handle,
        dev_keys,
        admin_key: config.admin_key,
        db,
        state,
        draining,
        shutdown: Some(tx),
        http,
    })
}
