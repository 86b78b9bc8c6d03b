//! Dynacast: a simulcast publisher encodes only the qualities someone watches. The highest
//! quality any subscriber of a track asks for (LiveKit's `track_setting` quality or size, or
//! `High` by default) is wanted, with every quality below it so that a congested subscriber
//! has a layer to fall back to; a track nobody receives wants none. Publishers are told when
//! that changes (`SfuEvent::QualitiesWanted`), and LiveKit clients with dynacast on pause the
//! encodings not wanted.

use str0m::media::MediaKind;

use super::{Sfu, SfuEvent};
use crate::ids::TrackId;
use crate::sfu::layer_select::Quality;

impl Sfu {
    /// `track`'s subscribers changed, or what one of them asks for: what the publisher
    /// should encode is worked out once the current input is handled.
    pub(super) fn touch_dynacast(&mut self, track: TrackId) {
        self.dynacast_dirty.insert(track);
    }

    /// What `owner`'s tracks were last said to want, as the events that said it.
    pub(super) fn qualities_told(&self, owner: crate::ids::ParticipantId) -> Vec<SfuEvent> {
        self.tracks
            .values()
            .filter(|t| t.info.owner == owner)
            .filter_map(|t| {
                let up_to = t.wanted?;
                Some(SfuEvent::QualitiesWanted { owner, track: t.info.id, up_to, mime: t.info.mime.clone() })
            })
            .collect()
    }

    /// Tells publishers of the tracks touched since the last call what is now wanted, where
    /// it changed.
    pub(super) fn poll_dynacast(&mut self) {
        for track in std::mem::take(&mut self.dynacast_dirty) {
            let Some(t) = self.tracks.get(&track) else { continue };
            if t.info.kind != MediaKind::Video || t.layers.len() < 2 {
                continue;
            }
            let wanted: Option<Quality> = t
                .subscribers
                .iter()
                .filter_map(|(sub, mid)| self.peers.get(sub)?.slots.iter().find(|s| s.mid == *mid))
                .filter(|slot| slot.fwd.target().is_some())
                .map(|slot| slot.max_quality)
                .max();
            let Some(t) = self.tracks.get_mut(&track) else { continue };
            if t.wanted == Some(wanted) {
                continue;
            }
            t.wanted = Some(wanted);
            let (owner, mime) = (t.info.owner, t.info.mime.clone());
            self.events.push_back(SfuEvent::QualitiesWanted { owner, track, up_to: wanted, mime });
        }
    }
}
