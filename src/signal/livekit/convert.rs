//! Router views → LiveKit protocol messages.

use livekit_protocol as proto;
use proto::participant_info::State as PState;
use str0m::media::MediaKind;

use super::registry::{Registry, TrackMeta};
use crate::sfu::Permissions;
use crate::sfu::Quality;
use crate::sfu::core::{ParticipantInfo, TrackInfo};

pub fn permission(p: Permissions) -> proto::ParticipantPermission {
    proto::ParticipantPermission {
        can_subscribe: p.subscribe,
        can_publish: p.publish,
        can_publish_data: p.publish_data,
        hidden: p.hidden,
        ..Default::default()
    }
}

pub fn track_info(t: &TrackInfo, meta: Option<&TrackMeta>) -> proto::TrackInfo {
    let audio = t.kind == MediaKind::Audio;
    let meta = meta.cloned().unwrap_or_default();
    let mime_type = mime_type(t, &meta);
    let source = if meta.source != 0 {
        meta.source
    } else if audio {
        proto::TrackSource::Microphone as i32
    } else {
        proto::TrackSource::Camera as i32
    };
    proto::TrackInfo {
        sid: t.id.to_string(),
        r#type: if audio { proto::TrackType::Audio } else { proto::TrackType::Video } as i32,
        name: meta.name,
        muted: t.muted,
        width: meta.width,
        height: meta.height,
        simulcast: t.layers.len() > 1,
        disable_dtx: meta.disable_dtx,
        source,
        layers: meta.layers,
        mime_type,
        encryption: meta.encryption,
        stereo: meta.stereo,
        stream: meta.stream,
        ..Default::default()
    }
}

/// The track's codec: as negotiated, else as its client announced it (`add_track`, before its
/// m-line), else Opus or VP8.
fn mime_type(t: &TrackInfo, meta: &TrackMeta) -> String {
    if !t.mime.is_empty() {
        return t.mime.clone();
    }
    match (t.kind, meta.codec.as_str()) {
        (MediaKind::Audio, _) => "audio/opus".to_string(),
        (MediaKind::Video, "") => "video/VP8".to_string(),
        (MediaKind::Video, codec) => format!("video/{}", codec.to_ascii_uppercase()),
    }
}

/// A participant as other clients see it; `state` Disconnected tells them it left.
pub fn participant_info(p: &ParticipantInfo, reg: &Registry, state: PState) -> proto::ParticipantInfo {
    let meta = reg.participant(p.id).unwrap_or_default();
    let tracks: Vec<proto::TrackInfo> = p.tracks.iter().map(|t| track_info(t, reg.track(t.id).as_ref())).collect();
    proto::ParticipantInfo {
        sid: p.id.to_string(),
        identity: p.identity.to_string(),
        state: state as i32,
        is_publisher: !tracks.is_empty(),
        tracks,
        metadata: meta.metadata,
        joined_at: meta.joined_at_ms / 1000,
        joined_at_ms: meta.joined_at_ms,
        name: meta.name,
        version: reg.next_version(),
        permission: Some(meta.permission),
        attributes: meta.attributes,
        // What the server publishes itself is an agent's work to LiveKit clients.
        kind: if p.server { proto::participant_info::Kind::Agent } else { proto::participant_info::Kind::Standard }
            as i32,
        ..Default::default()
    }
}

/// LiveKit's VideoQuality → ours; `None` for OFF.
pub fn quality(q: i32) -> Option<Quality> {
    match proto::VideoQuality::try_from(q).unwrap_or(proto::VideoQuality::High) {
        proto::VideoQuality::Low => Some(Quality::Low),
        proto::VideoQuality::Medium => Some(Quality::Medium),
        proto::VideoQuality::High => Some(Quality::High),
        proto::VideoQuality::Off => None,
    }
}

/// LiveKit's name for a quality (the inverse of [`quality`]).
pub fn video_quality(q: Quality) -> proto::VideoQuality {
    match q {
        Quality::Low => proto::VideoQuality::Low,
        Quality::Medium => proto::VideoQuality::Medium,
        Quality::High => proto::VideoQuality::High,
    }
}

/// The quality whose published layer is the smallest at least `width`×`height` (the
/// subscriber's element size), from the publisher's AddTrack layers.
pub fn quality_for_size(meta: &TrackMeta, width: u32, height: u32) -> Quality {
    let mut layers = meta.layers.clone();
    layers.sort_by_key(|l| l.width * l.height);
    let fit = layers.iter().find(|l| l.width >= width && l.height >= height).or(layers.last());
    match fit.map(|l| proto::VideoQuality::try_from(l.quality).unwrap_or(proto::VideoQuality::High)) {
        Some(proto::VideoQuality::Low) => Quality::Low,
        Some(proto::VideoQuality::Medium) => Quality::Medium,
        _ => Quality::High,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_size_picks_a_layer() {
        let layer = |q: proto::VideoQuality, w, h| proto::VideoLayer {
            quality: q as i32,
            width: w,
            height: h,
            ..Default::default()
        };
        let meta = TrackMeta {
            layers: vec![
                layer(proto::VideoQuality::High, 1280, 720),
                layer(proto::VideoQuality::Low, 320, 180),
                layer(proto::VideoQuality::Medium, 640, 360),
            ],
            ..Default::default()
        };
        assert_eq!(quality_for_size(&meta, 300, 150), Quality::Low);
        assert_eq!(quality_for_size(&meta, 400, 300), Quality::Medium);
        assert_eq!(quality_for_size(&meta, 1920, 1080), Quality::High);
        assert_eq!(quality(proto::VideoQuality::Off as i32), None);
    }
}
