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
    use auralink::signal::revocation::Revocations;
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

/// A session joined on node B with a token that node A revokes ends on B too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_node_ends_its_sessions_on_another() {
    use auralink::client::{Client, MediaSpec};
    use serde_json::json;
    use tower::ServiceExt;
    let Some(url) = redis_url() else {
        eprintln!("AURALINK_TEST_REDIS not set: skipped");
        return;
    };
    let api = support::Api::start_with(support::Backend::Sqlite, "revoke-across", |c| c.redis_url = Some(url.clone()))
        .await
        .unwrap();
    let b = auralink::server::start(api.config.clone()).await.expect("second node starts");
    let b_router = auralink::api::app(b.state());
    let (_, key) = api.org("across").await;
    api.send("POST", "/v1/rooms", &key, Some(json!({ "name": "stage" }))).await;
    let r = api.send("POST", "/v1/tokens", &key, Some(json!({ "room": "stage", "identity": "pat" }))).await;
    let (jwt, jti) = (r.body["token"].as_str().unwrap().to_string(), r.body["jti"].as_str().unwrap().to_string());
    // Pat joins on node B.
    let mut client = Client::new(std::time::Instant::now(), "127.0.0.1:9".parse().unwrap());
    let offer = client.offer(&[MediaSpec::send(str0m::media::MediaKind::Audio)], None);
    let join = axum::http::Request::post("/whip/stage")
        .header("authorization", format!("Bearer {jwt}"))
        .header("content-type", "application/sdp")
        .body(axum::body::Body::from(offer))
        .unwrap();
    assert_eq!(b_router.clone().oneshot(join).await.unwrap().status(), StatusCode::CREATED);
    let on_b = || async {
        let req = axum::http::Request::get("/v1/rooms/stage/participants")
            .header("authorization", format!("Bearer {key}"))
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = b_router.clone().oneshot(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["participants"].as_array().unwrap().len()
    };
    assert_eq!(on_b().await, 1);
    // Both nodes listen before anything is said (Redis does not keep what nobody heard).
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..250 {
        let (_, listeners): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(auralink::signal::revocation::CHANNEL)
            .query_async(&mut conn)
            .await
            .unwrap();
        if listeners >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Node A revokes it: nobody there joined with it, but node B hears and ends pat's session.
    let r = api.send("POST", &format!("/v1/tokens/{jti}/revoke"), &key, None).await;
    assert_eq!((r.status, r.body["disconnected"].as_u64()), (StatusCode::OK, Some(0)), "{:?}", r.body);
    for _ in 0..250 {
        if on_b().await == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(on_b().await, 0, "node B ended the session of the token revoked on node A");
    b.shutdown().await;
    api.finish().await;
}
