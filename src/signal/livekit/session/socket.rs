//! A LiveKit session's connection to its client: the WebSocket loop that feeds the protocol
//! handling in `session.rs` what the client, the router and the room's notices say, parks the
//! session while its signal connection is down, and hands it a resuming connection.

use super::*;

/// What ends one signal connection of a session.
pub(super) enum End {
    /// The client left.
    Left,
    /// A resume brought a new signal connection while this one still looked alive.
    Resumed(Box<WebSocket>),
}

/// What a session listens to besides its WebSocket; they outlive any one connection.
pub(super) struct Feeds {
    events: broadcast::Receiver<SfuEvent>,
    notices: broadcast::Receiver<Notice>,
    resumes: mpsc::Receiver<WebSocket>,
}

/// The next thing a session has to react to.
pub(super) enum Input {
    Client(Option<Result<Message, axum::Error>>),
    Event(SfuEvent),
    Notice(Notice),
    /// Events or notices were lost (the session fell behind): catch up from the router.
    Resync,
    Resume(Box<WebSocket>),
    Deadline,
}

impl Feeds {
    /// Waits for the client (when connected), the router, a resume or `deadline`.
    pub(super) async fn next(
        &mut self,
        rx: Option<&mut Rx>,
        deadline: tokio::time::Instant,
    ) -> Result<Input, SessionError> {
        let mut rx = rx;
        let client = async {
            match rx.as_mut() {
                Some(rx) => rx.next().await,
                None => std::future::pending().await,
            }
        };
        Ok(tokio::select! {
            Some(socket) = self.resumes.recv() => Input::Resume(Box::new(socket)),
            n = self.notices.recv() => match n {
                Ok(n) => Input::Notice(n),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "signal session lagged behind room notices");
                    Input::Resync
                }
                // Held by the registry of notices for as long as anyone listens.
                Err(RecvError::Closed) => return Err(DriverGone.into()),
            },
            m = client => Input::Client(m),
            e = self.events.recv() => match e {
                Ok(e) => Input::Event(e),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "signal session lagged behind router events");
                    Input::Resync
                }
                Err(RecvError::Closed) => return Err(DriverGone.into()),
            },
            () = tokio::time::sleep_until(deadline) => Input::Deadline,
        })
    }
}

/// Serves a participant until it leaves, times out, misbehaves, or its signal connection
/// drops and does not come back within [`RESUME_WINDOW`]. A request with `reconnect=1`
/// hands its socket to the session it resumes instead.
pub async fn run(state: LiveKitState, claims: Claims, opts: Options, socket: WebSocket) {
    if opts.resume {
        let sid = opts.sid.as_deref().unwrap_or_default();
        // The session's room is the router's name, scoped to the org of the token's key.
        let org = state.tokens.org_of(&claims.iss).unwrap_or_default();
        let room = RoomName::new(claims.video.room.clone()).map(|r| RoomName::in_org(&org, &r).to_string());
        match state.sessions.hand_over(sid, &room.unwrap_or_default(), &claims.sub, socket) {
            Ok(()) => return,
            Err((e, socket)) => {
                tracing::info!(sid, error = %e, "livekit resume refused");
                let (mut tx, _) = socket.split();
                // Action RECONNECT: the SDK gives up resuming and joins from scratch.
                let mismatch = leave(proto::DisconnectReason::StateMismatch, Action::Reconnect);
                let _ = send(&mut tx, mismatch).await;
                let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: e.to_string().into() }))).await;
                return;
            }
        }
    }
    let (mut tx, rx) = socket.split();
    let events = state.sfu.subscribe();
    let mut session = match Session::join(state.clone(), &claims, &opts).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "livekit join refused");
            let _ = send(&mut tx, leave(proto::DisconnectReason::JoinFailure, Action::Disconnect)).await;
            let _ = tx.send(close(&e)).await;
            return;
        }
    };
    state.tokens.note_join(&claims, session.participant);
    let resumes = state.sessions.register(session.participant, session.room.clone(), session.identity.clone());
    // The join response is built after this, from the registry as it is then: nothing said
    // before is missed.
    let notices = state.notices.subscribe(&session.room);
    let mut feeds = Feeds { events, notices, resumes };
    session.serve_all(tx, rx, &mut feeds).await;
    state.sessions.remove(session.participant);
    session.finish().await;
}

pub(super) type Tx = futures_util::stream::SplitSink<WebSocket, Message>;
pub(super) type Rx = futures_util::stream::SplitStream<WebSocket>;

pub(super) async fn send(tx: &mut Tx, m: Resp) -> Result<(), SessionError> {
    let bytes = proto::SignalResponse { message: Some(m) }.encode_to_vec();
    tx.send(Message::Binary(bytes.into())).await.map_err(|e| SessionError::WebSocket(e.to_string()))
}

pub(super) async fn send_all(tx: &mut Tx, out: Vec<Resp>) -> Result<(), SessionError> {
    for m in out {
        send(tx, m).await?;
    }
    Ok(())
}

pub(super) fn close(e: &SessionError) -> Message {
    Message::Close(Some(CloseFrame { code: e.close_code(), reason: e.to_string().into() }))
}

