//! The unmodified `livekit-client` SDK (npm) in headless Chromium joins AuraLink rooms:
//! tests/livekit/rooms.mjs does the talking; this starts the server and judges the exit.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use auralink::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_client_sdk_rooms() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/livekit");
    assert!(
        dir.join("node_modules/livekit-client").exists() && Path::new("/usr/lib/chromium/chromium").exists(),
        "chromium or tests/livekit/node_modules is missing: run ./test.sh, which installs them"
    );
    // Dev mode, so the WHIP/WHEP demo page (mixed-room check) mints its own tokens; the SDK
    // side signs with the same generated pair through livekit-server-sdk.
    let mut config = Config::loopback(std::env::temp_dir().join(format!("auralink-lk-{}", std::process::id())));
    // rooms.mjs listens here and checks every webhook with livekit-server-sdk's WebhookReceiver.
    let hook_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    config.webhook_urls = vec![format!("http://127.0.0.1:{hook_port}/hooks")];
    let server = auralink::server::start(config).await.unwrap();
    let url = format!("http://{}", server.http_addr);
    let (key, secret) = server.dev_keys.clone().expect("dev mode");

    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("rooms.mjs"))
        .args([&url, &key, &secret, &hook_port.to_string()])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node is installed");
    let status = tokio::time::timeout(Duration::from_secs(240), child.wait())
        .await
        .expect("the browser test finishes within 240 s")
        .unwrap();
    assert!(status.success(), "tests/livekit/rooms.mjs failed (its output is above)");
    server.shutdown().await;
}
