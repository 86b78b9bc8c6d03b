//! schemathesis (PyPI, pinned in tests/schemathesis/requirements.txt, installed by
//! ./test.sh) generates requests from `/v1/openapi.json` against a real server: no input
//! may produce a server error, and responses must match the document.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use auralink::config::Config;

const ADMIN: &str = "schemathesis-admin-key-0123456789abcdef";

#[path = "support/api.rs"]
mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_fuzzing_finds_no_server_errors_on_sqlite() {
    fuzz(None, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_fuzzing_finds_no_server_errors_on_postgres() {
    let Some(base) = support::pg_url() else {
        eprintln!("AURALINK_TEST_PG not set: skipped");
        return;
    };
    let (name, url) = support::fresh_pg_database(&base).await;
    fuzz(Some(url), "postgres").await;
    support::drop_pg_database(&name).await;
}

async fn fuzz(database_url: Option<String>, tag: &str) {
    let st = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/.venv/bin/st");
    assert!(st.exists(), "schemathesis is missing: run ./test.sh, which installs it");
    let dir = std::env::temp_dir().join(format!("auralink-st-{tag}-{}", std::process::id()));
    let mut config = Config::loopback(dir);
    config.database_url = database_url;
    config.admin_key = Some(ADMIN.into());
    // The fuzzer is one caller sending many requests: rate limiting is tested elsewhere.
    config.rate_limit_per_minute = 1_000_000;
    config.rate_limit_burst = 100_000;
    // It also sends requests without or with made-up keys, all from one address.
    config.auth_failures_per_minute = 1_000_000;
    config.auth_failure_burst = 100_000;
    let server = auralink::server::start(config).await.unwrap();
    let base = format!("http://{}", server.http_addr);
    let http = reqwest::Client::new();
    let org: serde_json::Value = http
        .post(format!("{base}/v1/orgs"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({ "name": "fuzz", "owner_email": "fuzz@example.com" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = org["api_key"]["key"].as_str().unwrap();
    let room = http.post(format!("{base}/v1/rooms")).bearer_auth(key).json(&serde_json::json!({ "name": "fuzz-room" }));
    assert_eq!(room.send().await.unwrap().status(), 201);

    let mut child = tokio::process::Command::new(&st)
        .args(["run", &format!("{base}/v1/openapi.json"), "--url", &base])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--max-examples", "25", "--seed", "1", "--workers", "1", "--no-color"])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        // Revoking keys would revoke the one the fuzzer calls with (tests/api.rs covers it).
        .args(["--exclude-name", "DELETE /v1/api-keys/{id}"])
        // It keeps a cache of what it found in its working directory; not in the repository.
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(300), child.wait())
        .await
        .expect("schemathesis finishes within 300 s")
        .unwrap();
    assert!(status.success(), "schemathesis found failures (its report is above)");
    server.db.close().await;
    server.shutdown().await;
}
