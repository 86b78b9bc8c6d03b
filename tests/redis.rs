//! With `AURALINK_TEST_REDIS`: rate-limit budgets are shared through Redis by every node,
//! and readiness reports Redis. Fails loudly when the variable is set and Redis is down.

#[path = "support/api.rs"]
mod support;

use auralink::api::ratelimit::RateLimiter;
use auralink::db::redis::Redis;
use axum::http::StatusCode;

fn redis_url() -> Option<String> {
    std::env::var("AURALINK_TEST_REDIS").ok().filter(|s| !s.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_budget() {
    let Some(url) = redis_url() else {
        eprintln!("AURALINK_TEST_REDIS not set: skipped");
        return;
    };
    let node_a = RateLimiter::new(
        60,
        2,
        Some(Redis::connect(&url).await.expect("AURALINK_TEST_REDIS is set but Redis is unreachable")),
    );
    let node_b = RateLimiter::new(60, 2, Some(Redis::connect(&url).await.unwrap()));
    let key = auralink::ids::record_id("key", 0);
    let now = 1_000_000;
    assert_eq!(node_a.check(&key, now).await, Ok(()));
    assert_eq!(node_b.check(&key, now).await, Ok(()));
    assert_eq!(node_a.check(&key, now).await, Err(1000), "the other node's requests count here");
    assert_eq!(node_b.check(&key, now + 1000).await, Ok(()));
    assert_eq!(node_a.redis_errors.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_redis() {
    let Some(url) = redis_url() else {
        eprintln!("AURALINK_TEST_REDIS not set: skipped");
        return;
    };
    let api =
        support::Api::start_with(support::Backend::Sqlite, "redis-ready", |c| c.redis_url = Some(url)).await.unwrap();
    let r = api.send("GET", "/readyz", "", None).await;
    assert_eq!((r.status, r.body["redis"].as_str()), (StatusCode::OK, Some("ok")), "{:?}", r.body);
    api.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_node_is_refused_on_another() {
    use auralink::sfu::signal::revocation::Revocations;
    let Some(url) = redis_url() else {
        eprintln!("AURALINK_TEST_REDIS not set: skipped");
        return;
    };
    let (node_a, node_b) = (Revocations::default(), Revocations::default());
    node_a.use_redis(Redis::connect(&url).await.expect("AURALINK_TEST_REDIS is set but Redis is unreachable"));
    node_b.use_redis(Redis::connect(&url).await.unwrap());
    let jti = auralink::ids::record_id("tok", 0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!(!node_b.is_revoked(&jti, now).await.unwrap());
    node_a.revoke(&jti, now + 60_000, now).await.unwrap();
    assert!(node_b.is_revoked(&jti, now).await.unwrap());
}
