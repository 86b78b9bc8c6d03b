//! Resuming a session: a LiveKit client whose signal connection dropped reconnects with
//! `reconnect=1&sid=<participant>` and carries on with the same peer connections, tracks
//! and subscriptions, unseen by the rest of the room. The task serving a participant
//! outlives its WebSocket for [`RESUME_WINDOW`] and takes the new socket from here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::ws::WebSocket;
use tokio::sync::mpsc;

use crate::ids::{Identity, ParticipantId, RoomName};

/// How long a participant whose signal connection dropped waits for it to come back. The
/// SDK's resume attempts fall well inside this; after it, the participant leaves.
pub const RESUME_WINDOW: Duration = Duration::from_secs(20);

struct Resumable<S> {
    room: RoomName,
    identity: Identity,
    socket: mpsc::Sender<S>,
}

/// Why a resume was refused; the client then rejoins from scratch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResumeError {
    #[error("no session {0} to resume")]
    Unknown(String),
    #[error("the token is not for the session's room and identity")]
    NotYours,
    #[error("the session is already being resumed")]
    Busy,
}

/// The node's LiveKit sessions that a new signal connection (`S`) may take over.
pub struct Sessions<S = WebSocket> {
    inner: Mutex<HashMap<ParticipantId, Resumable<S>>>,
}

impl<S> Default for Sessions<S> {
    fn default() -> Self {
        Sessions { inner: Mutex::new(HashMap::new()) }
    }
}

impl<S> Sessions<S> {
    /// Makes `id` resumable; the returned receiver yields the sockets of resume attempts.
    pub fn register(&self, id: ParticipantId, room: RoomName, identity: Identity) -> mpsc::Receiver<S> {
        let (socket, rx) = mpsc::channel(1);
        self.inner.lock().expect("not poisoned").insert(id, Resumable { room, identity, socket });
        rx
    }

    pub fn remove(&self, id: ParticipantId) {
        self.inner.lock().expect("not poisoned").remove(&id);
    }

    /// Hands `socket` to the session `sid` if it belongs to `room` and `identity`: a token
    /// for somebody else cannot take a session over.
    pub fn hand_over(&self, sid: &str, room: &str, identity: &str, socket: S) -> Result<(), (ResumeError, S)> {
        let Ok(id) = sid.parse::<ParticipantId>() else {
            return Err((ResumeError::Unknown(sid.to_string()), socket));
        };
        let inner = self.inner.lock().expect("not poisoned");
        let Some(r) = inner.get(&id) else {
            return Err((ResumeError::Unknown(sid.to_string()), socket));
        };
        if r.room.as_str() != room || r.identity.as_str() != identity {
            return Err((ResumeError::NotYours, socket));
        }
        r.socket.try_send(socket).map_err(|e| (ResumeError::Busy, e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> (Sessions<u32>, mpsc::Receiver<u32>) {
        let s = Sessions::default();
        let rx = s.register(ParticipantId(7), RoomName::new("r").unwrap(), Identity::new("alice").unwrap());
        (s, rx)
    }

    #[test]
    fn hands_the_socket_to_the_owner_only() {
        let (s, mut rx) = sessions();
        let sid = ParticipantId(7).to_string();
        assert_eq!(s.hand_over(&sid, "r", "bob", 1).unwrap_err().0, ResumeError::NotYours);
        assert_eq!(s.hand_over(&sid, "other", "alice", 1).unwrap_err().0, ResumeError::NotYours);
        assert!(matches!(s.hand_over("PA_zz", "r", "alice", 1).unwrap_err().0, ResumeError::Unknown(_)));
        assert!(matches!(
            s.hand_over(&ParticipantId(8).to_string(), "r", "alice", 1),
            Err((ResumeError::Unknown(_), 1))
        ));
        s.hand_over(&sid, "r", "alice", 2).unwrap();
        // A second attempt before the session took the first is refused, not queued.
        assert_eq!(s.hand_over(&sid, "r", "alice", 3).unwrap_err(), (ResumeError::Busy, 3));
        assert_eq!(rx.try_recv().unwrap(), 2);
        s.remove(ParticipantId(7));
        assert!(matches!(s.hand_over(&sid, "r", "alice", 4).unwrap_err().0, ResumeError::Unknown(_)));
    }
}
