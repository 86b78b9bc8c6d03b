//! The router events that put stages on tracks and take them off, fed to a node's tap
//! registries (`aic_taps`, `speech_taps`) in order, one event at a time.

use std::future::Future;
use std::sync::Arc;

use str0m::media::MediaKind;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::ids::{ParticipantId, RoomName, TrackId};
use crate::sfu::SfuEvent;

/// A registry of tracks with a stage.
pub trait TrackTaps: Send + Sync + 'static {
    fn audio_published(&self, room: RoomName, track: TrackId, owner: ParticipantId) -> impl Future<Output = ()> + Send;
    fn unpublished(&self, room: RoomName, track: TrackId) -> impl Future<Output = ()> + Send;
    fn room_closed(&self, room: &RoomName);
}

/// Feeds `taps` the router's track events until the router stops; `what` names them in logs.
pub fn follow<T: TrackTaps>(taps: Arc<T>, mut events: broadcast::Receiver<SfuEvent>, what: &'static str) {
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                // The server's own tracks carry a stage's output already.
                Ok(SfuEvent::TrackPublished { room, track }) if track.kind == MediaKind::Audio && !track.server => {
                    taps.audio_published(room, track.id, track.owner).await;
                }
                Ok(SfuEvent::TrackUnpublished { room, track }) => taps.unpublished(room, track.id).await,
                Ok(SfuEvent::RoomClosed { room }) => taps.room_closed(&room),
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, taps = what, "taps fell behind the router"),
                Err(RecvError::Closed) => return,
            }
        }
    });
}
