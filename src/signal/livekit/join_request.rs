//! The `join_request` query parameter of `/rtc/v1`: URL-safe base64 of a `WrappedJoinRequest`
//! whose payload is a protobuf `JoinRequest`, gzipped when the browser can.

use std::io::Read;

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use livekit_protocol as proto;
use prost::Message;
use proto::wrapped_join_request::Compression;

/// Largest join request accepted, after decompression: an SDP offer with many m-lines fits in
/// a small fraction of it.
pub const MAX_JOIN_REQUEST: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinRequestError {
    #[error("join_request is not URL-safe base64")]
    Base64,
    #[error("join_request is not a WrappedJoinRequest")]
    Wrapper,
    #[error("join_request uses an unknown compression ({0})")]
    Compression(i32),
    #[error("join_request is not valid gzip")]
    Gzip,
    #[error("join_request is larger than {MAX_JOIN_REQUEST} bytes")]
    TooLarge,
    #[error("join_request does not hold a JoinRequest")]
    Payload,
}

/// Decodes the parameter as the SDK writes it; padded or not (Go's encoder pads, the SDK
/// keeps what `btoa` gives).
pub fn decode(param: &str) -> Result<proto::JoinRequest, JoinRequestError> {
    // Base64 of the largest payload we take, with room for the wrapper.
    if param.len() > MAX_JOIN_REQUEST / 3 * 4 + 64 {
        return Err(JoinRequestError::TooLarge);
    }
    let engine = if param.ends_with('=') { &URL_SAFE } else { &URL_SAFE_NO_PAD };
    let raw = engine.decode(param).map_err(|_| JoinRequestError::Base64)?;
    let wrapped = proto::WrappedJoinRequest::decode(raw.as_slice()).map_err(|_| JoinRequestError::Wrapper)?;
    let payload = match Compression::try_from(wrapped.compression) {
        Ok(Compression::None) => wrapped.join_request,
        Ok(Compression::Gzip) => gunzip(&wrapped.join_request)?,
        Err(_) => return Err(JoinRequestError::Compression(wrapped.compression)),
    };
    proto::JoinRequest::decode(payload.as_slice()).map_err(|_| JoinRequestError::Payload)
}

/// Inflates at most [`MAX_JOIN_REQUEST`] bytes; a bomb stops there.
fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, JoinRequestError> {
    let mut out = Vec::new();
    let mut reader = flate2::read::GzDecoder::new(bytes).take(MAX_JOIN_REQUEST as u64 + 1);
    reader.read_to_end(&mut out).map_err(|_| JoinRequestError::Gzip)?;
    if out.len() > MAX_JOIN_REQUEST {
        return Err(JoinRequestError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn join_request() -> proto::JoinRequest {
        proto::JoinRequest {
            publisher_offer: Some(proto::SessionDescription {
                r#type: "offer".into(),
                sdp: "v=0\r\n".into(),
                id: 1,
                ..Default::default()
            }),
            connection_settings: Some(proto::ConnectionSettings { auto_subscribe: true, ..Default::default() }),
            ..Default::default()
        }
    }

    fn wrap(compression: Compression, payload: Vec<u8>) -> Vec<u8> {
        proto::WrappedJoinRequest { compression: compression as i32, join_request: payload }.encode_to_vec()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzipped_and_plain_requests_decode_padded_or_not() {
        let want = join_request();
        for wrapped in
            [wrap(Compression::Gzip, gzip(&want.encode_to_vec())), wrap(Compression::None, want.encode_to_vec())]
        {
            assert_eq!(decode(&URL_SAFE.encode(&wrapped)).unwrap(), want);
            assert_eq!(decode(&URL_SAFE_NO_PAD.encode(&wrapped)).unwrap(), want);
        }
    }

    #[test]
    fn malformed_requests_are_refused_with_their_reason() {
        assert_eq!(decode("not base64!"), Err(JoinRequestError::Base64));
        assert_eq!(decode(&URL_SAFE.encode([0xff, 0xff])), Err(JoinRequestError::Wrapper));
        assert_eq!(decode(&URL_SAFE.encode(wrap(Compression::Gzip, b"plain".to_vec()))), Err(JoinRequestError::Gzip));
        let unknown = proto::WrappedJoinRequest { compression: 7, join_request: Vec::new() }.encode_to_vec();
        assert_eq!(decode(&URL_SAFE.encode(unknown)), Err(JoinRequestError::Compression(7)));
        assert_eq!(decode(&URL_SAFE.encode(wrap(Compression::None, vec![0xff; 3]))), Err(JoinRequestError::Payload));
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; MAX_JOIN_REQUEST * 4]);
        assert_eq!(decode(&URL_SAFE.encode(wrap(Compression::Gzip, bomb))), Err(JoinRequestError::TooLarge));
    }
}
