//! The router events that put stages on tracks and take them off, fed to a node's tap
//! registries (`aic_taps`, `speech_taps`) in order, one event at a time. A registry that
//! falls behind the router's events is brought back in step with the router's tracks.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use str0m::media::MediaKind;
use tokio::sync::broadcast::error::RecvError;

use crate::ids::{ParticipantId, RoomName, TrackId};
use crate::sfu::driver::SfuHandle;
use crate::sfu::mirror;
use crate::sfu::{Sfu, SfuEvent, TrackInfo};

/// A registry of tracks with a stage.
pub trait TrackTaps: Send + Sync + 'static {
    fn audio_published(&self, room: RoomName, track: TrackId, owner: ParticipantId) -> impl Future<Output = ()> + Send;
    fn unpublished(&self, room: RoomName, track: TrackId) -> impl Future<Output = ()> + Send;
    fn room_closed(&self, room: &RoomName);
    /// The rooms it keeps, with the tracks that have its stage there.
    fn tracked(&self) -> Vec<(RoomName, Vec<TrackId>)>;
}

/// A track the stages go on: audio a client published. The server's own tracks carry a
/// stage's output already.
fn staged(t: &TrackInfo) -> bool {
    t.kind == MediaKind::Audio && !t.server
}

/// The staged tracks of `room` now, with their owners.
pub async fn audio_tracks(sfu: &SfuHandle, room: &RoomName) -> Vec<(TrackId, ParticipantId)> {
    let room = room.clone();
    sfu.call(move |sfu, _| {
        sfu.participants(&room).into_iter().flat_map(|p| p.tracks).filter(staged).map(|t| (t.id, t.owner)).collect()
    })
    .await
    .unwrap_or_default()
}

/// The router's rooms now, and the client-published audio tracks in them.
struct Live {
    rooms: HashSet<RoomName>,
    audio: Vec<(RoomName, TrackId, ParticipantId)>,
}

fn live(sfu: &Sfu) -> Live {
    let mut live = Live { rooms: HashSet::new(), audio: Vec::new() };
    for (room, participants) in mirror::live(sfu) {
        for t in participants.into_iter().flat_map(|p| p.tracks) {
            if staged(&t) {
                live.audio.push((room.clone(), t.id, t.owner));
            }
        }
        live.rooms.insert(room);
    }
    live
}

/// Feeds `taps` the router's track events until the router stops; `what` names them in logs.
pub fn follow<T: TrackTaps>(taps: Arc<T>, sfu: SfuHandle, what: &'static str) {
    let mut events = sfu.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(SfuEvent::TrackPublished { room, track }) if staged(&track) => {
                    taps.audio_published(room, track.id, track.owner).await;
                }
                Ok(SfuEvent::TrackUnpublished { room, track }) => taps.unpublished(room, track.id).await,
                Ok(SfuEvent::RoomClosed { room }) => taps.room_closed(&room),
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, taps = what, "taps fell behind the router; resynchronising");
                    let Ok((now, rest)) = sfu.subscribe_with(live).await else { return };
                    events = rest;
                    resync(&*taps, now).await;
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// Makes `taps` match the router: stages off tracks and rooms that are gone, and onto audio
/// tracks they have not seen (which they take or leave as for a new track).
async fn resync<T: TrackTaps>(taps: &T, live: Live) {
    let tracked = taps.tracked();
    for (room, tracks) in &tracked {
        if !live.rooms.contains(room) {
            taps.room_closed(room);
            continue;
        }
        for &track in tracks {
            if !live.audio.iter().any(|(r, t, _)| r == room && *t == track) {
                taps.unpublished(room.clone(), track).await;
            }
        }
    }
    let seen = |room: &RoomName, track: TrackId| tracked.iter().any(|(r, ts)| r == room && ts.contains(&track));
    for (room, track, owner) in live.audio {
        if !seen(&room, track) {
            taps.audio_published(room, track, owner).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Taps that note what they are told.
    #[derive(Default)]
    struct Noted {
        tracked: Vec<(RoomName, Vec<TrackId>)>,
        calls: Mutex<Vec<String>>,
    }

    impl TrackTaps for Noted {
        async fn audio_published(&self, room: RoomName, track: TrackId, _: ParticipantId) {
            self.calls.lock().unwrap().push(format!("published {room} {track}"));
        }
        async fn unpublished(&self, room: RoomName, track: TrackId) {
            self.calls.lock().unwrap().push(format!("unpublished {room} {track}"));
        }
        fn room_closed(&self, room: &RoomName) {
            self.calls.lock().unwrap().push(format!("closed {room}"));
        }
        fn tracked(&self) -> Vec<(RoomName, Vec<TrackId>)> {
            self.tracked.clone()
        }
    }

    #[tokio::test]
    async fn a_registry_that_fell_behind_catches_up_with_the_router() {
        let room = |n: &str| RoomName::new(n).unwrap();
        let taps = Noted {
            tracked: vec![(room("a"), vec![TrackId(1), TrackId(2)]), (room("gone"), vec![TrackId(9)])],
            ..Default::default()
        };
        let live = Live {
            rooms: [room("a"), room("b")].into_iter().collect(),
            audio: vec![(room("a"), TrackId(1), ParticipantId(5)), (room("b"), TrackId(3), ParticipantId(6))],
        };
        resync(&taps, live).await;
        let calls = taps.calls.into_inner().unwrap();
        assert_eq!(calls, ["unpublished a TR_2", "closed gone", "published b TR_3"]);
    }
}
