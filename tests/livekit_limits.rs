//! LiveKit signal sessions against a real server over WebSocket, as an abusive client would
//! drive them: what a session makes the server hold is bounded and goes with the session,
//! attributes do not pile up, hidden participants stay out of sight, and a room's
//! `max_participants` holds.

use std::time::Duration;

use auralink::config::Config;
use auralink::server::Server;
use auralink::signal::token::{self, Claims};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "APIlimits";
const SECRET: &str = "0123456789abcdef0123456789abcdef0123";

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn start(tag: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("auralink-lk-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = Config::loopback(dir);
    c.keys = [(KEY.to_string(), SECRET.to_string())].into_iter().collect();
    c.secret_key = Some(auralink::secrets::SecretBox::generate_key());
    auralink::server::start(c).await.unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn token_for(room: &str, identity: &str, grant: impl FnOnce(&mut Claims)) -> String {
    let mut claims = token::join_claims(KEY, room, identity, now(), 600);
    grant(&mut claims);
    token::mint(&claims, SECRET)
}

async fn connect(server: &Server, token: &str) -> Ws {
    let url = format!("ws://{}/rtc?access_token={token}", server.http_addr);
    tokio_tungstenite::connect_async(url).await.expect("websocket upgrade").0
}

async fn send(ws: &mut Ws, m: Req) {
    let bytes = proto::SignalRequest { message: Some(m) }.encode_to_vec();
    ws.send(Message::Binary(bytes.into())).await.unwrap();
}

/// The next signal message within `wait`; `None` when the server closed the connection or
/// said nothing.
async fn next(ws: &mut Ws, wait: Duration) -> Option<Resp> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return proto::SignalResponse::decode(&b[..]).unwrap().message,
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) | Err(_) => return None,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Reads until `want` picks a message, within five seconds.
async fn until<T>(ws: &mut Ws, mut want: impl FnMut(&Resp) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = next(ws, left).await.expect("the message came before the connection ended");
        if let Some(t) = want(&m) {
            return t;
        }
    }
}

async fn join(server: &Server, token: &str) -> (Ws, proto::JoinResponse) {
    let mut ws = connect(server, token).await;
    let join = until(&mut ws, |m| match m {
        Resp::Join(j) => Some(j.clone()),
        _ => None,
    })
    .await;
    (ws, join)
}

fn add_track(cid: &str, name: &str) -> Req {
    Req::AddTrack(proto::AddTrackRequest {
        cid: cid.into(),
        name: name.into(),
        r#type: proto::TrackType::Audio as i32,
        ..Default::default()
    })
}

