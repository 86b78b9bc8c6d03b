//! LiveKit-format webhooks, so LiveKit's `WebhookReceiver` accepts them: a `WebhookEvent`
//! as protobuf JSON, `Content-Type: application/webhook+json`, and an `Authorization`
//! header holding a bare HS256 JWT (no `Bearer`) whose `sha256` claim is the base64 SHA-256
//! of the body. Router events are queued (bounded: a backlog beyond it is dropped and
//! counted) and each endpoint gets them in order, retried with exponential backoff. The
//! node's rooms go to the configured endpoints, signed with the node's key; an org's rooms
//! to the org's endpoints, signed with the org's signing key, and never into private
//! networks unless the operator allows it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use livekit_protocol as proto;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::args;
use crate::db::{Db, DbError};
use crate::ids::record_id;
use crate::secrets::SecretBox;
use crate::sfu::core::{ParticipantInfo, SfuEvent};
use crate::sfu::driver::SfuHandle;
use crate::sfu::mirror::Follower;
use crate::signal::livekit::LiveKitState;
use crate::signal::token::{self, Claims, NODE_ORG};
use crate::wall::Clock;

/// Events waiting for delivery; beyond this the newest are dropped.
const QUEUE: usize = 1024;
/// Attempts per event and endpoint, waiting 250 ms, 500 ms, 1 s, … between them.
const ATTEMPTS: u32 = 6;
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where to send and how to sign.
#[derive(Clone)]
pub struct WebhookConfig {
    pub urls: Vec<String>,
    pub api_key: String,
    pub api_secret: String,
}

/// Everything delivery needs.
pub struct Webhooks {
    /// The node's own endpoints and key, if configured.
    pub node: Option<WebhookConfig>,
    /// Where orgs' endpoints and keys are.
    pub db: Db,
    pub secrets: SecretBox,
    pub allow_private_networks: bool,
    /// The node's own addresses: an org's webhook must not make the server call itself, at
    /// a public address as little as at loopback.
    pub own_addresses: Vec<std::net::IpAddr>,
}