impl Session {
    /// Serves the first signal connection and every one that resumes the session after it.
    pub(super) async fn serve_all(&mut self, mut tx: Tx, mut rx: Rx, feeds: &mut Feeds) {
        let mut greeted = async {
            let all = self.participants().await?;
            send(&mut tx, self.join_response(&all)).await?;
            // The SDK takes the answer to the offer it sent with the join after the response.
            if let Some(offer) = self.first_offer.take() {
                let answer = self.handle_request(Req::Offer(offer)).await?;
                send_all(&mut tx, answer).await?;
            }
            Ok(())
        }
        .await;
        loop {
            let end = match std::mem::replace(&mut greeted, Ok(())) {
                Err(e) => Err(e),
                Ok(()) => self.serve(&mut tx, &mut rx, feeds).await,
            };
            let socket = match end {
                Ok(End::Left) => {
                    let _ = tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "left".into() }))).await;
                    return;
                }
                Ok(End::Resumed(socket)) => {
                    let bye = CloseFrame { code: 1000, reason: "resumed on another connection".into() };
                    let _ = tx.send(Message::Close(Some(bye))).await;
                    *socket
                }
                Err(e) if e.resumable() => {
                    tracing::info!(participant = %self.participant, error = %e, "signal connection lost; waiting for a resume");
                    let _ = tx.send(close(&e)).await;
                    match self.park(feeds).await {
                        Some(socket) => socket,
                        None => return,
                    }
                }
                Err(e) => {
                    tracing::info!(participant = %self.participant, error = %e, "livekit session closed");
                    if let SessionError::Removed(reason) = e {
                        let why = match reason {
                            LeaveReason::DuplicateIdentity => proto::DisconnectReason::DuplicateIdentity,
                            LeaveReason::RoomDeleted => proto::DisconnectReason::RoomDeleted,
                            _ => proto::DisconnectReason::ParticipantRemoved,
                        };
                        let _ = send(&mut tx, leave(why, Action::Disconnect)).await;
                    }
                    let _ = tx.send(close(&e)).await;
                    return;
                }
            };
            (tx, rx) = socket.split();
            tracing::info!(participant = %self.participant, "livekit session resumed");
            greeted = self.resume(&mut tx).await;
        }
    }

    /// Serves one signal connection.
    pub(super) async fn serve(&mut self, tx: &mut Tx, rx: &mut Rx, feeds: &mut Feeds) -> Result<End, SessionError> {
        let timeout = Duration::from_secs(PING_TIMEOUT as u64);
        let mut deadline = tokio::time::Instant::now() + timeout;
        loop {
            let out = match feeds.next(Some(rx), deadline.min(self.refresh_at)).await? {
                Input::Resume(socket) => return Ok(End::Resumed(socket)),
                Input::Deadline if tokio::time::Instant::now() >= self.refresh_at => self.refresh_token(),
                Input::Deadline => return Err(SessionError::PingTimeout),
                Input::Client(m) => {
                    let bytes = match m {
                        Some(Ok(Message::Binary(b))) => b,
                        Some(Ok(Message::Text(_))) => return Err(SessionError::TextFrame),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        // Closed without a leave: the client may come back and resume.
                        Some(Ok(Message::Close(_))) | None => return Err(SessionError::Dropped),
                        // Oversized frames end up here, as do broken connections.
                        Some(Err(e)) => return Err(SessionError::WebSocket(e.to_string())),
                    };
                    deadline = tokio::time::Instant::now() + timeout;
                    let msg = super::super::decode_request(&bytes).ok_or(SessionError::Malformed)?;
                    if let Req::Leave(_) = msg {
                        return Ok(End::Left);
                    }
                    self.handle_request(msg).await?
                }
                Input::Notice(n) => self.handle_notice(n).await?,
                Input::Resync => self.resync().await?,
                Input::Event(e) => self.handle_event(e).await?,
            };
            send_all(tx, out).await?;
        }
    }

    /// Keeps up with the room while the signal connection is down, holding what the client
    /// will need; `None` when it does not resume in time or the participant is removed.
    pub(super) async fn park(&mut self, feeds: &mut Feeds) -> Option<WebSocket> {
        let deadline = tokio::time::Instant::now() + RESUME_WINDOW;
        loop {
            let out = match feeds.next(None, deadline).await.ok()? {
                Input::Resume(socket) => return Some(*socket),
                Input::Deadline | Input::Client(_) => return None,
                Input::Notice(n) => self.handle_notice(n).await.ok()?,
                Input::Resync => self.resync().await.ok()?,
                Input::Event(e) => self.handle_event(e).await.ok()?,
            };
            // Offers are not kept: the resume restarts ICE with an offer of everything.
            self.backlog.extend(out.into_iter().filter(|m| !matches!(m, Resp::Offer(_))));
            if self.backlog.len() > MAX_BACKLOG {
                tracing::info!(participant = %self.participant, "too much missed while disconnected; not resuming");
                return None;
            }
        }
    }

    /// Takes up a resumed signal connection. The SDK wants `reconnect` first; then come what
    /// it missed, the room as it is now, and a subscriber offer with fresh ICE credentials
    /// (the client may be on a new network; its publisher connection, the only one in single
    /// peer connection mode, restarts ICE itself).
    pub(super) async fn resume(&mut self, tx: &mut Tx) -> Result<(), SessionError> {
        // The client resends the reliable data it sent after this number.
        let id = self.participant;
        let last_message_seq = self.state.sfu.call(move |sfu, _| sfu.data_sequence(id)).await?;
        let mut out = vec![Resp::Reconnect(proto::ReconnectResponse {
            ice_servers: self.ice_servers(),
            server_info: Some(server_info()),
            last_message_seq,
            ..Default::default()
        })];
        out.append(&mut self.backlog);
        let all = self.participants().await?;
        let others = self.catch_up(&all);
        if !others.is_empty() {
            out.push(Resp::Update(proto::ParticipantUpdate { participants: others }));
        }
        send_all(tx, out).await?;
        if !self.single_pc {
            let id = self.participant;
            self.state.sfu.call(move |sfu, now| sfu.restart_ice(now, id)).await??;
        }
        Ok(())
    }
}
