//! LiveKit's data envelope: `DataPacket` protobufs on the `_reliable` and `_lossy` channels.
//! The server stamps the sender's identity and sid, and honours `destination_identities`.

use livekit_protocol as proto;
use prost::Message;

use crate::ids::{Identity, ParticipantId};
use crate::sfu::data::{DataCodec, DataMessage};

const NATIVE: &str = "livekit";
pub const RELIABLE: &str = "_reliable";
pub const LOSSY: &str = "_lossy";

/// A caption as LiveKit's own transcription packet, which its client SDKs surface as
/// `TranscriptionReceived` (a segment id shared by an utterance's previews and its final text
/// lets them replace each other): the envelope of a server message, so LiveKit clients get
/// this while raw channels get the message's payload.
pub fn transcription(
    identity: &str,
    track: &str,
    segment: proto::TranscriptionSegment,
    reliable: bool,
) -> (&'static str, Vec<u8>) {
    let kind = if reliable { proto::data_packet::Kind::Reliable } else { proto::data_packet::Kind::Lossy };
    let dp = proto::DataPacket {
        kind: kind as i32,
        value: Some(proto::data_packet::Value::Transcription(proto::Transcription {
            transcribed_participant_identity: identity.to_string(),
            track_id: track.to_string(),
            segments: vec![segment],
        })),
        ..Default::default()
    };
    (NATIVE, dp.encode_to_vec())
}

/// The codec a LiveKit session registers with the router.
#[derive(Debug, Default)]
pub struct LiveKitData;

impl DataCodec for LiveKitData {
    fn decode(&self, label: &str, _reliable: bool, data: &[u8]) -> Option<DataMessage> {
        if label != RELIABLE && label != LOSSY {
            return None;
        }
        let dp = proto::DataPacket::decode(data).ok()?;
        let mut destinations = dp.destination_identities.clone();
        let (topic, payload) = match &dp.value {
            Some(proto::data_packet::Value::User(u)) => {
                destinations.extend(u.destination_identities.iter().cloned());
                (u.topic.clone().unwrap_or_default(), u.payload.clone())
            }
            // Captions and speaker lists come from the server (and its agents) only: from a
            // client they would pass for the server's word about another participant.
            Some(proto::data_packet::Value::Transcription(_) | proto::data_packet::Value::Speaker(_)) | None => {
                return None;
            }
            Some(_) => (String::new(), Vec::new()),
        };
        Some(DataMessage {
            reliable: label == RELIABLE,
            binary: true,
            topic,
            payload,
            destinations: destinations.into_iter().filter_map(|d| Identity::new(d).ok()).collect(),
            native: Some((NATIVE, data.to_vec())),
            sequence: (label == RELIABLE && dp.sequence > 0).then_some(dp.sequence),
        })
    }

    fn encode(&self, msg: &DataMessage, sender: Option<(&Identity, ParticipantId)>) -> Option<(String, Vec<u8>)> {
        let label = if msg.reliable { RELIABLE } else { LOSSY };
        let kind = if msg.reliable { proto::data_packet::Kind::Reliable } else { proto::data_packet::Kind::Lossy };
        let mut dp = match &msg.native {
            Some((NATIVE, bytes)) => proto::DataPacket::decode(bytes.as_slice()).ok()?,
            // From a raw channel: a user packet whose topic is the channel label.
            _ => proto::DataPacket {
                kind: kind as i32,
                value: Some(proto::data_packet::Value::User(proto::UserPacket {
                    payload: msg.payload.clone(),
                    topic: Some(msg.topic.clone()),
                    ..Default::default()
                })),
                ..Default::default()
            },
        };
        // Whatever the sender claimed, receivers learn who really sent it; the server is
        // nobody, as in LiveKit.
        let (identity, sid) = sender.map(|(i, p)| (i.to_string(), p.to_string())).unwrap_or_default();
        dp.participant_identity = identity.clone();
        dp.participant_sid = sid.clone();
        dp.destination_identities.clear();
        if let Some(proto::data_packet::Value::User(u)) = &mut dp.value {
            u.participant_identity = identity;
            u.participant_sid = sid;
            u.destination_identities.clear();
            u.destination_sids.clear();
        }
        Some((label.to_string(), dp.encode_to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_captions_reach_livekit_clients_as_transcriptions() {
        let segment = proto::TranscriptionSegment {
            id: "TR_1-5".into(),
            text: "hello".into(),
            r#final: true,
            ..Default::default()
        };
        let mut msg = DataMessage::from_server(b"{}".to_vec(), "captions".into(), true, Vec::new());
        msg.native = Some(transcription("ana", "TR_1", segment.clone(), true));
        let (label, bytes) = LiveKitData.encode(&msg, None).unwrap();
        assert_eq!(label, RELIABLE);
        let dp = proto::DataPacket::decode(bytes.as_slice()).unwrap();
        assert_eq!(dp.participant_identity, "", "from the server");
        let Some(proto::data_packet::Value::Transcription(t)) = dp.value else { panic!("{dp:?}") };
        assert_eq!((t.transcribed_participant_identity.as_str(), t.track_id.as_str()), ("ana", "TR_1"));
        assert_eq!(t.segments, vec![segment]);
    }

    #[test]
    fn identity_is_stamped_and_destinations_read() {
        let sent = proto::DataPacket {
            kind: proto::data_packet::Kind::Reliable as i32,
            participant_identity: "mallory".into(),
            destination_identities: vec!["bob".into()],
            value: Some(proto::data_packet::Value::User(proto::UserPacket {
                payload: b"hi".to_vec(),
                topic: Some("chat".into()),
                ..Default::default()
            })),
            ..Default::default()
        };
        let msg = LiveKitData.decode(RELIABLE, true, &sent.encode_to_vec()).unwrap();
        assert_eq!(msg.destinations, [Identity::new("bob").unwrap()]);
        assert_eq!((msg.topic.as_str(), msg.payload.as_slice()), ("chat", &b"hi"[..]));
        let (label, bytes) =
            LiveKitData.encode(&msg, Some((&Identity::new("alice").unwrap(), ParticipantId(7)))).unwrap();
        assert_eq!(label, RELIABLE);
        let got = proto::DataPacket::decode(bytes.as_slice()).unwrap();
        assert_eq!((got.participant_identity.as_str(), got.participant_sid.as_str()), ("alice", "PA_7"));
        assert!(LiveKitData.decode(RELIABLE, true, b"\xff\xff garbage").is_none());
        let (_, forged) = transcription("bob", "TR_1", proto::TranscriptionSegment::default(), true);
        assert!(LiveKitData.decode(RELIABLE, true, &forged).is_none(), "only the server sends captions");
        assert!(LiveKitData.decode("other", true, &sent.encode_to_vec()).is_none());
    }

    #[test]
    fn raw_messages_become_user_packets() {
        let msg = DataMessage {
            reliable: false,
            binary: false,
            topic: "chat".into(),
            payload: b"yo".to_vec(),
            destinations: vec![],
            native: None,
            sequence: None,
        };
        let (label, bytes) =
            LiveKitData.encode(&msg, Some((&Identity::new("whip").unwrap(), ParticipantId(3)))).unwrap();
        assert_eq!(label, LOSSY);
        let got = proto::DataPacket::decode(bytes.as_slice()).unwrap();
        let Some(proto::data_packet::Value::User(u)) = got.value else { panic!("user packet") };
        assert_eq!((u.payload.as_slice(), u.topic.as_deref()), (&b"yo"[..], Some("chat")));
    }
}
