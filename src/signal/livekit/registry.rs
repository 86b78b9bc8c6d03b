//! What LiveKit clients say about themselves that the router has no use for (names,
//! metadata, track sources and dimensions), shared by every LiveKit connection of the node so
//! each can describe the others. Participants and tracks that came in another way (WHIP)
//! have no entry and get defaults.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use livekit_protocol as proto;

use crate::ids::{ParticipantId, RoomName, TrackId};

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
    /// The video codec the client encodes (`simulcast_codecs`, e.g. `vp8`), which it names its
    /// layers by in dynacast updates; empty when it did not say.
    pub codec: String,
    /// How the client encrypts the track's frames end to end (LiveKit's `Encryption.Type`);
    /// the router forwards them as they come.
    pub encryption: i32,
}

/// What a participant may say about itself at most, all updates together: LiveKit checks
/// each request, which lets attributes pile up across requests.
pub const MAX_NAME: usize = 256;
pub const MAX_METADATA: usize = 64 * 1024;
pub const MAX_ATTRIBUTES: usize = 64;
/// Keys and values of all a participant's attributes together.
pub const MAX_ATTRIBUTE_BYTES: usize = 16 * 1024;
/// Track descriptions one participant has at once (announced, published or unpublished
/// since; they go when it leaves).
pub const MAX_TRACKS: usize = 64;

/// A description over the limits above; nothing of it was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("participant {0} over its limit")]
pub struct TooLarge(pub &'static str);

/// Whether one update (of a participant's own, or the server API's) is within the limits by
/// itself; [`Registry::describe`] also checks what it adds up to.
pub fn fits(name: &str, metadata: &str, attributes: &HashMap<String, String>) -> Result<(), TooLarge> {
    if name.len() > MAX_NAME {
        return Err(TooLarge("name"));
    }
    if metadata.len() > MAX_METADATA {
        return Err(TooLarge("metadata"));
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(TooLarge("attributes"));
    }
    Ok(())
}

#[derive(Default)]
struct Inner {
    participants: HashMap<ParticipantId, (RoomName, ParticipantMeta)>,
    tracks: HashMap<TrackId, TrackMeta>,
    owned: HashMap<ParticipantId, HashSet<TrackId>>,
}

/// Node-wide LiveKit metadata.
#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// ParticipantInfo.version: the SDK ignores an update whose version is not newer.
    version: AtomicU32,
}

impl Registry {
    pub fn set_participant(&self, id: ParticipantId, room: RoomName, meta: ParticipantMeta) {
        self.lock().participants.insert(id, (room, meta));
    }

    pub fn participant(&self, id: ParticipantId) -> Option<ParticipantMeta> {
        self.lock().participants.get(&id).map(|(_, m)| m.clone())
    }

    /// The (router's) room a participant is in.
    pub fn room_of(&self, id: ParticipantId) -> Option<RoomName> {
        self.lock().participants.get(&id).map(|(r, _)| r.clone())
    }

    pub fn update_participant(&self, id: ParticipantId, f: impl FnOnce(&mut ParticipantMeta)) {
        if let Some((_, m)) = self.lock().participants.get_mut(&id) {
            f(m);
        }
    }

    /// Changes a participant's self-description (`None` keeps a field; an empty attribute
    /// value removes the attribute, as in LiveKit) unless the result is over a limit. False if
    /// there is no such participant.
    pub fn describe(
        &self,
        id: ParticipantId,
        name: Option<&str>,
        metadata: Option<&str>,
        attributes: &HashMap<String, String>,
    ) -> Result<bool, TooLarge> {
        let mut inner = self.lock();
        fits(name.unwrap_or_default(), metadata.unwrap_or_default(), attributes)?;
        let Some((_, m)) = inner.participants.get_mut(&id) else { return Ok(false) };
        let mut merged = m.attributes.clone();
        for (k, v) in attributes {
            if v.is_empty() {
                merged.remove(k);
            } else {
                merged.insert(k.clone(), v.clone());
            }
        }
        if merged.len() > MAX_ATTRIBUTES {
            return Err(TooLarge("attributes"));
        }
        if merged.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > MAX_ATTRIBUTE_BYTES {
            return Err(TooLarge("attribute size"));
        }
        if let Some(n) = name {
            m.name = n.to_string();
        }
        if let Some(md) = metadata {
            m.metadata = md.to_string();
        }
        m.attributes = merged;
        Ok(true)
    }

