// Shared by several test crates; each uses its own part of it.
#![allow(dead_code)]

//! A server on a fresh database (SQLite in a temp dir, or a new PostgreSQL database when
//! `AURALINK_TEST_PG` is set) driven through `oneshot`, with a clock the test moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use auralink::config::Config;
use auralink::server::Server;
use auralink::wall::Clock;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct Api {
    pub server: Server,
    pub router: axum::Router,
    pub admin: String,
    pub clock: Arc<AtomicI64>,
    pub pg_db: Option<String>,
    /// What this node was started with: another node sharing them shares its database and
    /// keys (dev mode keeps them in the data dir).
    pub config: Config,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// `AURALINK_TEST_PG`, or `None` when Postgres tests are not asked for.
pub fn pg_url() -> Option<String> {
    std::env::var("AURALINK_TEST_PG").ok().filter(|s| !s.is_empty())
}

/// Creates a database of its own for one test; fails loudly if Postgres was asked for and is down.
pub async fn fresh_pg_database(base: &str) -> (String, String) {
    use sqlx::Connection;
    let name = format!("auralink_t_{}", auralink::ids::record_id("db", 0).trim_start_matches("db_"));
    let mut conn =
        sqlx::PgConnection::connect(base).await.expect("AURALINK_TEST_PG is set but Postgres is unreachable");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
    let url = match base.rsplit_once('/') {
        Some((head, _)) => format!("{head}/{name}"),
        None => panic!("AURALINK_TEST_PG must end in /<database>"),
    };
    (name, url)
}

pub async fn drop_pg_database(name: &str) {
    use sqlx::Connection;
    let Some(base) = pg_url() else { return };
    if let Ok(mut conn) = sqlx::PgConnection::connect(&base).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await;
    }
}

impl Api {
    pub async fn start(backend: Backend, tag: &str) -> Option<Api> {
        Api::start_with(backend, tag, |_| {}).await
    }

    /// As [`Api::start`], with changes to the configuration.
    pub async fn start_with(backend: Backend, tag: &str, tweak: impl FnOnce(&mut Config)) -> Option<Api> {
        let dir = std::env::temp_dir().join(format!("auralink-api-{tag}-{}-{}", std::process::id(), rand_suffix()));
        let mut config = Config::loopback(&dir);
        let mut pg_db = None;
        match backend {
            Backend::Sqlite => {}
            Backend::Postgres => {
                let base = pg_url()?;
                let (name, url) = fresh_pg_database(&base).await;
                config.database_url = Some(url);
                pg_db = Some(name);
            }
        }
        config.admin_key = Some("admin-key-for-tests-0123456789abcdef".into());
        tweak(&mut config);
        let server = auralink::server::start(config.clone()).await.expect("server starts");
        // Starts at the real time: tokens minted here are also checked by routes that read
        // the system clock (the LiveKit signal paths).
        let clock = Arc::new(AtomicI64::new(Clock::system().now_ms()));
        let mut state = server.state();
        state.clock = Clock::manual(Arc::clone(&clock));
        let router = auralink::api::app(state);
        Some(Api { server, router, admin: "admin-key-for-tests-0123456789abcdef".into(), clock, pg_db, config })
    }

    pub fn now_secs(&self) -> u64 {
        (self.clock.load(Ordering::Relaxed) / 1000) as u64
    }

    pub fn advance_ms(&self, ms: i64) {
        self.clock.fetch_add(ms, Ordering::Relaxed);
    }

    pub async fn send(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if !key.is_empty() {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let req = match body {
            Some(b) => req.header("content-type", "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.raw(req.unwrap()).await
    }

    pub async fn raw(&self, req: Request<Body>) -> Reply {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, body }
    }

    /// A new org through the admin key; returns `(org id, owner key)`.
    pub async fn org(&self, name: &str) -> (String, String) {
        let r = self.org_created(name).await;
        (r["org"]["id"].as_str().unwrap().into(), r["api_key"]["key"].as_str().unwrap().into())
    }

    /// The whole creation response (org, owner, API key, LiveKit key pair).
    pub async fn org_created(&self, name: &str) -> Value {
        let r = self
            .send(
                "POST",
                "/v1/orgs",
                &self.admin,
                Some(serde_json::json!({ "name": name, "owner_email": format!("owner@{name}.test") })),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body
    }

    pub async fn finish(self) {
        self.server.db.close().await;
        self.server.shutdown().await;
        if let Some(name) = self.pg_db {
            drop_pg_database(&name).await;
        }
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64
}