/// Delivery counters for `/metrics`.
#[derive(Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// Turns router events into webhooks until the router stops. Each org (the node's rooms
/// are one more) has its own queue and delivery task, so an org whose endpoints hang delays
/// only its own events. Falling behind the router's events, it catches up from the router's
/// state (`sfu::mirror`): rooms, participants and tracks that came or went meanwhile are told
/// late rather than never.
pub fn spawn(hooks: Webhooks, sfu: SfuHandle, livekit: LiveKitState, clock: Clock) -> Arc<WebhookStats> {
    let stats = Arc::new(WebhookStats::default());
    let hooks = Arc::new(hooks);
    let mut follower = Follower::new(sfu, "webhooks");
    tokio::spawn({
        let stats = Arc::clone(&stats);
        async move {
            let mut queues: HashMap<String, mpsc::Sender<proto::WebhookEvent>> = HashMap::new();
            while let Some(batch) = follower.next().await {
                for e in batch {
                    let Some((org, hook)) = to_webhook(&e, &livekit, clock.now_ms()) else { continue };
                    let queue = queues.entry(org.clone()).or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(QUEUE);
                        tokio::spawn(deliver_org(org, rx, Arc::clone(&hooks), Arc::clone(&stats), clock.clone()));
                        tx
                    });
                    if queue.try_send(hook).is_err() {
                        stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    stats
}

/// Delivers one org's events, in order, to its endpoints.
async fn deliver_org(
    org: String,
    mut rx: mpsc::Receiver<proto::WebhookEvent>,
    hooks: Arc<Webhooks>,
    stats: Arc<WebhookStats>,
    clock: Clock,
) {
    while let Some(hook) = rx.recv().await {
        let config = if org == NODE_ORG {
            hooks.node.clone()
        } else {
            org_config(&hooks.db, &hooks.secrets, &org).await.unwrap_or_else(|e| {
                tracing::warn!(org, error = %e, "org webhook settings unavailable");
                stats.failed.fetch_add(1, Ordering::Relaxed);
                None
            })
        };
        let Some(config) = config else { continue };
        let body = serde_json::to_vec(&hook).expect("protocol messages serialize");
        for url in &config.urls {
            // The operator's own endpoints may be anywhere; an org's only on the internet,
            // at the address checked here (a second lookup could answer differently).
            let pinned = if org == NODE_ORG || hooks.allow_private_networks {
                None
            } else {
                public_address(url, &hooks.own_addresses).await
            };
            if org != NODE_ORG && !hooks.allow_private_networks && pinned.is_none() {
                tracing::warn!(org, host = host_of(url), "webhook URL leads to a private network; not sent");
                stats.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let http = client(pinned.as_ref().map(|(host, addr)| (host.as_str(), *addr)));
            if deliver(&http, &config, url, &body, &clock).await {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(org, host = host_of(url), event = hook.event, "webhook not delivered");
            }
        }
    }
}

/// An HTTP client for one delivery: no redirects (they could lead anywhere), no proxy from
/// the environment, and the host bound to `pinned` when given.
fn client(pinned: Option<(&str, std::net::SocketAddr)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(TIMEOUT).redirect(reqwest::redirect::Policy::none()).no_proxy();
    if let Some((host, addr)) = pinned {
        b = b.resolve(host, addr);
    }
    b.build().expect("http client builds")
}

/// The host of a URL, for logs (the rest may hold credentials).
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    host.rsplit_once('@').map_or(host, |(_, h)| h)
}

/// An org's endpoints and signing key; `None` when it has no endpoints (or no live key).
async fn org_config(db: &Db, secrets: &SecretBox, org: &str) -> Result<Option<WebhookConfig>, DbError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        webhook_urls: String,
    }
    let mut tx = db.begin(org).await?;
    let row: Option<Row> =
        tx.fetch_optional("SELECT webhook_urls FROM orgs WHERE id = $1 AND deleted_at IS NULL", args![org]).await?;
    let urls: Vec<String> = row.and_then(|r| serde_json::from_str(&r.webhook_urls).ok()).unwrap_or_default();
    if urls.is_empty() {
        tx.commit().await?;
        return Ok(None);
    }
    let key = super::v1::livekit_keys::signing_key(&mut tx, secrets, org).await?;
    tx.commit().await?;
    Ok(key.map(|(api_key, api_secret)| WebhookConfig { urls, api_key, api_secret }))
}

/// The host and address to send to if every address `url`'s host resolves to is on the public
/// internet (not loopback, private, link-local such as cloud metadata, or otherwise special)
/// and none is one of the node's `own`; `None` otherwise, or when the name does not resolve
/// within two seconds.
async fn public_address(url: &str, own: &[std::net::IpAddr]) -> Option<(String, std::net::SocketAddr)> {
    let u = reqwest::Url::parse(url).ok()?;
    let (host, port) = (u.host_str()?, u.port_or_known_default()?);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lookup = tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host((host, port))).await;
    let addrs: Vec<_> = lookup.ok()?.ok()?.collect();
    if addrs.is_empty() || !addrs.iter().all(|a| is_public(a.ip()) && !own.contains(&a.ip().to_canonical())) {
        return None;
    }
    addrs.first().map(|a| (host.to_string(), *a))
}

fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(a) => {
            let [first, second, ..] = a.octets();
            let shared = first == 100 && (second & 0xc0) == 64; // 100.64.0.0/10, carrier NAT
            let benchmarking = first == 198 && (second & 0xfe) == 18; // 198.18.0.0/15
            let [.., third, _] = a.octets();
            // 192.0.0.0/24 (protocol assignments), 192.88.99.0/24 (6to4 relays, which lead
            // into IPv6 that may be private).
            let special = first == 192 && ((second == 0 && third == 0) || (second == 88 && third == 99));
            !(a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_documentation()
                || a.is_multicast()
                || shared
                || benchmarking
                || special
                || first == 0
                || first >= 240)
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = a.segments();
            let unique_local = (s[0] & 0xfe00) == 0xfc00;
            let link_local = (s[0] & 0xffc0) == 0xfe80;
            // Addresses that carry an IPv4 address somewhere (IPv4-compatible, NAT64, 6to4)
            // could reach a private one: not public.
            // Teredo (2001::/32) too.
            let embeds_v4 = s[..6] == [0; 6]
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || s[0] == 0x2002
                || (s[0] == 0x2001 && s[1] == 0);
            let documentation = s[0] == 0x2001 && s[1] == 0x0db8;
            let discard = s[..4] == [0x100, 0, 0, 0];
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || unique_local
                || link_local
                || embeds_v4
                || documentation
                || discard)
        }
    }
}

/// The `Authorization` value for `body`.
pub fn sign(config: &WebhookConfig, body: &[u8], now_secs: u64) -> String {
    let claims = Claims {
        iss: config.api_key.clone(),
        nbf: Some(now_secs),
        exp: now_secs + 600,
        sha256: Some(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))),
        ..Default::default()
    };
    token::mint(&claims, &config.api_secret)
}

async fn deliver(http: &reqwest::Client, config: &WebhookConfig, url: &str, body: &[u8], clock: &Clock) -> bool {
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(250 << (attempt - 1))).await;
        }
        let auth = sign(config, body, (clock.now_ms() / 1000) as u64);
        let sent = http
            .post(url)
            .header("content-type", "application/webhook+json")
            .header("authorization", auth)
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return true,
            // The receiver refused this body; sending it again will not change its mind.
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => return false,
            Ok(r) => tracing::debug!(url, status = %r.status(), attempt, "webhook retry"),
            Err(e) => tracing::debug!(url, error = %e, attempt, "webhook retry"),
        }
    }
    false
}

fn room(name: &str) -> proto::Room {
    proto::Room { sid: format!("RM_{name}"), name: name.to_string(), ..Default::default() }
}

