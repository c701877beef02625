//! The facts a call reads from an SDP answer (RFC 8866) by itself — where the first audio stream
//! goes, its payload types and their names, its direction, its ICE candidates — for the plain RTP
//! leg (which has no SDP library) and for reports of both legs. Reading never panics: what does
//! not parse is left out.

use std::net::{IpAddr, SocketAddr};

/// The first audio stream of a session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioStream {
    /// Media address: the stream's `c=` over the session's.
    pub ip: Option<IpAddr>,
    /// The m-line port (0: the stream was rejected).
    pub port: u16,
    /// Payload types in the m-line, in order.
    pub payload_types: Vec<u8>,
    /// `a=rtpmap` names, e.g. `(111, "opus/48000/2")`.
    pub rtpmaps: Vec<(u8, String)>,
    /// `sendrecv`, `sendonly`, `recvonly` or `inactive` (default sendrecv).
    pub direction: String,
    /// `a=candidate` values (without `a=`).
    pub candidates: Vec<String>,
}

impl AudioStream {
    /// Where to send RTP, when the stream has an address and a port.
    pub fn addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.ip?, self.port))
    }

    /// The codec names of the payload types, in m-line order (static types named by RFC 3551).
    pub fn codec_names(&self) -> Vec<String> {
        self.payload_types
            .iter()
            .map(|pt| {
                self.rtpmaps
                    .iter()
                    .find(|(p, _)| p == pt)
                    .map(|(_, n)| n.clone())
                    .or_else(|| static_payload_name(*pt).map(str::to_string))
                    .unwrap_or_else(|| format!("pt {pt}"))
            })
            .collect()
    }
}

/// Names of the static payload types of RFC 3551 a PBX meets.
pub fn static_payload_name(pt: u8) -> Option<&'static str> {
    Some(match pt {
        0 => "PCMU/8000",
        3 => "GSM/8000",
        8 => "PCMA/8000",
        9 => "G722/8000",
        18 => "G729/8000",
        _ => return None,
    })
}

/// The first audio stream of `sdp`.
pub fn audio(sdp: &str) -> Option<AudioStream> {
    let mut session_ip: Option<IpAddr> = None;
    let mut stream: Option<AudioStream> = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("m=") {
            if stream.is_some() {
                break;
            }
            let mut parts = rest.split_whitespace();
            if parts.next() != Some("audio") {
                continue;
            }
            let port = parts.next()?.split('/').next()?.parse().ok()?;
            let _proto = parts.next()?;
            stream = Some(AudioStream {
                ip: session_ip,
                port,
                payload_types: parts.filter_map(|p| p.parse().ok()).collect(),
                rtpmaps: Vec::new(),
                direction: "sendrecv".into(),
                candidates: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("c=IN ") {
            let ip = rest.split_whitespace().nth(1).and_then(|a| a.split('/').next()?.parse().ok());
            match stream.as_mut() {
                Some(s) => s.ip = ip,
                None => session_ip = ip,
            }
        } else if let (Some(s), Some(attr)) = (stream.as_mut(), line.strip_prefix("a=")) {
            if let Some(map) = attr.strip_prefix("rtpmap:") {
                if let Some((pt, name)) = map.split_once(' ') {
                    if let Ok(pt) = pt.parse() {
                        s.rtpmaps.push((pt, name.trim().to_string()));
                    }
                }
            } else if matches!(attr, "sendrecv" | "sendonly" | "recvonly" | "inactive") {
                s.direction = attr.to_string();
            } else if attr.starts_with("candidate:") {
                s.candidates.push(attr.to_string());
            }
        }
    }
    stream
}

/// One ICE candidate as a report shows it: `typ` and address (`host 192.0.2.2:30238`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CandidateInfo {
    /// host, srflx, prflx or relay.
    pub kind: String,
    /// Address.
    pub addr: SocketAddr,
}

impl std::fmt::Display for CandidateInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.addr)
    }
}

/// Reads `candidate:F C udp PRIO ADDR PORT typ KIND ...` (RFC 8839); UDP candidates only.
pub fn parse_candidate(value: &str) -> Option<CandidateInfo> {
    let mut p = value.strip_prefix("candidate:")?.split_whitespace();
    let (_foundation, _component, proto, _priority) = (p.next()?, p.next()?, p.next()?, p.next()?);
    if !proto.eq_ignore_ascii_case("udp") {
        return None;
    }
    let ip: IpAddr = p.next()?.parse().ok()?;
    let port: u16 = p.next()?.parse().ok()?;
    if p.next()? != "typ" {
        return None;
    }
    Some(CandidateInfo { kind: p.next()?.to_string(), addr: SocketAddr::new(ip, port) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_asterisk_answer() {
        let sdp = "v=0\r\no=- 1 3 IN IP4 192.0.2.2\r\ns=Asterisk\r\nc=IN IP4 192.0.2.2\r\nt=0 0\r\n\
                   m=audio 30010 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
                   a=recvonly\r\na=candidate:Ha 1 UDP 2130706431 192.0.2.2 30010 typ host\r\n\
                   m=video 0 RTP/AVP 96\r\nc=IN IP4 198.51.100.1\r\n";
        let a = audio(sdp).unwrap();
        assert_eq!(a.addr(), Some("192.0.2.2:30010".parse().unwrap()));
        assert_eq!(a.payload_types, vec![0, 101]);
        assert_eq!(a.codec_names(), vec!["PCMU/8000", "telephone-event/8000"]);
        assert_eq!(a.direction, "recvonly");
        let c = parse_candidate(&a.candidates[0]).unwrap();
        assert_eq!(c.to_string(), "host 192.0.2.2:30010");
    }

    #[test]
    fn stream_address_overrides_the_session_address_and_garbage_is_skipped() {
        let sdp = "c=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 3\r\nc=IN IP4 203.0.113.5\r\na=rtpmap:x y\r\n";
        let a = audio(sdp).unwrap();
        assert_eq!(a.addr(), Some("203.0.113.5:4000".parse().unwrap()));
        assert_eq!(a.codec_names(), vec!["GSM/8000"]);
        assert!(audio("m=audio x RTP/AVP 0").is_none());
        assert!(audio("").is_none());
        assert!(parse_candidate("candidate:1 1 tcp 1 192.0.2.1 9 typ host").is_none());
        assert!(parse_candidate("candidate:1 1 udp 1 nonsense 9 typ host").is_none());
    }
}
