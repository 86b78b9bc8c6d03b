//! LiveKit's Python SDK (`livekit` from PyPI, pinned in tests/livekit_py/requirements.txt),
//! whose core is LiveKit's Rust SDK as in Unity, Node's `@livekit/rtc-node` and the agents
//! framework, joins AuraLink rooms unmodified: tests/livekit_py/rooms.py does the talking, over
//! `/rtc/v1` (one peer connection) and `/rtc` (two); this starts the server and mints tokens.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use auralink::config::Config;
use auralink::signal::token;
use serde_json::json;

const PARTICIPANTS: usize = 8;

async fn room_of_eight(single_pc: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("tests/livekit_py/.venv/bin/python");
    assert!(python.exists(), "tests/livekit_py/.venv is missing: run ./test.sh, which installs it");
    let dir = std::env::temp_dir().join(format!("auralink-lkpy-{}-{single_pc}", std::process::id()));
    let server = auralink::server::start(Config::loopback(dir)).await.unwrap();
    let (key, secret) = server.dev_keys.clone().expect("dev mode");
    let room = if single_pc { "python-v1" } else { "python-v0" };
    let now = auralink::wall::unix_secs();
    let tokens: Vec<(String, String)> = (0..PARTICIPANTS)
        .map(|i| {
            let identity = format!("py{i}");
            (identity.clone(), token::mint(&token::join_claims(&key, room, &identity, now, 600), &secret))
        })
        .collect();
    // Two more, in a room of their own, for end-to-end encryption.
    let e2ee_room = format!("{room}-e2ee");
    let e2ee_tokens: Vec<(String, String)> = ["e2ee-a", "e2ee-b"]
        .into_iter()
        .map(|identity| {
            (identity.to_string(), token::mint(&token::join_claims(&key, &e2ee_room, identity, now, 600), &secret))
        })
        .collect();
    let mut admin = token::join_claims(&key, room, "", now, 600);
    (admin.video.room_join, admin.video.room_admin) = (false, true);
    (admin.video.room_create, admin.video.room_list) = (true, true);
    let config = json!({
        "url": format!("ws://{}", server.http_addr),
        "http": format!("http://{}", server.http_addr),
        "room": room,
        "tokens": tokens,
        "e2ee_tokens": e2ee_tokens,
        "admin": token::mint(&admin, &secret),
        "single_pc": single_pc,
    });
    let mut child = tokio::process::Command::new(python)
        .arg(root.join("tests/livekit_py/rooms.py"))
        .arg(config.to_string())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let status = tokio::time::timeout(Duration::from_secs(240), child.wait())
        .await
        .expect("the Python SDK test finishes within 240 s")
        .unwrap();
    assert!(status.success(), "tests/livekit_py/rooms.py failed (its output is above)");
    server.shutdown().await;
}

/// Both signal paths, one after the other: sixteen SDK clients at once would be more than the
/// test machine's two cores carry in real time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_rooms_of_eight() {
    room_of_eight(true).await;
    room_of_eight(false).await;
}
