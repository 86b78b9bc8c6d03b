//! The control API against real SQLite and, with `AURALINK_TEST_PG`, real PostgreSQL: every
//! scenario runs on both, each on a database of its own.

#[path = "support/api.rs"]
mod support;

use auralink::signal::token;
use axum::http::StatusCode;
use serde_json::json;
use support::{Api, Backend};

/// `name` or `name => tweak` (a `fn(&mut Config)` applied before the server starts).
macro_rules! on_both {
    ($($name:ident $(=> $tweak:expr)?),* $(,)?) => {$(
        mod $name {
            use super::*;
            fn tweak(_c: &mut auralink::config::Config) {
                $($tweak(_c);)?
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Api::start_with(Backend::Sqlite, stringify!($name), tweak).await.unwrap()).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                match Api::start_with(Backend::Postgres, stringify!($name), tweak).await {
                    Some(api) => super::$name(api).await,
                    None => eprintln!("AURALINK_TEST_PG not set: Postgres run skipped"),
                }
            }
        }
    )*};
}

on_both!(
    tokens_and_livekit_keys_stay_in_their_org,
    revoked_tokens_are_refused_and_disconnect,
    calls_record_who_was_in_a_room => |c: &mut auralink::config::Config| c.room.empty_timeout_secs = 1,
    data_is_sent_to_the_callers_rooms_only,
    another_node_learns_an_orgs_key_on_first_use,
    participant_permissions_change_live,
    org_webhooks_are_signed_with_the_orgs_key => |c: &mut auralink::config::Config| c.webhook_allow_private_networks = true,
    org_webhooks_stay_out_of_private_networks,
    aic_settings_per_org_and_room,
    org_users_keys_and_rooms,
    tenants_see_only_their_own,
    idempotent_posts,
    keys_expire_and_revoke,
    roles_and_scopes_gate,
    bad_input_gets_clear_errors,
    minted_keys_go_with_their_minter,
    a_mint_racing_its_minters_revocation_leaves_no_live_key,
    room_service_keeps_the_control_apis_limits,
    deleted_rooms_tokens_stop_joining,
    audit_keeps_user_agents_short
);