/// The webhook for a router event, if LiveKit sends one for it, with the org whose room it is.
fn to_webhook(e: &SfuEvent, livekit: &LiveKitState, now_ms: i64) -> Option<(String, proto::WebhookEvent)> {
    let described = |participant, identity: &crate::ids::Identity| {
        let p = ParticipantInfo {
            id: participant,
            identity: identity.clone(),
            tracks: Vec::new(),
            server: false,
            hidden: false,
        };
        livekit.describe(&p)
    };
    let (event, r, participant, track) = match e {
        SfuEvent::RoomStarted { room: r } => ("room_started", r, None, None),
        SfuEvent::RoomClosed { room: r } => ("room_finished", r, None, None),
        SfuEvent::ParticipantJoined { room: r, participant, identity } => {
            ("participant_joined", r, Some(described(*participant, identity)), None)
        }
        SfuEvent::ParticipantLeft { room: r, participant, identity, .. } => {
            ("participant_left", r, Some(described(*participant, identity)), None)
        }
        SfuEvent::TrackPublished { room: r, track } | SfuEvent::TrackUnpublished { room: r, track } => {
            let event =
                if matches!(e, SfuEvent::TrackPublished { .. }) { "track_published" } else { "track_unpublished" };
            // LiveKit's track events carry only the owner's sid and identity.
            let owner = proto::ParticipantInfo { sid: track.owner.to_string(), ..Default::default() };
            (event, r, Some(owner), Some(livekit.describe_track(track)))
        }
        _ => return None,
    };
    let org = r.org()?.to_string();
    let hook = proto::WebhookEvent {
        event: event.to_string(),
        room: Some(room(r.local())),
        participant,
        track,
        id: record_id("EV", now_ms),
        created_at: now_ms / 1000,
        ..Default::default()
    };
    Some((org, hook))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;

    use super::*;
    use crate::signal::token::TokenVerifier;

    /// A receiver that refuses `failures` times with 503, then checks the signature the way
    /// LiveKit's WebhookReceiver does.
    async fn receiver(failures: u32) -> (String, Arc<AtomicU32>) {
        let hits = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&hits);
        let app = axum::Router::new().route(
            "/",
            post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let seen = Arc::clone(&seen);
                async move {
                    if seen.fetch_add(1, Ordering::SeqCst) < failures {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let verifier = TokenVerifier::new([("k".to_string(), "s".repeat(32))].into_iter().collect());
                    let token = headers["authorization"].to_str().unwrap();
                    let Ok(claims) = verifier.verify(token, 1_800_000_000) else { return StatusCode::UNAUTHORIZED };
                    let want = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body));
                    if claims.sha256 == Some(want) { StatusCode::OK } else { StatusCode::UNAUTHORIZED }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, hits)
    }

    #[tokio::test]
    async fn private_destinations_are_recognised() {
        for private in [
            "http://127.0.0.1:8080/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:192.168.1.1]/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://localhost/",
        ] {
            assert!(public_address(private, &[]).await.is_none(), "{private}");
        }
        for private in [
            "http://198.18.0.1/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:a00:1::]/",
            "http://[::10.0.0.1]/",
            "http://192.0.0.170/",
            "http://192.88.99.1/",
            "http://[2001:0:4136:e378::1]/",
            "http://[2001:db8::1]/",
            "http://[100::1]/",
        ] {
            assert!(public_address(private, &[]).await.is_none(), "{private}");
        }
        let pinned = public_address("http://93.184.215.14/hooks", &[]).await;
        assert_eq!(pinned, Some(("93.184.215.14".to_string(), "93.184.215.14:80".parse().unwrap())));
        let own = ["93.184.215.14".parse().unwrap()];
        assert!(public_address("http://93.184.215.14:7880/v1/rooms", &own).await.is_none(), "the node itself");
        assert!(public_address("https://[2606:4700::1111]/", &[]).await.is_some());
        assert!(public_address("not a url", &[]).await.is_none());
        assert_eq!(host_of("https://user:pw@hooks.example:8443/x?token=t"), "hooks.example:8443");
    }

    #[tokio::test]
    async fn retries_until_accepted_and_stops_on_a_refusal() {
        let config = WebhookConfig { urls: vec![], api_key: "k".into(), api_secret: "s".repeat(32) };
        let clock = Clock::manual(Arc::new(std::sync::atomic::AtomicI64::new(1_800_000_000_000)));
        let http = reqwest::Client::new();
        let (url, hits) = receiver(2).await;
        assert!(deliver(&http, &config, &url, br#"{"event":"room_started"}"#, &clock).await);
        assert_eq!(hits.load(Ordering::SeqCst), 3, "two 503s, then accepted");
        // A body signed with another secret is refused (401): no retry.
        let wrong = WebhookConfig { api_secret: "t".repeat(32), ..config };
        let (url, hits) = receiver(0).await;
        assert!(!deliver(&http, &wrong, &url, b"{}", &clock).await);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}
