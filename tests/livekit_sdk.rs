//! The unmodified `livekit-client` SDK (npm) in headless Chromium joins AuraLink rooms:
//! tests/livekit/rooms.mjs does the talking; this starts the server and judges the exit.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use auralink::config::Config;

const SECRET: &str = "livekit-sdk-test-secret-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_client_sdk_rooms() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/livekit");
    assert!(
        dir.join("node_modules/livekit-client").exists() && Path::new("/usr/lib/chromium/chromium").exists(),
        "chromium or tests/livekit/node_modules is missing: run ./test.sh, which installs them"
    );
    let mut config = Config::loopback(std::env::temp_dir().join(format!("auralink-lk-{}", std::process::id())));
    config.keys = [("APIlk".to_string(), SECRET.to_string())].into_iter().collect();
    let server = auralink::server::start(config).await.unwrap();
    let url = format!("http://{}", server.http_addr);

    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("rooms.mjs"))
        .args([&url, "APIlk", SECRET])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed");
    let status = tokio::time::timeout(Duration::from_secs(180), child.wait())
        .await
        .expect("the browser test finishes within 180 s")
        .unwrap();
    assert!(status.success(), "tests/livekit/rooms.mjs failed (its output is above)");
    server.shutdown().await;
}
