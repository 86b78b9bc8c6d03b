//! What LiveKit clients say about themselves that the router has no use for (names,
//! metadata, track sources and dimensions), shared by every LiveKit connection of the node so
//! each can describe the others. Participants and tracks that came in another way (WHIP)
//! have no entry and get defaults.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use livekit_protocol as proto;

use crate::ids::{ParticipantId, TrackId};

/// A LiveKit participant's self-description.
#[derive(Debug, Clone, Default)]
pub struct ParticipantMeta {
    pub name: String,
    pub metadata: String,
    pub attributes: HashMap<String, String>,
    pub joined_at_ms: i64,
    pub permission: proto::ParticipantPermission,
}

/// What the publisher said about a track in its AddTrackRequest.
#[derive(Debug, Clone, Default)]
pub struct TrackMeta {
    pub name: String,
    pub source: i32,
    pub width: u32,
    pub height: u32,
    pub layers: Vec<proto::VideoLayer>,
    pub stereo: bool,
    pub disable_dtx: bool,
    pub stream: String,
}

#[derive(Default)]
struct Inner {
    participants: HashMap<ParticipantId, ParticipantMeta>,
    tracks: HashMap<TrackId, TrackMeta>,
}

/// Node-wide LiveKit metadata.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// ParticipantInfo.version: the SDK ignores an update whose version is not newer.
    version: AtomicU32,
}

impl Registry {
    pub fn set_participant(&self, id: ParticipantId, meta: ParticipantMeta) {
        self.inner.lock().expect("not poisoned").participants.insert(id, meta);
    }

    pub fn participant(&self, id: ParticipantId) -> Option<ParticipantMeta> {
        self.inner.lock().expect("not poisoned").participants.get(&id).cloned()
    }

    pub fn update_participant(&self, id: ParticipantId, f: impl FnOnce(&mut ParticipantMeta)) {
        if let Some(m) = self.inner.lock().expect("not poisoned").participants.get_mut(&id) {
            f(m);
        }
    }

    pub fn remove_participant(&self, id: ParticipantId, tracks: &[TrackId]) {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.participants.remove(&id);
        for t in tracks {
            inner.tracks.remove(t);
        }
    }

    pub fn set_track(&self, id: TrackId, meta: TrackMeta) {
        self.inner.lock().expect("not poisoned").tracks.insert(id, meta);
    }

    pub fn track(&self, id: TrackId) -> Option<TrackMeta> {
        self.inner.lock().expect("not poisoned").tracks.get(&id).cloned()
    }

    pub fn next_version(&self) -> u32 {
        self.version.fetch_add(1, Ordering::Relaxed) + 1
    }
}
