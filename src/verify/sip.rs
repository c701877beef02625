//! SIP as a client sees it: a REGISTER over WSS with digest authentication (then removed with
//! `Expires: 0`), and an OPTIONS over UDP. Just enough WebSocket framing and SIP to prove a
//! deployment accepts a browser's registration — not a SIP stack.

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use md5::{Digest, Md5};

use super::tls::{self, TlsStream, VerifyError};

/// A SIP response's status code and headers.
#[derive(Debug, Clone)]
pub struct SipResponse {
    /// Status code.
    pub code: u16,
    /// Reason phrase.
    pub reason: String,
    /// The whole message.
    pub raw: String,
}

impl SipResponse {
    fn parse(raw: String) -> Option<SipResponse> {
        let first = raw.lines().next()?;
        let mut parts = first.splitn(3, ' ');
        if parts.next()? != "SIP/2.0" {
            return None;
        }
        let code = parts.next()?.parse().ok()?;
        let reason = parts.next().unwrap_or("").to_string();
        Some(SipResponse { code, reason, raw })
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.raw.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn token() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_md5(s: &str) -> String {
    Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `Digest` parameters of a challenge.
fn digest_param(challenge: &str, name: &str) -> Option<String> {
    let rest = challenge.trim().strip_prefix("Digest")?.trim();
    for part in split_params(rest) {
        let (k, v) = part.split_once('=')?;
        if k.trim().eq_ignore_ascii_case(name) {
            return Some(v.trim().trim_matches('"').to_string());
        }
    }
    None
}

fn split_params(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// The `Authorization` header answering `challenge` (MD5, with or without qop=auth).
pub fn digest_authorization(challenge: &str, method: &str, uri: &str, user: &str, password: &str) -> Option<String> {
    let realm = digest_param(challenge, "realm")?;
    let nonce = digest_param(challenge, "nonce")?;
    let algorithm = digest_param(challenge, "algorithm").unwrap_or_else(|| "MD5".into());
    if !algorithm.eq_ignore_ascii_case("MD5") {
        return None;
    }
    let ha1 = hex_md5(&format!("{user}:{realm}:{password}"));
    let ha2 = hex_md5(&format!("{method}:{uri}"));
    let opaque = digest_param(challenge, "opaque").map(|o| format!(", opaque=\"{o}\"")).unwrap_or_default();
    let qop = digest_param(challenge, "qop");
    if qop.as_deref().is_some_and(|q| q.split(',').any(|x| x.trim() == "auth")) {
        let cnonce = token();
        let nc = "00000001";
        let response = hex_md5(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        Some(format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cnonce}\"{opaque}"
        ))
    } else {
        let response = hex_md5(&format!("{ha1}:{nonce}:{ha2}"));
        Some(format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5{opaque}"
        ))
    }
}

fn ws_send_text(s: &mut TlsStream, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = vec![0x81u8];
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len < 65536 {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mut mask = [0u8; 4];
    getrandom::fill(&mut mask).expect("the OS random source failed");
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame)?;
    s.flush()
}

fn ws_recv_text(s: &mut TlsStream) -> std::io::Result<String> {
    loop {
        let mut head = [0u8; 2];
        s.read_exact(&mut head)?;
        let opcode = head[0] & 0x0f;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            len = u64::from_be_bytes(b);
        }
        let mask = if head[1] & 0x80 != 0 {
            let mut m = [0u8; 4];
            s.read_exact(&mut m)?;
            Some(m)
        } else {
            None
        };
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload)?;
        if let Some(m) = mask {
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
        }
        match opcode {
            0x1 | 0x2 => return Ok(String::from_utf8_lossy(&payload).into_owned()),
            0x8 => return Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "WebSocket closed")),
            _ => continue, // ping/pong/continuation: not used by Asterisk for SIP
        }
    }
}

/// What a registration attempt saw.
#[derive(Debug, Clone)]
pub struct RegisterOutcome {
    /// Final response to the authenticated REGISTER.
    pub registered: SipResponse,
    /// Final response to the removing REGISTER (`Expires: 0`).
    pub removed: Option<SipResponse>,
}

/// An open SIP-over-WebSocket connection, as a browser holds one.
pub struct WssSession {
    ws: TlsStream,
    addr: SocketAddr,
    domain: String,
    call_id: String,
    tag: String,
    host: String,
    cseq: u32,
}

impl WssSession {
    /// Opens the TLS connection and upgrades it to a WebSocket with the `sip` subprotocol.
    pub fn open(addr: SocketAddr, domain: &str, ca_pem: &str) -> Result<WssSession, VerifyError> {
        let ws = tls::websocket(addr, domain, ca_pem, "/ws")?;
        Ok(WssSession {
            ws,
            addr,
            domain: domain.into(),
            call_id: token(),
            tag: token(),
            host: format!("{}.invalid", token()),
            cseq: 0,
        })
    }

