//! What LiveKit sessions learn besides router events: a participant's description changed,
//! or its room's metadata did. One channel per room, so an update wakes only the sessions of
//! that room, never every session of the node.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::ids::{ParticipantId, RoomName};

/// Notices a session may miss before it lags (and resynchronises).
const CAPACITY: usize = 256;

/// One change in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Name, metadata, attributes or permission of this participant.
    Described(ParticipantId),
    /// The room's metadata is now this.
    Metadata(String),
}

/// The rooms' channels; a room's goes away with its last session.
#[derive(Default)]
pub struct Notices {
    rooms: Mutex<HashMap<RoomName, broadcast::Sender<Notice>>>,
}

impl Notices {
    /// Listens to `room`. Channels nobody listens to any more are dropped here, so there are
    /// never more than rooms with sessions.
    pub fn subscribe(&self, room: &RoomName) -> broadcast::Receiver<Notice> {
        let mut rooms = self.rooms.lock().expect("not poisoned");
        rooms.retain(|_, tx| tx.receiver_count() > 0);
        rooms.entry(room.clone()).or_insert_with(|| broadcast::channel(CAPACITY).0).subscribe()
    }

    /// Tells the sessions of `room`, if it has any.
    pub fn send(&self, room: &RoomName, notice: Notice) {
        let mut rooms = self.rooms.lock().expect("not poisoned");
        if let Some(tx) = rooms.get(room)
            && tx.send(notice).is_err()
        {
            rooms.remove(room);
        }
    }

    /// Rooms with a channel now.
    #[cfg(test)]
    fn rooms(&self) -> usize {
        self.rooms.lock().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::new(name.to_string()).unwrap()
    }

    #[test]
    fn only_the_room_hears_and_channels_go_with_their_sessions() {
        let n = Notices::default();
        let (mut a, mut b) = (n.subscribe(&room("a")), n.subscribe(&room("b")));
        n.send(&room("a"), Notice::Metadata("x".into()));
        assert_eq!(a.try_recv().unwrap(), Notice::Metadata("x".into()));
        assert!(b.try_recv().is_err(), "another room hears nothing");
        drop(a);
        n.send(&room("a"), Notice::Described(ParticipantId(1)));
        assert_eq!(n.rooms(), 1, "a's channel went with its last session");
        drop(b);
        let _c = n.subscribe(&room("c"));
        assert_eq!(n.rooms(), 1);
    }
}
