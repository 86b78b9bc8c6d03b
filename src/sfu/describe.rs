//! Rewrites the sending m-lines of an answer str0m wrote, for a client that only ever offers
//! (LiveKit's single peer connection): str0m cannot be told the msid of a line it answers,
//! nor to leave a line it could send on inactive.

use str0m::media::Mid;

use crate::ids::TrackId;

/// A line that now forwards `track`, announced with msid `<stream> <track>`.
#[derive(Debug, Clone)]
pub struct Sending {
    pub mid: Mid,
    pub stream: String,
    pub track: TrackId,
}

/// Every audio and video m-section of `sdp` listed in `sending` gets that msid and `sendonly`
/// (`sendrecv` stays: the client sends on it too; a line str0m answered `recvonly` carries
/// only what the client sends and is left alone). A client that took an earlier `inactive`
/// as its own direction offers the line `inactive` again, and str0m answers it so: it is
/// made `sendonly` too. Every other line str0m answered `sendonly` becomes `inactive`,
/// without an msid. Everything else is kept as it is.
pub fn sending_lines(sdp: &str, sending: &[Sending]) -> String {
    let mut out = String::with_capacity(sdp.len() + 64 * sending.len());
    let mut sections = split_sections(sdp);
    let session = sections.remove(0);
    push_lines(&mut out, &session);
    for section in sections {
        let media = section.first().is_some_and(|l| l.starts_with("m=audio") || l.starts_with("m=video"));
        let mid = section.iter().find_map(|l| l.strip_prefix("a=mid:"));
        let assigned = mid.and_then(|m| sending.iter().find(|s| s.mid.to_string() == m));
        let ours = !section.contains(&"a=recvonly");
        match (media && ours, assigned) {
            (true, Some(s)) => push_lines(&mut out, &announce(&section, &format!("{} {}", s.stream, s.track))),
            (true, None) if section.contains(&"a=sendonly") => push_lines(&mut out, &silence(&section)),
            _ => push_lines(&mut out, &section),
        }
    }
    out
}

/// Lines grouped into the session part and one group per `m=` section.
fn split_sections(sdp: &str) -> Vec<Vec<&str>> {
    let mut sections = vec![Vec::new()];
    for line in sdp.lines().filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            sections.push(Vec::new());
        }
        sections.last_mut().expect("starts with one").push(line);
    }
    sections
}

fn push_lines(out: &mut String, lines: &[impl AsRef<str>]) {
    for l in lines {
        out.push_str(l.as_ref());
        out.push_str("\r\n");
    }
}

fn is_direction(line: &str) -> bool {
    matches!(line, "a=sendonly" | "a=recvonly" | "a=sendrecv" | "a=inactive")
}

/// `a=ssrc:<n> msid:…`
fn is_ssrc_msid(line: &str) -> bool {
    line.strip_prefix("a=ssrc:").is_some_and(|rest| rest.split_once(' ').is_some_and(|(_, a)| a.starts_with("msid:")))
}

fn announce<'a>(section: &[&'a str], msid: &str) -> Vec<std::borrow::Cow<'a, str>> {
    let mut lines = Vec::with_capacity(section.len() + 1);
    for &l in section {
        if is_direction(l) {
            lines.push(if l == "a=sendrecv" { l.into() } else { "a=sendonly".into() });
            lines.push(format!("a=msid:{msid}").into());
        } else if l.starts_with("a=msid:") {
            continue;
        } else if is_ssrc_msid(l) {
            let ssrc = l.split_once(' ').map_or(l, |(s, _)| s);
            lines.push(format!("{ssrc} msid:{msid}").into());
        } else {
            lines.push(l.into());
        }
    }
    lines
}

fn silence<'a>(section: &[&'a str]) -> Vec<&'a str> {
    section
        .iter()
        .filter(|l| !l.starts_with("a=msid:") && !is_ssrc_msid(l))
        .map(|&l| if l == "a=sendonly" { "a=inactive" } else { l })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\n\
        o=str0m-1 1 2 IN IP4 0.0.0.0\r\n\
        s=-\r\n\
        t=0 0\r\n\
        a=group:BUNDLE 0 1 2 3\r\n\
        a=msid-semantic: WMS abc\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        a=mid:0\r\n\
        a=sctp-port:5000\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=mid:1\r\n\
        a=sendonly\r\n\
        a=msid:abc def\r\n\
        a=rtpmap:111 opus/48000/2\r\n\
        a=ssrc:11 cname:x\r\n\
        a=ssrc:11 msid:abc def\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
        a=mid:2\r\n\
        a=sendonly\r\n\
        a=msid:abc ghi\r\n\
        a=ssrc:22 cname:x\r\n\
        a=ssrc:22 msid:abc ghi\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
        a=mid:3\r\n\
        a=recvonly\r\n\
        a=msid:abc jkl\r\n";

    fn section<'a>(sdp: &'a str, mid: &str) -> Vec<&'a str> {
        split_sections(sdp).into_iter().find(|s| s.contains(&format!("a=mid:{mid}").as_str())).unwrap()
    }

    #[test]
    fn assigned_lines_send_with_the_track_msid_and_the_rest_fall_silent() {
        let mid: Mid = "1".into();
        let out = sending_lines(ANSWER, &[Sending { mid, stream: "PA_1|TR_2".into(), track: TrackId(2) }]);
        let audio = section(&out, "1");
        assert!(audio.contains(&"a=sendonly"));
        assert!(audio.contains(&"a=msid:PA_1|TR_2 TR_2"));
        assert!(audio.contains(&"a=ssrc:11 msid:PA_1|TR_2 TR_2"));
        assert!(audio.contains(&"a=ssrc:11 cname:x"));
        assert!(!audio.contains(&"a=msid:abc def"));

        let idle = section(&out, "2");
        assert!(idle.contains(&"a=inactive"));
        assert!(!idle.iter().any(|l| l.contains("msid")), "{idle:?}");

        // What the client sends on stays as str0m answered it; so do the session and data parts.
        assert_eq!(section(&out, "3"), section(ANSWER, "3"));
        assert_eq!(section(&out, "0"), section(ANSWER, "0"));
        assert!(out.starts_with("v=0\r\no=str0m-1 1 2 IN IP4 0.0.0.0\r\n"));
        assert!(out.ends_with("\r\n"));
    }

    #[test]
    fn a_line_the_client_also_sends_on_keeps_sendrecv_and_one_that_does_not_send_is_left_alone() {
        let sdp = ANSWER.replace("a=mid:1\r\na=sendonly", "a=mid:1\r\na=sendrecv");
        let (one, three): (Mid, Mid) = ("1".into(), "3".into());
        let sending = [
            Sending { mid: one, stream: "PA_1|TR_2".into(), track: TrackId(2) },
            Sending { mid: three, stream: "PA_1|TR_4".into(), track: TrackId(4) },
        ];
        let out = sending_lines(&sdp, &sending);
        let audio = section(&out, "1");
        assert!(audio.contains(&"a=sendrecv") && audio.contains(&"a=msid:PA_1|TR_2 TR_2"), "{audio:?}");
        // Mid 3 was answered recvonly: nothing of ours is sent there, whatever the list says.
        assert_eq!(section(&out, "3"), section(&sdp, "3"));
    }

    #[test]
    fn an_answer_without_sending_lines_is_unchanged() {
        let sdp = ANSWER.replace("a=sendonly", "a=recvonly");
        assert_eq!(sending_lines(&sdp, &[]), sdp);
    }
}
