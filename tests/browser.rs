//! The demo pages in real headless Chromium. `/whip`: two pages publish over WHIP, play each
//! other over WHEP, chat over data channels, and one leaves. `/` (livekit-client room app): two
//! pages see and hear each other, and one leaves; then, in an org's room with the AIC loopback
//! on, one hears the other after the codec with "Listen". The browser side is
//! `tests/browser/whip_whep.mjs` (playwright-core); this starts the server and runs it.
//! Prerequisites (Debian chromium, `npm ci` in tests/browser, the livekit-client bundle in
//! web/vendor) come from `./test.sh`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use auralink::config::Config;
use tokio::process::Command;

/// The whole browser run: launch, then per page ~30 s bound on media, chat, leave. Killed past
/// this (the script's own watchdog fires at 150 s).
const NODE_TIMEOUT: Duration = Duration::from_secs(240);
const ADMIN: &str = "browser-test-admin-key-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_publish_play_chat_and_leave() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Missing prerequisites fail loudly: a browser test that skips itself proves nothing.
    let chromium = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"].iter().any(|p| Path::new(p).exists());
    assert!(chromium, "Chromium is not installed (/usr/bin/chromium): run ./test.sh to install test prerequisites");
    assert!(
        root.join("tests/browser/node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run ./test.sh (it runs `npm ci` in tests/browser)"
    );
    let web_dir = root.join("web");
    assert!(
        web_dir.join("vendor/livekit-client.umd.js").is_file(),
        "web/vendor/livekit-client.umd.js is missing: run ./test.sh (it runs scripts/web-vendor.sh)"
    );

    // No keys: dev mode, so the page gets its tokens from /dev/token. The admin key lets the
    // script make an org for the AIC room.
    let data_dir = std::env::temp_dir().join(format!("auralink-browser-{}", std::process::id()));
    // Absolute, so the bundle is found whatever directory the test binary runs in.
    let config = Config { web_dir, admin_key: Some(ADMIN.into()), ..Config::loopback(&data_dir) };
    let server = auralink::server::start(config).await.expect("server starts");
    let base = format!("http://{}", server.http_addr);

    let child = Command::new("node")
        .arg("tests/browser/whip_whep.mjs")
        .arg(&base)
        .arg(ADMIN)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropping the child (on timeout) kills node; playwright's pipe closing ends Chromium.
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (install nodejs: ./test.sh)");
    let result = tokio::time::timeout(NODE_TIMEOUT, child.wait_with_output()).await;

    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);

    let output = result
        .unwrap_or_else(|_| panic!("browser test did not finish in {NODE_TIMEOUT:?}; node was killed"))
        .expect("waiting for node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("--- node stdout ---\n{stdout}--- node stderr ---\n{stderr}");
    assert!(output.status.success(), "browser test failed ({}):\n{stdout}{stderr}", output.status);
}