async fn org_users_keys_and_rooms(api: Api) {
    let (org, owner) = api.org("acme").await;
    let r = api.send("GET", &format!("/v1/orgs/{org}"), &owner, None).await;
    assert_eq!((r.status, r.body["name"].as_str()), (StatusCode::OK, Some("acme")));
    let r = api.send("PATCH", &format!("/v1/orgs/{org}"), &owner, Some(json!({ "metadata": { "plan": "pro" } }))).await;
    assert_eq!(r.body["metadata"]["plan"], "pro", "{:?}", r.body);

    let r = api.send("POST", "/v1/users", &owner, Some(json!({ "email": "ann@acme.test", "role": "member" }))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let ann = r.body["id"].as_str().unwrap().to_string();
    let r = api.send("GET", "/v1/users", &owner, None).await;
    assert_eq!(r.body["users"].as_array().unwrap().len(), 2);
    let r = api.send("POST", "/v1/users", &owner, Some(json!({ "email": "ANN@acme.test", "role": "viewer" }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "already_exists"));

    let r = api.send("POST", "/v1/rooms", &owner, Some(json!({ "name": "standup", "metadata": "m1" }))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = api.send("POST", "/v1/rooms", &owner, Some(json!({ "name": "standup" }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "already_exists"));
    let r = api.send("PATCH", "/v1/rooms/standup", &owner, Some(json!({ "metadata": "m2" }))).await;
    assert_eq!(r.body["metadata"], "m2");
    let r = api.send("GET", "/v1/rooms/standup", &owner, None).await;
    assert_eq!((r.status, r.body["num_participants"].as_u64()), (StatusCode::OK, Some(0)));
    let r = api.send("GET", "/v1/rooms/standup/participants", &owner, None).await;
    assert_eq!(r.body["participants"], json!([]));
    let r = api.send("DELETE", "/v1/rooms/standup", &owner, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api.send("GET", "/v1/rooms/standup", &owner, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The name is free again once the room is deleted.
    let r = api.send("POST", "/v1/rooms", &owner, Some(json!({ "name": "standup" }))).await;
    assert_eq!(r.status, StatusCode::CREATED);

    let r = api.send("DELETE", &format!("/v1/users/{ann}"), &owner, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    // Every mutation left an audit entry, newest first, with who and what.
    let r = api.send("GET", "/v1/audit", &owner, None).await;
    let actions: Vec<&str> =
        r.body["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "user.remove",
            "room.create",
            "room.delete",
            "room.update",
            "room.create",
            "user.create",
            "org.update",
            "org.create"
        ]
    );
    let update = &r.body["entries"][3];
    assert_eq!((update["before"]["metadata"].as_str(), update["after"]["metadata"].as_str()), (Some("m1"), Some("m2")));
    assert_eq!(update["actor_type"], "api_key");
    api.finish().await;
}

async fn tenants_see_only_their_own(api: Api) {
    let (org_a, key_a) = api.org("alpha").await;
    let (org_b, key_b) = api.org("beta").await;
    api.send("POST", "/v1/rooms", &key_a, Some(json!({ "name": "secret-room" }))).await;
    let user_a = api
        .send("POST", "/v1/users", &key_a, Some(json!({ "email": "x@alpha.test", "role": "viewer" })))
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let keys_a = api.send("GET", "/v1/api-keys", &key_a, None).await;
    let key_id_a = keys_a.body["api_keys"][0]["id"].as_str().unwrap().to_string();

    // Org B's key on org A's ids: 404, the same answer as for ids that do not exist.
    for (method, path) in [
        ("GET", format!("/v1/orgs/{org_a}")),
        ("PATCH", format!("/v1/orgs/{org_a}")),
        ("GET", "/v1/rooms/secret-room".to_string()),
        ("PATCH", "/v1/rooms/secret-room".to_string()),
        ("DELETE", "/v1/rooms/secret-room".to_string()),
        ("GET", "/v1/rooms/secret-room/participants".to_string()),
        ("DELETE", "/v1/rooms/secret-room/participants/anyone".to_string()),
        ("GET", format!("/v1/users/{user_a}")),
        ("PATCH", format!("/v1/users/{user_a}")),
        ("DELETE", format!("/v1/users/{user_a}")),
        ("DELETE", format!("/v1/api-keys/{key_id_a}")),
    ] {
        let body = (method == "PATCH").then(|| json!({}));
        let r = api.send(method, &path, &key_b, body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path}: {:?}", r.body);
    }
    for (path, field) in
        [("/v1/rooms", "rooms"), ("/v1/users", "users"), ("/v1/api-keys", "api_keys"), ("/v1/audit", "entries")]
    {
        let r = api.send("GET", path, &key_b, None).await;
        let text = r.body[field].to_string();
        assert!(!text.contains(&org_a) && !text.contains("secret-room") && !text.contains("alpha"), "{path}: {text}");
    }
    // The same room name in another org is another room.
    let r = api.send("POST", "/v1/rooms", &key_b, Some(json!({ "name": "secret-room" }))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = api.send("GET", "/v1/rooms/secret-room", &key_a, None).await;
    assert_eq!(r.status, StatusCode::OK, "org A's room survived org B's attempts");
    assert_ne!(org_a, org_b);
    api.finish().await;
}

async fn idempotent_posts(api: Api) {
    let (org, key) = api.org("idem").await;
    let post = |body: serde_json::Value, idem: &str| {
        axum::http::Request::builder()
            .method("POST")
            .uri("/v1/rooms")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .header("idempotency-key", idem)
            .body(axum::body::Body::from(body.to_string()))
            .unwrap()
    };
    let first = api.raw(post(json!({ "name": "once" }), "k-1")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = api.raw(post(json!({ "name": "once" }), "k-1")).await;
    assert_eq!((again.status, &again.body), (StatusCode::CREATED, &first.body), "replayed, not re-run");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    // The stored response is sealed: what it shows once (keys, tokens) is not kept readable.
    #[derive(sqlx::FromRow)]
    struct Stored {
        response_body: Option<Vec<u8>>,
    }
    let mut tx = api.server.db.begin(&org).await.unwrap();
    let sql = "SELECT response_body FROM idempotency_keys WHERE org_id = $1";
    let stored: Stored = tx.fetch_one(sql, auralink::args![&org]).await.unwrap();
    tx.commit().await.unwrap();
    assert!(!String::from_utf8_lossy(&stored.response_body.unwrap()).contains("once"));
    let other = api.raw(post(json!({ "name": "twice" }), "k-1")).await;
    assert_eq!((other.status, other.code()), (StatusCode::CONFLICT, "idempotency_key_reused"));
    let rooms = api.send("GET", "/v1/rooms", &key, None).await;
    assert_eq!(rooms.body["rooms"].as_array().unwrap().len(), 1);
    // Without a key the same request is simply a second attempt.
    let dup = api.send("POST", "/v1/rooms", &key, Some(json!({ "name": "once" }))).await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    // After 24 h the key is forgotten.
    api.advance_ms(24 * 3600 * 1000 + 1);
    let later = api.raw(post(json!({ "name": "twice" }), "k-1")).await;
    assert_eq!(later.status, StatusCode::CREATED);
    api.finish().await;
}

async fn keys_expire_and_revoke(api: Api) {
    let (_, owner) = api.org("keys").await;
    let r = api.send("POST", "/v1/api-keys", &owner, Some(json!({ "name": "ci", "expires_in_secs": 3600 }))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let short = r.body["key"].as_str().unwrap().to_string();
    assert!(short.starts_with("alk_"));
    assert!(
        api.send("GET", "/v1/api-keys", &owner, None)
            .await
            .body
            .to_string()
            .contains(r.body["prefix"].as_str().unwrap())
    );
    assert!(
        !api.send("GET", "/v1/api-keys", &owner, None).await.body.to_string().contains(&short),
        "secrets are shown once"
    );
    assert_eq!(api.send("GET", "/v1/rooms", &short, None).await.status, StatusCode::OK);
    api.advance_ms(3600 * 1000);
    let r = api.send("GET", "/v1/rooms", &short, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "key_expired"));

    let r = api.send("POST", "/v1/api-keys", &owner, Some(json!({ "name": "temp" }))).await;
    let (id, temp) = (r.body["id"].as_str().unwrap().to_string(), r.body["key"].as_str().unwrap().to_string());
    assert_eq!(api.send("DELETE", &format!("/v1/api-keys/{id}"), &owner, None).await.status, StatusCode::NO_CONTENT);
    let r = api.send("GET", "/v1/rooms", &temp, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "key_revoked"));
    // A forged secret for a real prefix is as unknown as a made-up key.
    let forged = format!("{}{}", &temp[..temp.len() - 4], "zzzz");
    assert_eq!(api.send("GET", "/v1/rooms", &forged, None).await.code(), "invalid_key");
    assert_eq!(api.send("GET", "/v1/rooms", "alk_nope", None).await.code(), "invalid_key");
    assert_eq!(api.send("GET", "/v1/rooms", "", None).await.code(), "unauthenticated");
    api.finish().await;
}

async fn roles_and_scopes_gate(api: Api) {
    let (_, owner) = api.org("roles").await;
    let viewer =
        api.send("POST", "/v1/api-keys", &owner, Some(json!({ "name": "v", "role": "viewer" }))).await.body["key"]
            .as_str()
            .unwrap()
            .to_string();
    let r = api.send("POST", "/v1/rooms", &viewer, Some(json!({ "name": "r" }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "insufficient_role"));
    assert_eq!(api.send("GET", "/v1/rooms", &viewer, None).await.status, StatusCode::OK);
    let r = api.send("POST", "/v1/api-keys", &viewer, Some(json!({ "name": "x" }))).await;
    assert_eq!(r.code(), "insufficient_role");

    let reader = api
        .send("POST", "/v1/api-keys", &owner, Some(json!({ "name": "r", "scopes": ["rooms:read"] })))
        .await
        .body["key"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api.send("POST", "/v1/rooms", &reader, Some(json!({ "name": "r" }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "missing_scope"));
    let r = api.send("GET", "/v1/audit", &reader, None).await;
    assert_eq!(r.code(), "missing_scope");

    let admin_key = api.send("POST", "/v1/api-keys", &owner, Some(json!({ "name": "a", "role": "admin" }))).await.body
        ["key"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api.send("POST", "/v1/users", &admin_key, Some(json!({ "email": "boss@x.test", "role": "owner" }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "insufficient_role"));
    let r = api.send("POST", "/v1/api-keys", &owner, Some(json!({ "name": "bad", "scopes": ["rooms:fly"] }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_scope"));
    // The admin key creates orgs and nothing inside them; org keys cannot create orgs.
    let r = api.send("GET", "/v1/rooms", &api.admin, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "admin_key"));
    let r = api.send("POST", "/v1/orgs", &owner, Some(json!({ "name": "n", "owner_email": "a@b.c" }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "admin_only"));
    // The last owner stays, even when two owners are demoted at the same moment.
    let owner_id =
        api.send("GET", "/v1/users", &owner, None).await.body["users"][0]["id"].as_str().unwrap().to_string();
    let r = api.send("PATCH", &format!("/v1/users/{owner_id}"), &owner, Some(json!({ "role": "member" }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "last_owner"));
    let r = api.send("POST", "/v1/users", &owner, Some(json!({ "email": "co@x.test", "role": "owner" }))).await;
    let co_id = r.body["id"].as_str().unwrap().to_string();
    let (path_a, path_b) = (format!("/v1/users/{owner_id}"), format!("/v1/users/{co_id}"));
    let demote = |path| api.send("PATCH", path, &owner, Some(json!({ "role": "member" })));
    let (a, b) = tokio::join!(demote(&path_a), demote(&path_b));
    // One goes through; the other finds the last owner (or, demoted first, the caller's own
    // key no longer ranks as an owner). Either way one owner is left.
    let mut outcomes = [(a.status, a.code().to_string()), (b.status, b.code().to_string())];
    outcomes.sort();
    assert_eq!(outcomes[0].0, StatusCode::OK, "{outcomes:?}");
    assert!(matches!(outcomes[1].1.as_str(), "last_owner" | "insufficient_role"), "{outcomes:?}");
    let users = api.send("GET", "/v1/users", &owner, None).await;
    let owners = users.body["users"].as_array().unwrap().iter().filter(|u| u["role"] == "owner").count();
    assert_eq!(owners, 1, "{:?}", users.body);
    api.finish().await;
}

async fn bad_input_gets_clear_errors(api: Api) {
    let (_, key) = api.org("bad").await;
    let raw = |body: &'static str, ct: &'static str| {
        axum::http::Request::builder()
            .method("POST")
            .uri("/v1/rooms")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", ct)
            .body(axum::body::Body::from(body))
            .unwrap()
    };
    let r = api.raw(raw("{\"name\":", "application/json")).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_json"));
    let r = api.raw(raw("{\"name\":\"r\",\"colour\":1}", "application/json")).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"));
    let r = api.raw(raw("{\"name\":\"r\"}", "text/plain")).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let big = format!("{{\"name\":\"r\",\"metadata\":\"{}\"}}", "x".repeat(100 * 1024));
    let r = api.raw(raw(Box::leak(big.into_boxed_str()), "application/json")).await;
    assert_eq!((r.status, r.code()), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
    for name in ["", "has space", "slash/y", &"x".repeat(300)] {
        let r = api.send("POST", "/v1/rooms", &key, Some(json!({ "name": name }))).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"), "{name:?}");
    }
    let r = api.send("POST", "/v1/rooms", &key, Some(json!({ "name": "ok", "metadata": "a\u{0}b" }))).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
        "NUL is refused on both databases"
    );
    let r = api.send("GET", "/v1/rooms?after=a%00b", &key, None).await;
    assert!(r.status == StatusCode::OK || r.status == StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.status);
    let r = api.send("POST", "/v1/rooms", &key, Some(json!({ "name": "ok", "empty_timeout_secs": -1 }))).await;
    assert_eq!(r.code(), "invalid_field");
    let r = api.send("POST", "/v1/users", &key, Some(json!({ "email": "not-an-email", "role": "member" }))).await;
    assert_eq!(r.code(), "invalid_field");
    let r = api.send("POST", "/v1/users", &key, Some(json!({ "email": "a@b.co", "role": "emperor" }))).await;
    assert_eq!(r.code(), "invalid_field");
    let r = api.send("GET", "/readyz", "", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    api.finish().await;
}

/// Row-level security holds even for a query that forgets its org filter: a session in
/// the app's role sees nothing without an org, and only that org's rows with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_row_level_security_blocks_unscoped_reads() {
    use sqlx::{Connection, Row};
    let Some(api) = Api::start(Backend::Postgres, "rls").await else {
        eprintln!("AURALINK_TEST_PG not set: skipped");
        return;
    };
    let (org_a, key_a) = api.org("rls-a").await;
    let (_, key_b) = api.org("rls-b").await;
    api.send("POST", "/v1/rooms", &key_a, Some(json!({ "name": "a1" }))).await;
    api.send("POST", "/v1/rooms", &key_b, Some(json!({ "name": "b1" }))).await;
    let base = support::pg_url().unwrap();
    let url = format!("{}/{}", base.rsplit_once('/').unwrap().0, api.pg_db.as_deref().unwrap());
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    // As the superuser every row is visible: that is what the app role must not be.
    let all: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rooms").fetch_one(&mut conn).await.unwrap();
    assert_eq!(all, 2);
    sqlx::raw_sql("SET ROLE auralink_app").execute(&mut conn).await.unwrap();
    let none: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rooms").fetch_one(&mut conn).await.unwrap();
    assert_eq!(none, 0, "no org set: no rows");
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('app.org_id', $1, true)").bind(&org_a).execute(&mut *tx).await.unwrap();
    let names: Vec<String> =
        sqlx::query("SELECT name FROM rooms").fetch_all(&mut *tx).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(names, ["a1"]);
    let forged = sqlx::query(
        "INSERT INTO rooms (id, org_id, name, created_at, updated_at) VALUES ('room_x', 'org_other', 'x', 0, 0)",
    )
    .execute(&mut *tx)
    .await;
    assert!(forged.is_err(), "a row for another org is refused");
    drop(tx);
    let tampered = sqlx::query("DELETE FROM audit_log").execute(&mut conn).await;
    assert!(tampered.is_err(), "the audit log is append-only");
    conn.close().await.unwrap();
    api.finish().await;
}

/// The database goes away mid-run: readiness says so, requests get a clear 503, and when it
/// comes back everything acknowledged before is still there and writes work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_reported_and_recovered() {
    use sqlx::Connection;
    let Some(api) = Api::start(Backend::Postgres, "outage").await else {
        eprintln!("AURALINK_TEST_PG not set: skipped");
        return;
    };
    let (_, key) = api.org("outage").await;
    assert_eq!(
        api.send("POST", "/v1/rooms", &key, Some(json!({ "name": "before" }))).await.status,
        StatusCode::CREATED
    );
    let db = api.pg_db.clone().unwrap();
    let mut admin = sqlx::PgConnection::connect(&support::pg_url().unwrap()).await.unwrap();
    let stmt = |sql: String| sqlx::raw_sql(sqlx::AssertSqlSafe(sql));
    stmt(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false")).execute(&mut admin).await.unwrap();
    stmt(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"))
        .execute(&mut admin)
        .await
        .unwrap();
    let r = api.send("GET", "/readyz", "", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let r = api.send("POST", "/v1/rooms", &key, Some(json!({ "name": "during" }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::SERVICE_UNAVAILABLE, "db_unavailable"), "{:?}", r.body);
    stmt(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")).execute(&mut admin).await.unwrap();
    let r = api.send("GET", "/readyz", "", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(api.send("POST", "/v1/rooms", &key, Some(json!({ "name": "after" }))).await.status, StatusCode::CREATED);
    let r = api.send("GET", "/v1/rooms", &key, None).await;
    let names: Vec<&str> = r.body["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["after", "before"]);
    admin.close().await.unwrap();
    api.finish().await;
}

async fn tokens_and_livekit_keys_stay_in_their_org(api: Api) {
    let a = api.org_created("tok-a").await;
    let b = api.org_created("tok-b").await;
    let (org_a, key_a) = (a["org"]["id"].as_str().unwrap(), a["api_key"]["key"].as_str().unwrap());
    let key_b = b["api_key"]["key"].as_str().unwrap();
    for key in [key_a, key_b] {
        api.send("POST", "/v1/rooms", key, Some(json!({ "name": "standup" }))).await;
    }
    let r = api
        .send("POST", "/v1/tokens", key_a, Some(json!({ "room": "standup", "identity": "ann", "can_publish": false })))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let jwt = r.body["token"].as_str().unwrap();
    assert_eq!(r.body["api_key"], a["livekit_key"]["api_key"]);
    // The SFU's verifier knows the org's key and which org it is.
    let tokens = &api.server.state().livekit.tokens;
    let claims = tokens.verify_join(jwt, "standup", api.now_secs()).unwrap();
    assert_eq!((claims.sub.as_str(), claims.video.can_publish), ("ann", Some(false)));
    assert_eq!(tokens.org_of(&claims.iss).as_deref(), Some(org_a));
    let r = api.send("GET", &format!("/rtc/validate?access_token={jwt}"), "", None).await;
    assert_eq!(r.status, StatusCode::OK);
    // Only the org's own rooms get tokens.
    let r = api.send("POST", "/v1/tokens", key_a, Some(json!({ "room": "elsewhere", "identity": "ann" }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let r = api
        .send("POST", "/v1/tokens", key_a, Some(json!({ "room": "standup", "identity": "ann", "ttl_secs": 999999 })))
        .await;
    assert_eq!(r.code(), "invalid_field");
    // The org's LiveKit key drives RoomService for its rooms only.
    let mut svc = token::join_claims(a["livekit_key"]["api_key"].as_str().unwrap(), "", "", api.now_secs(), 600);
    svc.video.room_join = false;
    svc.video.room_list = true;
    let svc = token::mint(&svc, a["livekit_key"]["api_secret"].as_str().unwrap());
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/twirp/livekit.RoomService/ListRooms")
        .header("authorization", format!("Bearer {svc}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{}"))
        .unwrap();
    let r = api.raw(req).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["rooms"].as_array().map(|r| r.len()), Some(1), "{:?}", r.body);
    // A RoomService change is audited, by the LiveKit key that made it.
    let mut create = token::join_claims(a["livekit_key"]["api_key"].as_str().unwrap(), "", "", api.now_secs(), 600);
    create.video.room_join = false;
    create.video.room_create = true;
    let create = token::mint(&create, a["livekit_key"]["api_secret"].as_str().unwrap());
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/twirp/livekit.RoomService/CreateRoom")
        .header("authorization", format!("Bearer {create}"))
        .header("content-type", "application/json")
        .header("user-agent", "livekit-server-sdk-test")
        .body(axum::body::Body::from(r#"{"name":"retro","metadata":"m"}"#))
        .unwrap();
    assert_eq!(api.raw(req).await.status, StatusCode::OK);
    let audit = api.send("GET", "/v1/audit", key_a, None).await;
    let entry = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "room.create" && e["target_id"] == "retro");
    let entry = entry.unwrap_or_else(|| panic!("no audit entry: {:?}", audit.body));
    assert_eq!(entry["actor_type"], "livekit_key");
    assert_eq!(entry["actor_id"], a["livekit_key"]["api_key"]);
    assert_eq!(entry["user_agent"], "livekit-server-sdk-test");
    assert_eq!(entry["after"]["metadata"], "m");
    // The secret is stored sealed, not as text.
    let listed = api.send("GET", "/v1/livekit-keys", key_a, None).await;
    assert_eq!(listed.body["livekit_keys"][0]["api_key"], a["livekit_key"]["api_key"]);
    assert!(!listed.body.to_string().contains(a["livekit_key"]["api_secret"].as_str().unwrap()));
    api.finish().await;
}

/// Past its burst a caller gets 429 with Retry-After; its budget refills with time, and other
/// callers are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let tweak = |c: &mut auralink::config::Config| {
        c.rate_limit_per_minute = 60;
        c.rate_limit_burst = 3;
    };
    let api = Api::start_with(Backend::Sqlite, "ratelimit", tweak).await.unwrap();
    let (_, key) = api.org("limited").await;
    let (_, other) = api.org("other").await;
    for _ in 0..3 {
        assert_eq!(api.send("GET", "/v1/rooms", &key, None).await.status, StatusCode::OK);
    }
    let r = api.send("GET", "/v1/rooms", &key, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(api.send("GET", "/v1/rooms", &other, None).await.status, StatusCode::OK);
    api.advance_ms(1000);
    assert_eq!(api.send("GET", "/v1/rooms", &key, None).await.status, StatusCode::OK);
    let metrics = api.send("GET", "/metrics", "", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    api.finish().await;
}

/// A WHIP publisher's join with `token`.
async fn whip_join(api: &Api, room: &str, token: &str) -> support::Reply {
    use auralink::client::{Client, MediaSpec};
    let mut client = Client::new(std::time::Instant::now(), "127.0.0.1:9".parse().unwrap());
    let offer = client.offer(&[MediaSpec::send(str0m::media::MediaKind::Audio)], None);
    let req = axum::http::Request::builder()
        .method("POST")
        .uri(format!("/whip/{room}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/sdp")
        .body(axum::body::Body::from(offer))
        .unwrap();
    api.raw(req).await
}

/// Polls `path` until `done` holds for its body; call history is written off the media path.
async fn eventually(api: &Api, key: &str, path: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    for _ in 0..250 {
        let r = api.send("GET", path, key, None).await;
        if r.status == StatusCode::OK && done(&r.body) {
            return r.body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{path} did not get there in 5 s: {:?}", api.send("GET", path, key, None).await.body);
}

async fn calls_record_who_was_in_a_room(api: Api) {
    let created = api.org_created("history").await;
    let key = created["api_key"]["key"].as_str().unwrap().to_string();
    let (_, other) = api.org("history-other").await;
    // Nobody created "huddle": the first join (a token from the org's LiveKit key, as a
    // server SDK mints them) records it, as LiveKit auto-creates rooms.
    let (lk_key, lk_secret) =
        (created["livekit_key"]["api_key"].as_str().unwrap(), created["livekit_key"]["api_secret"].as_str().unwrap());
    for who in ["pat", "quinn"] {
        let jwt = token::mint(&token::join_claims(lk_key, "huddle", who, api.now_secs(), 600), lk_secret);
        assert_eq!(whip_join(&api, "huddle", &jwt).await.status, StatusCode::CREATED);
    }
    let calls =
        eventually(&api, &key, "/v1/calls?room=huddle", |b| b["calls"].as_array().is_some_and(|c| c.len() == 1)).await;
    let id = calls["calls"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/v1/calls/{id}");
    // Both conditions: on PostgreSQL the call row and its participants are read by separate
    // statements, which may straddle the second join's commit.
    let call = eventually(&api, &key, &path, |b| {
        b["participants"].as_array().is_some_and(|p| p.len() == 2) && b["max_participants"] == 2
    })
    .await;
    assert_eq!(call["room"], "huddle");
    assert!(call["ended_at"].is_null());
    assert!(api.send("GET", "/v1/rooms/huddle", &key, None).await.status == StatusCode::OK, "the room was recorded");
    // Pat is removed, then the room is deleted: quinn goes too, and once it is empty the call ends.
    let r = api.send("DELETE", "/v1/rooms/huddle/participants/pat", &key, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    assert_eq!(api.send("DELETE", "/v1/rooms/huddle", &key, None).await.status, StatusCode::NO_CONTENT);
    let call = eventually(&api, &key, &path, |b| !b["ended_at"].is_null()).await;
    assert_eq!(call["end_reason"], "closed");
    let who: Vec<(String, String)> = call["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["identity"].as_str().unwrap().into(), p["leave_reason"].as_str().unwrap_or("").into()))
        .collect();
    assert_eq!(who, [("pat".into(), "removed".into()), ("quinn".into(), "room_deleted".into())]);
    assert!(call["participants"].as_array().unwrap().iter().all(|p| p["left_at"].as_i64() >= p["joined_at"].as_i64()));
    // Another org sees none of it.
    assert_eq!(api.send("GET", &path, &other, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.send("GET", "/v1/calls", &other, None).await.body["calls"], json!([]));
    api.finish().await;
}

async fn data_is_sent_to_the_callers_rooms_only(api: Api) {
    let (_, key) = api.org("data").await;
    let (_, other) = api.org("data-other").await;
    api.send("POST", "/v1/rooms", &key, Some(json!({ "name": "stage" }))).await;
    let send = |data: &str| Some(json!({ "data": data, "topic": "ops", "destination_identities": ["pat"] }));
    // Nobody is connected: accepted, delivered to nobody, and audited.
    let r = api.send("POST", "/v1/rooms/stage/data", &key, send("aGVsbG8=")).await;
    assert_eq!((r.status, r.body["delivered"].as_u64()), (StatusCode::OK, Some(0)), "{:?}", r.body);
    let audit = api.send("GET", "/v1/audit", &key, None).await;
    assert!(audit.body.to_string().contains("room.send_data"), "{:?}", audit.body);
    let r = api.send("POST", "/v1/rooms/stage/data", &key, send("not base64!")).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"));
    let big = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, vec![0u8; 16 * 1024]);
    let r = api.send("POST", "/v1/rooms/stage/data", &key, send(&big)).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"));
    let r = api.send("POST", "/v1/rooms/stage/data", &other, send("aGVsbG8=")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    api.finish().await;
}

fn key_of(created: &serde_json::Value) -> String {
    created["api_key"]["key"].as_str().unwrap().to_string()
}

async fn another_node_learns_an_orgs_key_on_first_use(api: Api) {
    // Node B runs beside A on the same database; it started before the org existed.
    let b = auralink::server::start(api.config.clone()).await.expect("second node starts");
    let b_router = auralink::api::app(b.state());
    let created = api.org_created("roaming").await;
    let (lk_key, lk_secret) =
        (created["livekit_key"]["api_key"].as_str().unwrap(), created["livekit_key"]["api_secret"].as_str().unwrap());
    let validate = |jwt: String| {
        let req = axum::http::Request::builder().uri(format!("/rtc/validate?access_token={jwt}"));
        let router = b_router.clone();
        async move {
            use tower::ServiceExt;
            router.oneshot(req.body(axum::body::Body::empty()).unwrap()).await.unwrap().status()
        }
    };
    let jwt = token::mint(&token::join_claims(lk_key, "desk", "pat", api.now_secs(), 600), lk_secret);
    assert_eq!(validate(jwt).await, StatusCode::OK, "node B looks the key up in the database");
    // A key nobody has is still refused (and not looked up on every attempt).
    let forged = token::mint(&token::join_claims("APInobody", "desk", "pat", api.now_secs(), 600), lk_secret);
    assert_eq!(validate(forged.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(validate(forged).await, StatusCode::UNAUTHORIZED);
    // A second pair for the org, then the first revoked: its tokens stop working here at
    // once (node B rechecks within a minute), the new pair's work.
    let r = api.send("POST", "/v1/livekit-keys", &key_of(&created), Some(json!({ "name": "rotated" }))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let (new_key, new_secret) = (r.body["api_key"].as_str().unwrap(), r.body["api_secret"].as_str().unwrap());
    let listed = api.send("GET", "/v1/livekit-keys", &key_of(&created), None).await;
    let first_id = listed.body["livekit_keys"][0]["id"].as_str().unwrap().to_string();
    let (_, other) = api.org("roaming-other").await;
    let r = api.send("DELETE", &format!("/v1/livekit-keys/{first_id}"), &other, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api.send("DELETE", &format!("/v1/livekit-keys/{first_id}"), &key_of(&created), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let old = token::mint(&token::join_claims(lk_key, "desk", "pat", api.now_secs(), 600), lk_secret);
    let r = api.send("GET", &format!("/rtc/validate?access_token={old}"), "", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let fresh = token::mint(&token::join_claims(new_key, "desk", "pat", api.now_secs(), 600), new_secret);
    let r = api.send("GET", &format!("/rtc/validate?access_token={fresh}"), "", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(validate(fresh).await, StatusCode::OK, "node B learns the new pair too");
    api.send("POST", "/v1/rooms", &key_of(&created), Some(json!({ "name": "desk" }))).await;
    let r = api.send("POST", "/v1/tokens", &key_of(&created), Some(json!({ "room": "desk", "identity": "pat" }))).await;
    assert_eq!((r.status, r.body["api_key"].as_str()), (StatusCode::CREATED, Some(new_key)), "signed with a live pair");
    // The right key with the wrong secret is refused as forged.
    let wrong = token::mint(
        &token::join_claims(lk_key, "desk", "pat", api.now_secs(), 600),
        "not-the-secret-not-the-secret-xx",
    );
    assert_eq!(validate(wrong).await, StatusCode::UNAUTHORIZED);
    b.shutdown().await;
    api.finish().await;
}

async fn participant_permissions_change_live(api: Api) {
    let (_, key) = api.org("perms").await;
    let (_, other) = api.org("perms-other").await;
    api.send("POST", "/v1/rooms", &key, Some(json!({ "name": "stage" }))).await;
    let r = api.send("POST", "/v1/tokens", &key, Some(json!({ "room": "stage", "identity": "pat" }))).await;
    assert_eq!(whip_join(&api, "stage", r.body["token"].as_str().unwrap()).await.status, StatusCode::CREATED);
    let path = "/v1/rooms/stage/participants/pat";
    let r = api.send("GET", path, &key, None).await;
    assert_eq!(r.body["permissions"]["can_publish"], true, "{:?}", r.body);
    // Publishing taken away, the rest as it was (the router's tests show the tracks go).
    let r = api.send("PATCH", path, &key, Some(json!({ "can_publish": false }))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        r.body["permissions"],
        json!({ "can_publish": false, "can_subscribe": true, "can_publish_data": true, "can_update_metadata": false, "hidden": false })
    );
    let audit = api.send("GET", "/v1/audit", &key, None).await;
    assert!(audit.body.to_string().contains("participant.update_permissions"));
    let r = api.send("PATCH", path, &key, Some(json!({ "can_fly": true }))).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"));
    let r = api.send("PATCH", path, &other, Some(json!({ "can_publish": true }))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    api.finish().await;
}

/// A webhook receiver on loopback: what it got, as (Authorization, body).
async fn hook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&got);
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let seen = std::sync::Arc::clone(&seen);
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                seen.lock().unwrap().push((auth, body));
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// An org with webhook endpoint `url` in which pat joins room "stage"; returns the org's
/// creation response.
async fn org_with_hooks_and_a_join(api: &Api, name: &str, url: &str) -> serde_json::Value {
    let created = api.org_created(name).await;
    let (org, key) = (created["org"]["id"].as_str().unwrap(), key_of(&created));
    let r = api.send("PATCH", &format!("/v1/orgs/{org}"), &key, Some(json!({ "webhook_urls": [url] }))).await;
    assert_eq!((r.status, &r.body["webhook_urls"]), (StatusCode::OK, &json!([url])), "{:?}", r.body);
    api.send("POST", "/v1/rooms", &key, Some(json!({ "name": "stage" }))).await;
    let r = api.send("POST", "/v1/tokens", &key, Some(json!({ "room": "stage", "identity": "pat" }))).await;
    assert_eq!(whip_join(api, "stage", r.body["token"].as_str().unwrap()).await.status, StatusCode::CREATED);
    created
}

async fn org_webhooks_are_signed_with_the_orgs_key(api: Api) {
    let (url, got) = hook_receiver().await;
    let created = org_with_hooks_and_a_join(&api, "hooked", &url).await;
    let key = key_of(&created);
    let r = api
        .send(
            "PATCH",
            &format!("/v1/orgs/{}", created["org"]["id"].as_str().unwrap()),
            &key,
            Some(json!({ "webhook_urls": ["ftp://x"] })),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"));
    let verifier = token::TokenVerifier::new(
        [(
            created["livekit_key"]["api_key"].as_str().unwrap().to_string(),
            created["livekit_key"]["api_secret"].as_str().unwrap().to_string(),
        )]
        .into_iter()
        .collect(),
    );
    for _ in 0..250 {
        if got.lock().unwrap().iter().any(|(_, b)| b.contains("participant_joined")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let hooks = got.lock().unwrap().clone();
    let (auth, body) =
        hooks.iter().find(|(_, b)| b.contains("participant_joined")).expect("participant_joined arrived");
    let claims = verifier.verify(auth, api.now_secs()).expect("signed with the org's LiveKit key");
    let digest = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        <sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()),
    );
    assert_eq!(claims.sha256, Some(digest));
    assert!(body.contains("\"identity\":\"pat\"") && body.contains("\"name\":\"stage\""), "{body}");
    api.finish().await;
}

async fn org_webhooks_stay_out_of_private_networks(api: Api) {
    let (url, got) = hook_receiver().await;
    org_with_hooks_and_a_join(&api, "sneaky", &url).await;
    let failed = || api.server.state().webhooks.failed.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..250 {
        if failed() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(failed() > 0, "the loopback endpoint was refused");
    assert!(got.lock().unwrap().is_empty(), "nothing reached the private network");
    api.finish().await;
}

async fn aic_settings_per_org_and_room(api: Api) {
    let (_, key) = api.org("aic").await;
    let (_, other) = api.org("aic-other").await;
    api.send("POST", "/v1/rooms", &key, Some(json!({ "name": "stage" }))).await;
    let r = api.send("GET", "/v1/aic/config", &key, None).await;
    assert_eq!((r.body["source"].as_str(), r.body["config"]["mode"].as_str()), (Some("default"), Some("ADAPTIVE")));
    assert_eq!(r.body["config"]["target_ratio"], 0.2);
    // The org's default: a new mode brings its own size target.
    let r = api.send("PUT", "/v1/aic/config", &key, Some(json!({ "mode": "CONSERVATIVE" }))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!((r.body["source"].as_str(), r.body["config"]["target_ratio"].as_f64()), (Some("org"), Some(0.5)));
    assert_eq!(r.body["config"]["model_type"], "aic-v2", "the default model");
    for bad in [
        json!({ "mode": "turbo" }),
        json!({ "max_latency_ms": 0 }),
        json!({ "min_quality": 9 }),
        json!({ "model_type": "gpt" }),
        json!({ "colour": "red" }),
    ] {
        let r = api.send("PUT", "/v1/aic/config", &key, Some(bad.clone())).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"), "{bad}");
    }
    // A room runs with the org's default until it has its own.
    let r = api.send("GET", "/v1/rooms/stage/aic", &key, None).await;
    assert_eq!((r.body["source"].as_str(), r.body["config"]["mode"].as_str()), (Some("org"), Some("CONSERVATIVE")));
    let change = json!({ "mode": "aggressive", "max_latency_ms": 15, "model_type": "aic-v1", "loopback": true });
    let r = api.send("PUT", "/v1/rooms/stage/aic", &key, Some(change)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let want = json!({ "mode": "AGGRESSIVE", "target_ratio": 0.1, "max_latency_ms": 15, "model_type": "aic-v1", "use_gpu": false, "min_quality": 2.0, "enabled": false, "loopback": true });
    assert_eq!(r.body["config"], want);
    let r = api.send("GET", "/v1/rooms/stage/aic", &key, None).await;
    assert_eq!((r.body["source"].as_str(), &r.body["config"]), (Some("room"), &want));
    // Other orgs see neither the room nor the settings.
    assert_eq!(api.send("GET", "/v1/rooms/stage/aic", &other, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.send("PUT", "/v1/rooms/stage/aic", &other, Some(json!({}))).await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.send("GET", "/v1/aic/config", &other, None).await.body["source"], "default");
    let r = api.send("GET", "/v1/rooms/stage/aic/metrics", &key, None).await;
    assert_eq!((r.status, &r.body), (StatusCode::OK, &json!({ "tracks": [], "ended": [] })), "nobody publishes yet");
    assert_eq!(api.send("GET", "/v1/rooms/stage/aic/metrics", &other, None).await.status, StatusCode::NOT_FOUND);
    // Without its override the room is back on the org's default.
    assert_eq!(api.send("DELETE", "/v1/rooms/stage/aic", &key, None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(api.send("GET", "/v1/rooms/stage/aic", &key, None).await.body["source"], "org");
    assert_eq!(api.send("DELETE", "/v1/rooms/stage/aic", &key, None).await.status, StatusCode::NOT_FOUND);
    let audit = api.send("GET", "/v1/audit", &key, None).await.body.to_string();
    assert!(audit.contains("aic.update") && audit.contains("aic.delete"));

    api.finish().await;
}

async fn revoked_tokens_are_refused_and_disconnect(api: Api) {
    let (_, key) = api.org("revoke").await;
    let (_, other) = api.org("revoke-other").await;
    api.send("POST", "/v1/rooms", &key, Some(json!({ "name": "stage" }))).await;
    let r = api.send("POST", "/v1/tokens", &key, Some(json!({ "room": "stage", "identity": "pat" }))).await;
    let (jwt, jti) = (r.body["token"].as_str().unwrap().to_string(), r.body["jti"].as_str().unwrap().to_string());
    // Pat joins over WHIP with the token: a session in the org's room.
    assert_eq!(whip_join(&api, "stage", &jwt).await.status, StatusCode::CREATED);
    let live = api.send("GET", "/v1/rooms/stage/participants", &key, None).await;
    assert_eq!(live.body["participants"].as_array().unwrap().len(), 1, "{:?}", live.body);
    // Another org cannot revoke it; the minting org can, and pat is disconnected.
    let r = api.send("POST", &format!("/v1/tokens/{jti}/revoke"), &other, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api.send("POST", &format!("/v1/tokens/{jti}/revoke"), &key, None).await;
    assert_eq!((r.status, r.body["disconnected"].as_u64()), (StatusCode::OK, Some(1)), "{:?}", r.body);
    let live = api.send("GET", "/v1/rooms/stage/participants", &key, None).await;
    assert_eq!(live.body["participants"], json!([]));
    // The token no longer joins, by WHIP or by the LiveKit signal path.
    let r = whip_join(&api, "stage", &jwt).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "token_revoked"));
    let r = api.send("GET", &format!("/rtc/validate?access_token={jwt}"), "", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    api.finish().await;
}

/// Mints a key with `by`; returns `(id, key)`.
async fn mint_key(api: &Api, by: &str, name: &str) -> (String, String) {
    let r = api.send("POST", "/v1/api-keys", by, Some(json!({ "name": name }))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    (r.body["id"].as_str().unwrap().into(), r.body["key"].as_str().unwrap().into())
}

async fn minted_keys_go_with_their_minter(api: Api) {
    let created = api.org_created("lineage").await;
    let owner = created["api_key"]["key"].as_str().unwrap().to_string();
    let owner_user = created["owner"]["id"].as_str().unwrap().to_string();
    let (k1_id, k1) = mint_key(&api, &owner, "k1").await;
    let (_, k2) = mint_key(&api, &k1, "k2").await;
    let (_, k3) = mint_key(&api, &k2, "k3").await;
    let (side_id, side) = mint_key(&api, &owner, "side").await;
    let status = |key: String| {
        let api = &api;
        async move {
            let r = api.send("GET", "/v1/rooms", &key, None).await;
            (r.status, r.code().to_string())
        }
    };
    let revoked = (StatusCode::UNAUTHORIZED, "key_revoked".to_string());
    assert_eq!(status(k3.clone()).await.0, StatusCode::OK);
    // Revoking k1 revokes what it minted, and what that minted.
    let r = api.send("DELETE", &format!("/v1/api-keys/{k1_id}"), &owner, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    for key in [&k1, &k2, &k3] {
        assert_eq!(status(key.clone()).await, revoked);
    }
    assert_eq!(status(side.clone()).await.0, StatusCode::OK, "a sibling line stays");
    let listed = api.send("GET", "/v1/api-keys", &owner, None).await;
    let mut live: Vec<&str> = listed.body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["revoked_at"].is_null())
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    live.sort();
    assert_eq!(live, ["owner key", "side"]);
    let audit = api.send("GET", "/v1/audit", &owner, None).await;
    let entry = audit.body["entries"].as_array().unwrap().iter().find(|e| e["action"] == "api_key.revoke").cloned();
    assert_eq!(entry.unwrap()["after"]["revoked"].as_array().map(Vec::len), Some(3));
    // Removing the owner (another owner stays) revokes the owner's key and its whole line,
    // the caller's own key included.
    let r = api.send("POST", "/v1/users", &owner, Some(json!({ "email": "co@lineage.test", "role": "owner" }))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = api.send("DELETE", &format!("/v1/users/{owner_user}"), &side, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    assert_eq!(status(owner.clone()).await, revoked);
    assert_eq!(status(side.clone()).await, revoked, "{side_id} was minted by the removed user's key");
    api.finish().await;
}

/// A key that mints while it is being revoked: either the mint is refused or the new key is
/// revoked with its minter, whichever commits first, on both databases.
async fn a_mint_racing_its_minters_revocation_leaves_no_live_key(api: Api) {
    let (_, owner) = api.org("race").await;
    let mut minted = 0;
    for round in 0..12 {
        let (minter_id, minter) = mint_key(&api, &owner, &format!("minter {round}")).await;
        let body = json!({ "name": format!("child {round}") });
        let path = format!("/v1/api-keys/{minter_id}");
        let (mint, revoke) = tokio::join!(
            api.send("POST", "/v1/api-keys", &minter, Some(body)),
            api.send("DELETE", &path, &owner, None),
        );
        assert_eq!(revoke.status, StatusCode::NO_CONTENT, "{:?}", revoke.body);
        match mint.status {
            StatusCode::CREATED => {
                minted += 1;
                let child = mint.body["key"].as_str().unwrap();
                let r = api.send("GET", "/v1/rooms", child, None).await;
                assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "key_revoked"), "round {round}");
            }
            _ => assert_eq!((mint.status, mint.code()), (StatusCode::UNAUTHORIZED, "key_revoked"), "round {round}"),
        }
    }
    eprintln!("{minted} of 12 mints committed before their minter's revocation");
    api.finish().await;
}

/// A RoomService call with a token carrying `grant` for `room`, signed with the org's key.
async fn room_service(
    api: &Api,
    org: &serde_json::Value,
    method: &str,
    grant: fn(&mut token::VideoGrant),
    room: &str,
    body: serde_json::Value,
) -> support::Reply {
    let mut claims = token::join_claims(org["livekit_key"]["api_key"].as_str().unwrap(), room, "", api.now_secs(), 600);
    claims.video.room_join = false;
    grant(&mut claims.video);
    let jwt = token::mint(&claims, org["livekit_key"]["api_secret"].as_str().unwrap());
    let req = axum::http::Request::builder()
        .method("POST")
        .uri(format!("/twirp/livekit.RoomService/{method}"))
        .header("authorization", format!("Bearer {jwt}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    api.raw(req).await
}

fn create(v: &mut token::VideoGrant) {
    v.room_create = true;
}

fn admin(v: &mut token::VideoGrant) {
    v.room_admin = true;
}

async fn room_service_keeps_the_control_apis_limits(api: Api) {
    let org = api.org_created("svc-limits").await;
    let key = org["api_key"]["key"].as_str().unwrap();
    let huge = "m".repeat(64 * 1024 + 1);
    let r = room_service(&api, &org, "CreateRoom", create, "", json!({ "name": "big", "metadata": huge })).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_argument")),
        "{:?}",
        r.body
    );
    let r = room_service(&api, &org, "CreateRoom", create, "", json!({ "name": "big", "metadata": "small" })).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r =
        room_service(&api, &org, "UpdateRoomMetadata", admin, "big", json!({ "room": "big", "metadata": huge })).await;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_argument")));
    let rooms = api.send("GET", "/v1/rooms", key, None).await;
    assert_eq!(rooms.body["rooms"][0]["metadata"], "small", "{:?}", rooms.body);
    // ListRooms counts rooms as LiveKit does: a created room waits for its first participant
    // for the empty timeout (300 s here), then is gone from it; its record stays in /v1/rooms.
    let list = |v: &mut token::VideoGrant| v.room_list = true;
    // (An empty list is left out of the JSON, as protobuf's JSON mapping does.)
    let listed = |r: support::Reply| {
        let rooms = r.body["rooms"].as_array().cloned().unwrap_or_default();
        rooms.iter().map(|r| r["name"].as_str().unwrap_or_default().to_string()).collect::<Vec<_>>()
    };
    let r = room_service(&api, &org, "ListRooms", list, "", json!({})).await;
    assert_eq!(listed(r), ["big"]);
    // A metadata change while it waits does not make it wait longer.
    api.advance_ms(200_000);
    let r = room_service(&api, &org, "UpdateRoomMetadata", admin, "big", json!({ "room": "big", "metadata": "newer" }))
        .await;
    assert_eq!((r.status, r.body["metadata"].as_str()), (StatusCode::OK, Some("newer")), "{:?}", r.body);
    api.advance_ms(101_000);
    let r = room_service(&api, &org, "ListRooms", list, "", json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(listed(r), Vec::<String>::new());
    assert_eq!(api.send("GET", "/v1/rooms/big", key, None).await.status, StatusCode::OK);
    // Gone as LiveKit counts rooms, it has no metadata to change (and changing it would not
    // ask for the room again).
    let r = room_service(&api, &org, "UpdateRoomMetadata", admin, "big", json!({ "room": "big", "metadata": "newer" }))
        .await;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{:?}", r.body);
    assert_eq!(listed(room_service(&api, &org, "ListRooms", list, "", json!({})).await), Vec::<String>::new());
    // Created again, it waits again.
    let r = room_service(&api, &org, "CreateRoom", create, "", json!({ "name": "big" })).await;
    assert_eq!((r.status, r.body["metadata"].as_str()), (StatusCode::OK, Some("newer")), "{:?}", r.body);
    assert_eq!(listed(room_service(&api, &org, "ListRooms", list, "", json!({})).await), ["big"]);
    // LiveKit Cloud's participant moves are refused by name.
    let r =
        room_service(&api, &org, "MoveParticipant", admin, "big", json!({ "room": "big", "identity": "ann" })).await;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::NOT_IMPLEMENTED, Some("unimplemented")));
    // Participants are described within the signal path's limits.
    let attributes: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    for update in [
        json!({ "room": "big", "identity": "ann", "name": "n".repeat(257) }),
        json!({ "room": "big", "identity": "ann", "metadata": huge }),
        json!({ "room": "big", "identity": "ann", "attributes": attributes }),
    ] {
        let r = room_service(&api, &org, "UpdateParticipant", admin, "big", update).await;
        assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_argument")));
    }
    // Within them, the participant is looked for (and is not there).
    let r = room_service(
        &api,
        &org,
        "UpdateParticipant",
        admin,
        "big",
        json!({ "room": "big", "identity": "ann", "name": "Ann" }),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // A revoked token is refused here as at a join.
    let mut claims = token::join_claims(org["livekit_key"]["api_key"].as_str().unwrap(), "", "", api.now_secs(), 600);
    claims.video.room_join = false;
    claims.video.room_list = true;
    claims.jti = Some(auralink::ids::record_id("tok", 0));
    let jwt = token::mint(&claims, org["livekit_key"]["api_secret"].as_str().unwrap());
    let list = || {
        axum::http::Request::builder()
            .method("POST")
            .uri("/twirp/livekit.RoomService/ListRooms")
            .header("authorization", format!("Bearer {jwt}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from("{}"))
            .unwrap()
    };
    assert_eq!(api.raw(list()).await.status, StatusCode::OK);
    let now = auralink::wall::Clock::system().now_ms();
    let revocations = &api.server.state().livekit.tokens.revocations;
    revocations.revoke(claims.jti.as_deref().unwrap(), now + 600_000, now).await.unwrap();
    let r = api.raw(list()).await;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthenticated")));
    api.finish().await;
}

/// RoomService spends the calling key's budget as the control API does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_service_is_rate_limited() {
    let tweak = |c: &mut auralink::config::Config| {
        c.rate_limit_per_minute = 60;
        c.rate_limit_burst = 2;
    };
    let api = Api::start_with(Backend::Sqlite, "svc-ratelimit", tweak).await.unwrap();
    let org = api.org_created("svc-limited").await;
    let list = |v: &mut token::VideoGrant| v.room_list = true;
    for _ in 0..2 {
        assert_eq!(room_service(&api, &org, "ListRooms", list, "", json!({})).await.status, StatusCode::OK);
    }
    let r = room_service(&api, &org, "ListRooms", list, "", json!({})).await;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("resource_exhausted")));
    assert_eq!(r.headers["retry-after"], "1");
    api.advance_ms(1000);
    assert_eq!(room_service(&api, &org, "ListRooms", list, "", json!({})).await.status, StatusCode::OK);
    api.finish().await;
}

/// A request from `ip`, as the socket would tell it.
fn from_ip(ip: &str, method: &str, path: &str, bearer: &str) -> axum::http::Request<axum::body::Body> {
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {bearer}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(if method == "POST" { "{}" } else { "" }))
        .unwrap();
    let addr: std::net::SocketAddr = format!("{ip}:40000").parse().unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo(addr));
    req
}

/// Failed authentications spend their address's budget; past it the address is told 429
/// before any key it sends is looked at, and other addresses are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_rate_limited_per_address() {
    let tweak = |c: &mut auralink::config::Config| {
        c.auth_failures_per_minute = 60;
        c.auth_failure_burst = 3;
    };
    let api = Api::start_with(Backend::Sqlite, "authfail", tweak).await.unwrap();
    let (_, key) = api.org("authfail").await;
    // The right prefix with a wrong secret: the case that reaches the database.
    let wrong = format!("{}{}", &key[..key.len() - 1], if key.ends_with('x') { 'y' } else { 'x' });
    for _ in 0..3 {
        let r = api.raw(from_ip("198.51.100.7", "GET", "/v1/rooms", &wrong)).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_key"));
    }
    let r = api.raw(from_ip("198.51.100.7", "GET", "/v1/rooms", &wrong)).await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert_eq!(r.headers["retry-after"], "1");
    let r = api.raw(from_ip("198.51.100.7", "GET", "/v1/rooms", &key)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "the address is refused, whatever it sends");
    let r = api.raw(from_ip("198.51.100.7", "POST", "/twirp/livekit.RoomService/ListRooms", "not-a-token")).await;
    assert_eq!((r.status, r.body["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("resource_exhausted")));
    let r = api.raw(from_ip("203.0.113.9", "GET", "/v1/rooms", &wrong)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "another address has its own budget");
    api.advance_ms(1000);
    assert_eq!(api.raw(from_ip("198.51.100.7", "GET", "/v1/rooms", &key)).await.status, StatusCode::OK);
    // RoomService failures count too.
    for _ in 0..3 {
        let r = api.raw(from_ip("192.0.2.1", "POST", "/twirp/livekit.RoomService/ListRooms", "not-a-token")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = api.raw(from_ip("192.0.2.1", "GET", "/v1/rooms", &key)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // Attempts sent all at once get no more than the budget between them.
    let parallel = (0..24).map(|_| api.raw(from_ip("192.0.2.77", "GET", "/v1/rooms", &wrong)));
    let mut statuses: Vec<u16> =
        futures_util::future::join_all(parallel).await.iter().map(|r| r.status.as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [[401; 3].as_slice(), &[429; 21]].concat());
    let metrics = api.send("GET", "/metrics", "", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    api.finish().await;
}

/// Looking a key up takes no write lock: with another connection holding SQLite's, a wrong
/// secret is answered at once (it used to wait out the busy timeout and fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lookups_do_not_wait_for_the_write_lock() {
    use sqlx::{Connection, Executor};
    let api = Api::start(Backend::Sqlite, "readlock").await.unwrap();
    let (_, key) = api.org("readlock").await;
    let wrong = format!("{}{}", &key[..key.len() - 1], if key.ends_with('x') { 'y' } else { 'x' });
    let url = format!("sqlite://{}", api.config.data_dir.join("auralink.db").display());
    let mut writer = sqlx::SqliteConnection::connect(&url).await.unwrap();
    writer.execute("BEGIN IMMEDIATE").await.unwrap();
    let started = std::time::Instant::now();
    let r = api.send("GET", "/v1/rooms", &wrong, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_key"));
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "waited {:?}", started.elapsed());
    writer.execute("ROLLBACK").await.unwrap();
    api.finish().await;
}

async fn deleted_rooms_tokens_stop_joining(api: Api) {
    let org = api.org_created("deleted-rooms").await;
    let key = org["api_key"]["key"].as_str().unwrap();
    let (lk_key, lk_secret) =
        (org["livekit_key"]["api_key"].as_str().unwrap(), org["livekit_key"]["api_secret"].as_str().unwrap());
    api.send("POST", "/v1/rooms", key, Some(json!({ "name": "stage" }))).await;
    let mint = |identity: &str| {
        let api = &api;
        let identity = identity.to_string();
        async move {
            let r = api.send("POST", "/v1/tokens", key, Some(json!({ "room": "stage", "identity": identity }))).await;
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
            r.body["token"].as_str().unwrap().to_string()
        }
    };
    let before = mint("pat").await;
    // As LiveKit's server SDK mints them: `nbf: 0`, no `iat`.
    let mut sdk = token::join_claims(lk_key, "stage", "sam", api.now_secs(), 600);
    sdk.nbf = Some(0);
    let sdk = token::mint(&sdk, lk_secret);
    let validate = |jwt: &str| {
        let api = &api;
        let path = format!("/rtc/validate?access_token={jwt}");
        async move { api.send("GET", &path, "", None).await.status }
    };
    assert_eq!(whip_join(&api, "stage", &before).await.status, StatusCode::CREATED);
    assert_eq!(validate(&sdk).await, StatusCode::OK);
    // Call history records the room's start off the media path; deleted before it does, the
    // room would be recorded again by it.
    let recorded = |b: &serde_json::Value| b["calls"].as_array().is_some_and(|c| !c.is_empty());
    eventually(&api, key, "/v1/calls?room=stage", recorded).await;
    let r = api.send("DELETE", "/v1/rooms/stage", key, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // Its tokens no longer join: the deletion is not undone by the next join.
    let r = whip_join(&api, "stage", &before).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "token_room_deleted"), "{:?}", r.body);
    assert_eq!(validate(&sdk).await, StatusCode::UNAUTHORIZED);
    assert_eq!(api.send("GET", "/v1/rooms/stage", key, None).await.status, StatusCode::NOT_FOUND);
    // Created again, the room takes tokens issued from now on; the old ones stay refused.
    api.advance_ms(1000);
    let r = api.send("POST", "/v1/rooms", key, Some(json!({ "name": "stage" }))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let after = mint("pat").await;
    assert_eq!(whip_join(&api, "stage", &after).await.status, StatusCode::CREATED);
    assert_eq!(whip_join(&api, "stage", &before).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(validate(&sdk).await, StatusCode::OK, "undated tokens join a room created again");
    // RoomService's DeleteRoom revokes them as well.
    let r = room_service(&api, &org, "DeleteRoom", create, "", json!({ "room": "stage" })).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = whip_join(&api, "stage", &after).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "token_room_deleted"));
    assert_eq!(validate(&sdk).await, StatusCode::UNAUTHORIZED);
    // And CreateRoom makes it joinable again for tokens issued after.
    api.advance_ms(1000);
    let r = room_service(&api, &org, "CreateRoom", create, "", json!({ "name": "stage" })).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(whip_join(&api, "stage", &mint("kim").await).await.status, StatusCode::CREATED);
    api.finish().await;
}

async fn audit_keeps_user_agents_short(api: Api) {
    let (_, key) = api.org("ua").await;
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/v1/rooms")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("user-agent", "x".repeat(60_000))
        .body(axum::body::Body::from(r#"{"name":"ua-room"}"#))
        .unwrap();
    assert_eq!(api.raw(req).await.status, StatusCode::CREATED);
    let audit = api.send("GET", "/v1/audit", &key, None).await;
    let entry = audit.body["entries"].as_array().unwrap().iter().find(|e| e["action"] == "room.create").cloned();
    let ua = entry.unwrap()["user_agent"].as_str().unwrap().to_string();
    assert_eq!(ua, "x".repeat(256));
    api.finish().await;
}

/// Migration 7 on a database with keys from before it: each key learns the key that minted
/// it, and keys minted (directly or not) by a key revoked earlier are revoked with it.
async fn key_lineage_migration(dialect: &str, url: &str, hash: &str) {
    use sqlx::{Connection, Executor};
    let dir = std::env::temp_dir().join(format!("auralink-mig-{dialect}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(dialect);
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap() < "20261207" {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let before = sqlx::migrate::Migrator::new(dir.as_path()).await.unwrap();
    let keys = [
        ("key_root", "admin:admin", "500"),
        ("key_child", "api_key:key_root", "NULL"),
        ("key_grand", "api_key:key_child", "NULL"),
        ("key_live", "admin:admin", "NULL"),
        ("key_other", "api_key:key_live", "NULL"),
    ];
    let mut sql = String::from("INSERT INTO orgs (id, name, created_at, updated_at) VALUES ('org_m', 'm', 1, 1);");
    for (i, (id, by, revoked)) in keys.iter().enumerate() {
        sql += &format!(
            "INSERT INTO api_keys (id, org_id, name, prefix, secret_hash, role, scopes, created_by, created_at, \
             revoked_at) VALUES ('{id}', 'org_m', '{id}', 'prefix{i}', {hash}, 'admin', '[\"*\"]', '{by}', 1, {revoked});"
        );
    }
    if dialect == "sqlite" {
        let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
        let mut conn = sqlx::SqliteConnection::connect_with(&opts.create_if_missing(true)).await.unwrap();
        before.run(&mut conn).await.unwrap();
        conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql))).await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        before.run(&mut conn).await.unwrap();
        conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql))).await.unwrap();
    }
    auralink::db::Db::migrate(url).await.unwrap();
    let db = auralink::db::Db::open(url).await.unwrap();
    #[derive(sqlx::FromRow)]
    struct Row {
        id: String,
        created_by_key: Option<String>,
        revoked_at: Option<i64>,
        revoked_by: Option<String>,
    }
    let mut tx = db.begin("org_m").await.unwrap();
    let sql = "SELECT id, created_by_key, revoked_at, revoked_by FROM api_keys WHERE org_id = $1 ORDER BY id";
    let rows: Vec<Row> = tx.fetch_all(sql, auralink::args!["org_m"]).await.unwrap();
    tx.commit().await.unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.id.as_str(), r.created_by_key.as_deref(), r.revoked_at, r.revoked_by.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("key_child", Some("key_root"), Some(500), Some("system:migration")),
            ("key_grand", Some("key_child"), Some(500), Some("system:migration")),
            ("key_live", None, None, None),
            ("key_other", Some("key_live"), None, None),
            ("key_root", None, Some(500), None),
        ]
    );
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lineage_migration_sqlite() {
    let file = std::env::temp_dir().join(format!("auralink-mig-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&file);
    key_lineage_migration("sqlite", &format!("sqlite://{}", file.display()), "zeroblob(32)").await;
    let _ = std::fs::remove_file(&file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_lineage_migration_postgres() {
    let Some(base) = support::pg_url() else {
        eprintln!("AURALINK_TEST_PG not set: Postgres run skipped");
        return;
    };
    let (name, url) = support::fresh_pg_database(&base).await;
    key_lineage_migration("postgres", &url, "decode(repeat('00', 32), 'hex')").await;
    support::drop_pg_database(&name).await;
}
