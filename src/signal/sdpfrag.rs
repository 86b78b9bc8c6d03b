//! The `application/trickle-ice-sdpfrag` bodies of WHIP/WHEP PATCH (RFC 8840), and the
//! few SDP line edits an ICE restart needs. Parsed by us, so fuzzed.

/// Most lines a fragment may have; real ones have a handful.
const MAX_LINES: usize = 256;
/// Most candidates one fragment may carry: a client trickles each as it is gathered, a
/// handful per interface. The session's own total is capped by the WHIP layer.
pub const MAX_CANDIDATES: usize = 64;

/// What a PATCH fragment carries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SdpFrag {
    /// New `(ufrag, pwd)`: an ICE restart when they differ from the session's.
    pub ice: Option<(String, String)>,
    /// Candidate attributes without the `a=` prefix (`candidate:1 1 udp …`).
    pub candidates: Vec<String>,
    pub end_of_candidates: bool,
}

/// Why a fragment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpFragError {
    #[error("fragment has more than {MAX_LINES} lines")]
    TooLong,
    #[error("fragment has more than {MAX_CANDIDATES} candidates")]
    TooManyCandidates,
    #[error("a=ice-ufrag without a=ice-pwd (or the reverse)")]
    HalfCredentials,
    #[error("ICE credentials contain characters outside ice-char")]
    BadCredentials,
}

impl SdpFragError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SdpFragError::TooManyCandidates => "too_many_candidates",
            SdpFragError::TooLong | SdpFragError::HalfCredentials | SdpFragError::BadCredentials => "sdpfrag_malformed",
        }
    }
}

impl SdpFrag {
    pub fn parse(text: &str) -> Result<SdpFrag, SdpFragError> {
        let mut frag = SdpFrag::default();
        let (mut ufrag, mut pwd) = (None, None);
        for (n, line) in text.lines().enumerate() {
            if n >= MAX_LINES {
                return Err(SdpFragError::TooLong);
            }
            let line = line.trim();
            if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
                ufrag = Some(checked_ice_chars(v)?);
            } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
                pwd = Some(checked_ice_chars(v)?);
            } else if let Some(v) = line.strip_prefix("a=") {
                if v.starts_with("candidate:") {
                    if frag.candidates.len() == MAX_CANDIDATES {
                        return Err(SdpFragError::TooManyCandidates);
                    }
                    frag.candidates.push(v.to_string());
                } else if v == "end-of-candidates" {
                    frag.end_of_candidates = true;
                }
            }
        }
        frag.ice = match (ufrag, pwd) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => return Err(SdpFragError::HalfCredentials),
        };
        Ok(frag)
    }
}

/// RFC 8839 ice-char: ALPHA / DIGIT / "+" / "/".
fn checked_ice_chars(v: &str) -> Result<String, SdpFragError> {
    let v = v.trim();
    let ok = !v.is_empty() && v.len() <= 256 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
    if ok { Ok(v.to_string()) } else { Err(SdpFragError::BadCredentials) }
}

/// The first `a=ice-ufrag` of an SDP.
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines().find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
}

/// The SDP with every `a=ice-ufrag`/`a=ice-pwd` replaced.
pub fn replace_ice_credentials(sdp: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.lines() {
        let t = line.trim_end();
        if t.starts_with("a=ice-ufrag:") {
            out.push_str(&format!("a=ice-ufrag:{ufrag}"));
        } else if t.starts_with("a=ice-pwd:") {
            out.push_str(&format!("a=ice-pwd:{pwd}"));
        } else {
            out.push_str(t);
        }
        out.push_str("\r\n");
    }
    out
}

/// The fragment answering an ICE restart: our new credentials and candidates.
pub fn answer_fragment(answer_sdp: &str) -> String {
    let mut out = String::new();
    let mut seen = std::collections::HashSet::new();
    for line in answer_sdp.lines().map(str::trim) {
        let keep =
            line.starts_with("a=ice-ufrag:") || line.starts_with("a=ice-pwd:") || line.starts_with("a=candidate:");
        if keep && seen.insert(line) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("a=end-of-candidates\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trickle_and_restart() {
        let f = SdpFrag::parse("a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n").unwrap();
        assert_eq!(f.candidates, ["candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host"]);
        assert!(f.end_of_candidates && f.ice.is_none());
        let f = SdpFrag::parse("a=ice-ufrag:abcd\na=ice-pwd:0123456789abcdef012345\n").unwrap();
        assert_eq!(f.ice, Some(("abcd".into(), "0123456789abcdef012345".into())));
        assert_eq!(SdpFrag::parse("a=ice-ufrag:abcd\n"), Err(SdpFragError::HalfCredentials));
        assert_eq!(SdpFrag::parse("a=ice-ufrag:a\"b\na=ice-pwd:x\n"), Err(SdpFragError::BadCredentials));
        assert_eq!(SdpFrag::parse(&"\n".repeat(300)), Err(SdpFragError::TooLong));
    }

    #[test]
    fn candidates_are_capped_per_fragment() {
        let line = "a=candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host\r\n";
        let full = line.repeat(MAX_CANDIDATES);
        assert_eq!(SdpFrag::parse(&full).unwrap().candidates.len(), MAX_CANDIDATES);
        let over = SdpFrag::parse(&line.repeat(MAX_CANDIDATES + 1));
        assert_eq!(over, Err(SdpFragError::TooManyCandidates));
        assert_eq!(over.unwrap_err().code(), "too_many_candidates");
    }

    #[test]
    fn credentials_are_replaced() {
        let sdp = "v=0\r\na=ice-ufrag:old\r\na=ice-pwd:oldpwd\r\nm=audio 9 x\r\na=ice-ufrag:old\r\n";
        let out = replace_ice_credentials(sdp, "new", "newpwd");
        assert_eq!(ice_ufrag(&out), Some("new"));
        assert!(!out.contains("old"));
        assert_eq!(answer_fragment(&out), "a=ice-ufrag:new\r\na=ice-pwd:newpwd\r\na=end-of-candidates\r\n");
    }
}
