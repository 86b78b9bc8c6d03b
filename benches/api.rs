//! Control API throughput on a real server over loopback HTTP: token minting
//! (`POST /v1/tokens`, one database transaction with an audit entry) and room listing
//! (`GET /v1/rooms`), on SQLite and, with `AURALINK_TEST_PG` set, on PostgreSQL. The baseline,
//! measured in the same run, is `GET /healthz` on the same server (HTTP and routing, no
//! database), so each row's ratio is what the database work costs.
//!
//! `cargo bench --bench api -- [--seconds S] [--concurrency C]` (or `API_BENCH_SECONDS`,
//! `API_BENCH_CONCURRENCY`). Without `--bench` (as `cargo test --all-targets` runs it) this is
//! a smoke test: 0.3 s per row, failing if any request fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use auralink::config::Config;

#[path = "support/args.rs"]
mod args;
use args::Args;

const ADMIN: &str = "bench-admin-key-0123456789abcdef0123";

struct Opts {
    seconds: f64,
    concurrency: usize,
    smoke: bool,
}

fn opts() -> Opts {
    let args = Args::from_env();
    Opts {
        seconds: args.get("--seconds", "API_BENCH_SECONDS", 5.0, 0.3),
        concurrency: args.get("--concurrency", "API_BENCH_CONCURRENCY", 16, 16),
        smoke: !args.bench(),
    }
}

#[derive(Clone, Copy)]
enum Call {
    Health,
    MintToken,
    ListRooms,
}

struct Row {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Answers that were not a success, and requests that got no answer.
    errors: u64,
    unanswered: u64,
    requests: u64,
}

/// `concurrency` clients calling as fast as answers come for `seconds`.
async fn measure(base: &str, key: &str, call: Call, o: &Opts) -> Row {
    let http = reqwest::Client::new();
    let (errors, unanswered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs_f64(o.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..o.concurrency {
        let (http, base, key) = (http.clone(), base.to_string(), key.to_string());
        let (errors, unanswered) = (Arc::clone(&errors), Arc::clone(&unanswered));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let req = match call {
                    Call::Health => http.get(format!("{base}/healthz")),
                    Call::ListRooms => http.get(format!("{base}/v1/rooms")).bearer_auth(&key),
                    Call::MintToken => http
                        .post(format!("{base}/v1/tokens"))
                        .bearer_auth(&key)
                        .json(&serde_json::json!({ "room": "bench-room", "identity": format!("u{worker}-{n}") })),
                };
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                    }
                    Ok(r) => {
                        let status = r.status();
                        eprintln!("{status}: {}", r.text().await.unwrap_or_default());
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    // The server never answered: in a smoke run on two shared cores, the client
                    // reusing a kept-alive connection the server is closing (hyper's known race)
                    // looks like this. Counted apart, so that the server's own errors stay zero.
                    Err(e) => {
                        eprintln!("no answer: {e}");
                        unanswered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.push(t.elapsed());
                n += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Row {
        rps: all.len() as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
        unanswered: unanswered.load(Ordering::Relaxed),
        requests: all.len() as u64,
    }
}

/// A server on `database_url` (None: SQLite in a temp dir) with one org, one room and its key.
async fn server(database_url: Option<String>, tag: &str) -> (auralink::server::Server, String, String) {
    let dir = std::env::temp_dir().join(format!("auralink-apibench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config::loopback(dir);
    config.database_url = database_url;
    config.admin_key = Some(ADMIN.into());
    config.rate_limit_per_minute = u32::MAX / 2;
    config.rate_limit_burst = u32::MAX / 2;
    let server = auralink::server::start(config).await.expect("the server starts");
    let base = format!("http://{}", server.http_addr);
    let http = reqwest::Client::new();
    let org: serde_json::Value = http
        .post(format!("{base}/v1/orgs"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({ "name": "bench", "owner_email": "bench@example.com" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = org["api_key"]["key"].as_str().unwrap().to_string();
    let r = http.post(format!("{base}/v1/rooms")).bearer_auth(&key).json(&serde_json::json!({ "name": "bench-room" }));
    assert_eq!(r.send().await.unwrap().status(), 201);
    (server, base, key)
}

/// A database of its own on the `AURALINK_TEST_PG` server.
async fn pg_database(base: &str) -> String {
    use sqlx::Connection;
    let name = format!("auralink_apibench_{}", std::process::id());
    let mut conn =
        sqlx::PgConnection::connect(base).await.expect("AURALINK_TEST_PG is set but Postgres is unreachable");
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut conn)
        .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
    format!("{}/{name}", base.rsplit_once('/').expect("a database url").0)
}

fn main() {
    let o = opts();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut backends = vec![("sqlite", None)];
        if let Some(pg) = std::env::var("AURALINK_TEST_PG").ok().filter(|s| !s.is_empty()) {
            backends.push(("postgres", Some(pg_database(&pg).await)));
        }
        println!("| backend | request | req/s | p50 ms | p99 ms | errors | unanswered | ratio to /healthz |");
        println!("|---|---|---|---|---|---|---|---|");
        for (name, url) in backends {
            let (server, base, key) = server(url, name).await;
            let health = measure(&base, &key, Call::Health, &o).await;
            for (label, call) in [
                ("GET /healthz", Call::Health),
                ("POST /v1/tokens", Call::MintToken),
                ("GET /v1/rooms", Call::ListRooms),
            ] {
                let row =
                    if matches!(call, Call::Health) { Row { ..health } } else { measure(&base, &key, call, &o).await };
                println!(
                    "| {name} | {label} | {:.0} | {:.2} | {:.2} | {} | {} | {:.2} |",
                    row.rps,
                    row.p50_ms,
                    row.p99_ms,
                    row.errors,
                    row.unanswered,
                    row.rps / health.rps
                );
                if o.smoke {
                    assert_eq!(row.errors, 0, "{label} on {name} failed");
                    assert!(row.unanswered * 100 <= row.requests, "{label} on {name}: {} unanswered", row.unanswered);
                    assert!(row.rps > 0.0);
                }
            }
            server.shutdown().await;
        }
    });
}