    /// Forgets a participant and every track it described.
    pub fn remove_participant(&self, id: ParticipantId) {
        let mut inner = self.lock();
        inner.participants.remove(&id);
        for t in inner.owned.remove(&id).unwrap_or_default() {
            inner.tracks.remove(&t);
        }
    }

    /// Describes a track of `owner`'s; refused past [`MAX_TRACKS`] of them.
    pub fn set_track(&self, id: TrackId, owner: ParticipantId, meta: TrackMeta) -> Result<(), TooLarge> {
        let mut inner = self.lock();
        let owned = inner.owned.entry(owner).or_default();
        if owned.len() >= MAX_TRACKS && !owned.contains(&id) {
            return Err(TooLarge("tracks"));
        }
        owned.insert(id);
        inner.tracks.insert(id, meta);
        Ok(())
    }

    /// Whether `owner` described track `id` (it may have been unpublished since).
    pub fn described_by(&self, id: TrackId, owner: ParticipantId) -> bool {
        self.lock().owned.get(&owner).is_some_and(|t| t.contains(&id))
    }

    pub fn track(&self, id: TrackId) -> Option<TrackMeta> {
        self.lock().tracks.get(&id).cloned()
    }

    /// Participants and tracks described now.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.participants.len(), inner.tracks.len())
    }

    pub fn next_version(&self) -> u32 {
        self.version.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("not poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_limited_across_updates() {
        let reg = Registry::default();
        let id = ParticipantId(1);
        reg.set_participant(id, RoomName::new("r").unwrap(), ParticipantMeta::default());
        for i in 0..MAX_ATTRIBUTES {
            let one = HashMap::from([(format!("k{i}"), "v".to_string())]);
            assert_eq!(reg.describe(id, None, None, &one), Ok(true));
        }
        let more = HashMap::from([("one-more".to_string(), "v".to_string())]);
        assert_eq!(reg.describe(id, Some("new"), None, &more), Err(TooLarge("attributes")));
        assert_eq!(reg.participant(id).unwrap().name, "", "nothing of a refused update applies");
        // Removing one makes room again.
        let remove = HashMap::from([("k0".to_string(), String::new())]);
        assert_eq!(reg.describe(id, None, None, &remove), Ok(true));
        assert_eq!(reg.describe(id, None, None, &more), Ok(true));
        let big = HashMap::from([("k1".to_string(), "x".repeat(MAX_ATTRIBUTE_BYTES))]);
        assert_eq!(reg.describe(id, None, None, &big), Err(TooLarge("attribute size")));
    }

    #[test]
    fn a_participant_takes_all_its_tracks_with_it() {
        let reg = Registry::default();
        let (alice, bob) = (ParticipantId(1), ParticipantId(2));
        for t in 0..MAX_TRACKS as u64 {
            reg.set_track(TrackId(100 + t), alice, TrackMeta::default()).unwrap();
        }
        assert_eq!(reg.set_track(TrackId(99), alice, TrackMeta::default()), Err(TooLarge("tracks")));
        reg.set_track(TrackId(100), alice, TrackMeta { name: "again".into(), ..Default::default() }).unwrap();
        reg.set_track(TrackId(1), bob, TrackMeta::default()).unwrap();
        reg.remove_participant(alice);
        assert_eq!(reg.len(), (0, 1));
        assert!(reg.track(TrackId(1)).is_some());
    }
}