/// Waits (bounded) until the registry holds no more than `want` (participants, tracks).
async fn registry_drains_to(server: &Server, want: (usize, usize)) {
    let registry = &server.state().livekit.registry;
    for _ in 0..100 {
        if registry.len() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("registry holds {:?}, expected {want:?}", registry.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_tracks_are_bounded_and_go_with_the_session() {
    let server = start("addtrack").await;
    for round in 0..3 {
        let (mut ws, _) = join(&server, &token_for("r", &format!("p{round}"), |_| {})).await;
        for i in 0..auralink::sfu::core::MAX_ANNOUNCED_TRACKS {
            send(&mut ws, add_track(&format!("c{i}"), &"n".repeat(256))).await;
            until(&mut ws, |m| matches!(m, Resp::TrackPublished(_)).then_some(())).await;
        }
        // The same track announced again is the same track, not one more.
        send(&mut ws, add_track("c0", "again")).await;
        until(&mut ws, |m| matches!(m, Resp::TrackPublished(_)).then_some(())).await;
        assert_eq!(server.state().livekit.registry.len().1, auralink::sfu::core::MAX_ANNOUNCED_TRACKS);
        match round {
            // One more unbound track, or a name past the limit, ends the session.
            0 => send(&mut ws, add_track("one-more", "x")).await,
            1 => send(&mut ws, add_track("c1", &"n".repeat(257))).await,
            _ => send(&mut ws, Req::Leave(proto::LeaveRequest::default())).await,
        }
        assert!(next(&mut ws, Duration::from_secs(5)).await.is_none(), "round {round}: the session ended");
        registry_drains_to(&server, (0, 0)).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_do_not_pile_up_across_updates() {
    let server = start("attrs").await;
    let (mut ws, _) = join(&server, &token_for("r", "ann", |c| c.video.can_update_own_metadata = true)).await;
    let update = |id: u32, prefix: &str| {
        Req::UpdateMetadata(proto::UpdateParticipantMetadata {
            request_id: id,
            attributes: (0..64).map(|i| (format!("{prefix}{i}"), "v".to_string())).collect(),
            ..Default::default()
        })
    };
    let reason = |id: u32| {
        move |m: &Resp| match m {
            Resp::RequestResponse(r) if r.request_id == id => Some(r.reason),
            _ => None,
        }
    };
    use proto::request_response::Reason;
    send(&mut ws, update(1, "a")).await;
    assert_eq!(until(&mut ws, reason(1)).await, Reason::Ok as i32);
    send(&mut ws, update(2, "b")).await;
    assert_eq!(until(&mut ws, reason(2)).await, Reason::LimitExceeded as i32, "64 more on top of 64");
    let p = server.state().livekit.registry.len().0;
    assert_eq!(p, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_participants_are_not_shown_to_others() {
    let server = start("hidden").await;
    let (mut alice, _) = join(&server, &token_for("r", "alice", |_| {})).await;
    let (rec, rec_join) = join(&server, &token_for("r", "rec", |c| c.video.hidden = true)).await;
    assert_eq!(rec_join.other_participants.iter().map(|p| p.identity.as_str()).collect::<Vec<_>>(), ["alice"]);
    let (mut bob, bob_join) = join(&server, &token_for("r", "bob", |_| {})).await;
    let others: Vec<&str> = bob_join.other_participants.iter().map(|p| p.identity.as_str()).collect();
    assert_eq!(others, ["alice"], "the hidden participant is not in the join response");
    assert_eq!(bob_join.room.unwrap().num_participants, 2);
    drop(rec);
    // Alice hears of bob (and of herself), and of nobody else, joined or gone.
    let mut heard = Vec::new();
    while let Some(m) = next(&mut alice, Duration::from_millis(1500)).await {
        if let Resp::Update(u) = m {
            heard.extend(u.participants.into_iter().map(|p| p.identity).filter(|i| i != "alice"));
        }
    }
    assert!(heard.iter().all(|i| i == "bob") && !heard.is_empty(), "alice heard of {heard:?}");
    while let Some(m) = next(&mut bob, Duration::from_millis(200)).await {
        if let Resp::Update(u) = m {
            assert!(u.participants.iter().all(|p| p.identity != "rec"), "bob heard of the hidden one");
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_holds_no_more_than_its_max_participants() {
    let server = start("full").await;
    let admin = token_for("", "admin", |c| c.video.room_create = true);
    let created = reqwest::Client::new()
        .post(format!("http://{}/twirp/livekit.RoomService/CreateRoom", server.http_addr))
        .bearer_auth(admin)
        .json(&serde_json::json!({ "name": "small", "max_participants": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200, "{}", created.text().await.unwrap());
    let (_alice, _) = join(&server, &token_for("small", "alice", |_| {})).await;
    let mut bob = connect(&server, &token_for("small", "bob", |_| {})).await;
    let refused = until(&mut bob, |m| match m {
        Resp::Leave(l) => Some(l.reason),
        Resp::Join(_) => panic!("bob joined a full room"),
        _ => None,
    })
    .await;
    assert_eq!(refused, proto::DisconnectReason::JoinFailure as i32);
    // Rejoining as alice replaces her; it is no new participant.
    let (_alice_again, join) = join(&server, &token_for("small", "alice", |_| {})).await;
    assert!(join.other_participants.is_empty());
    server.shutdown().await;
}
