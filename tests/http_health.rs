//! Health, readiness, metrics and the dev-mode token route over real HTTP.

use auralink::config::Config;

fn config(dir: &str, keys: &[(&str, &str)]) -> Config {
    let mut c = Config::loopback(std::env::temp_dir().join(format!("auralink-{dir}-{}", std::process::id())));
    c.keys = keys.iter().map(|(k, s)| (k.to_string(), s.to_string())).collect();
    // Configured keys: a production start, which must be given what dev mode would generate.
    c.dev = keys.is_empty();
    if !keys.is_empty() {
        c.secret_key = Some(auralink::secrets::SecretBox::generate_key());
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics_and_dev_tokens() {
    let server = auralink::server::start(config("health", &[])).await.unwrap();
    let base = format!("http://{}", server.http_addr);
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().text().await.unwrap(), "ok");
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("# TYPE auralink_sfu_frames_forwarded_total counter"));
    assert!(metrics.contains("\nauralink_ice_tcp_connections 0\n"));
    assert!(metrics.contains("\nauralink_rooms 0\n"));
    // The default build runs neural stages on the CPU, and says so.
    assert!(
        metrics.contains("\nauralink_compute_cuda_build 0\n")
            && metrics.contains("\nauralink_compute_gpu_available 0\n")
    );

    // Dev mode: a key pair was generated and /dev/token mints tokens it verifies.
    let (key, secret) = server.dev_keys.clone().expect("dev mode without keys");
    assert!(secret.len() >= auralink::config::MIN_SECRET_LEN);
    let r: serde_json::Value =
        http.get(format!("{base}/dev/token?room=r1&identity=ann")).send().await.unwrap().json().await.unwrap();
    let token = r["token"].as_str().unwrap();
    let verifier = auralink::signal::token::TokenVerifier::new([(key, secret)].into_iter().collect());
    let claims = verifier.verify_join(token, "r1", now()).unwrap();
    assert_eq!(claims.sub, "ann");
    let bad = http.get(format!("{base}/dev/token?room=a/b&identity=ann")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_room");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_keys_disable_dev_routes_and_short_secrets_refuse_to_start() {
    let server =
        auralink::server::start(config("keys", &[("APIk", "0123456789abcdef0123456789abcdef")])).await.unwrap();
    assert!(server.dev_keys.is_none());
    let base = format!("http://{}", server.http_addr);
    let r = reqwest::get(format!("{base}/dev/token?room=r&identity=i")).await.unwrap();
    assert_eq!(r.status(), 404);
    server.shutdown().await;

    let err = auralink::server::start(config("short", &[("APIk", "short")])).await.err().expect("refused");
    assert!(err.to_string().contains("at least 32"), "{err}");
    let mut no_secret_key = config("nosk", &[("APIk", "0123456789abcdef0123456789abcdef")]);
    no_secret_key.secret_key = None;
    let err = auralink::server::start(no_secret_key).await.err().expect("refused");
    assert!(err.to_string().contains("secret_key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_is_explicit_local_and_keeps_its_files_private() {
    use std::os::unix::fs::PermissionsExt;
    // Neither keys nor dev mode: refused, saying what to do, with nothing written.
    let mut c = config("nodev", &[]);
    c.dev = false;
    let dir = c.data_dir.clone();
    let _ = std::fs::remove_dir_all(&dir);
    let err = auralink::server::start(c).await.err().expect("refused");
    assert!(err.to_string().contains("--dev") && err.to_string().contains("keys"), "{err}");
    assert!(!dir.exists());

    // Dev mode with no address given binds loopback only; its secrets are the user's alone.
    let mut c = config("private", &[]);
    c.http.bind = None;
    let dir = c.data_dir.clone();
    let _ = std::fs::remove_dir_all(&dir);
    let server = auralink::server::start(c).await.unwrap();
    assert!(server.http_addr.ip().is_loopback(), "{}", server.http_addr);
    let mode = |name: &str| std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(""), 0o700);
    for file in ["dev-keys.toml", "dev-admin-key", "dev-secret-key", "auralink.db", "auralink.db-wal"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}