    fn transact(&mut self, user: &str, expires: u32, auth: Option<String>) -> Result<SipResponse, VerifyError> {
        let (addr, domain) = (self.addr, self.domain.clone());
        let io = |source| VerifyError::Tls { addr, domain: domain.clone(), source };
        self.cseq += 1;
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let msg = format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/WSS {host};branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\n\
             To: <sip:{user}@{domain}>\r\nFrom: <sip:{user}@{domain}>;tag={tag}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{host};transport=ws>;expires={expires}\r\n\
             Expires: {expires}\r\n{auth}User-Agent: astrtc-verify\r\nContent-Length: 0\r\n\r\n",
            host = self.host,
            tag = self.tag,
            call_id = self.call_id,
            cseq = self.cseq,
            branch = token()
        );
        ws_send_text(&mut self.ws, msg.as_bytes()).map_err(io)?;
        loop {
            let text = ws_recv_text(&mut self.ws).map_err(io)?;
            if let Some(r) = SipResponse::parse(text) {
                if r.code >= 200 {
                    return Ok(r);
                }
            }
        }
    }

    /// REGISTERs `user` for `expires` seconds (0 removes the binding), answering one digest
    /// challenge. Returns the final response.
    pub fn register(&mut self, user: &str, password: &str, expires: u32) -> Result<SipResponse, VerifyError> {
        let first = self.transact(user, expires, None)?;
        if first.code != 401 && first.code != 407 {
            return Ok(first);
        }
        let uri = format!("sip:{}", self.domain);
        let challenge = first.header("WWW-Authenticate").or_else(|| first.header("Proxy-Authenticate"));
        let Some(auth) = challenge.and_then(|c| digest_authorization(c, "REGISTER", &uri, user, password)) else {
            return Ok(first);
        };
        self.transact(user, expires, Some(auth))
    }
}

/// REGISTERs `user` over WSS with digest auth, then removes the binding.
pub fn register_over_wss(
    addr: SocketAddr,
    domain: &str,
    ca_pem: &str,
    user: &str,
    password: &str,
) -> Result<RegisterOutcome, VerifyError> {
    let mut session = WssSession::open(addr, domain, ca_pem)?;
    let registered = session.register(user, password, 60)?;
    let removed = if registered.code == 200 { Some(session.register(user, password, 0)?) } else { None };
    Ok(RegisterOutcome { registered, removed })
}

/// Sends a SIP OPTIONS over UDP and returns the response, or `None` on timeout.
pub fn options_over_udp(addr: SocketAddr, timeout: Duration) -> std::io::Result<Option<SipResponse>> {
    let sock = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    sock.set_read_timeout(Some(timeout))?;
    let local = sock.local_addr()?;
    let msg = format!(
        "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{b}\r\nMax-Forwards: 70\r\n\
         To: <sip:{addr}>\r\nFrom: <sip:astrtc-verify@{local}>;tag={t}\r\nCall-ID: {c}\r\nCSeq: 1 OPTIONS\r\n\
         Accept: application/sdp\r\nUser-Agent: astrtc-verify\r\nContent-Length: 0\r\n\r\n",
        b = token(),
        t = token(),
        c = token()
    );
    sock.send_to(msg.as_bytes(), addr)?;
    let mut buf = vec![0u8; 65535];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Some(r) = SipResponse::parse(String::from_utf8_lossy(&buf[..n]).into_owned()) {
                    if r.code >= 200 {
                        return Ok(Some(r));
                    }
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_rfc2617_example() {
        // RFC 2617 section 3.5, with its fixed cnonce and nc.
        let ha1 = hex_md5("Mufasa:testrealm@host.com:Circle Of Life");
        let ha2 = hex_md5("GET:/dir/index.html");
        let r = hex_md5(&format!("{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:{ha2}"));
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn challenge_parameters_and_authorization() {
        let c = r#"Digest realm="asterisk",nonce="1700000000/abc",opaque="7f",algorithm=MD5,qop="auth""#;
        assert_eq!(digest_param(c, "realm").as_deref(), Some("asterisk"));
        assert_eq!(digest_param(c, "nonce").as_deref(), Some("1700000000/abc"));
        let a = digest_authorization(c, "REGISTER", "sip:localhost", "199", "pw").unwrap();
        assert!(a.contains("qop=auth") && a.contains("opaque=\"7f\"") && a.contains("username=\"199\""));
        assert!(digest_authorization(&c.replace("MD5", "SHA-256"), "REGISTER", "sip:x", "u", "p").is_none());
    }
}
