//! A small SIP user agent: REGISTER, OPTIONS and one outgoing call (INVITE, ACK, BYE) with MD5
//! digest authentication, over secure WebSocket (as a browser) or UDP (as a desk phone).
//!
//! Owns: transactions (UDP retransmission with RFC 3261 timer A, final-response timeouts),
//! answering one digest challenge per request — Asterisk re-challenges a wrong password with the
//! same nonce and no `stale`, so a second challenge ends the request as [`SipError::AuthRejected`]
//! instead of looping — and the dialog of one call. It answers the server's in-dialog requests
//! (BYE, OPTIONS) with 200. It is not a general SIP stack: no forking, no re-INVITEs, no TCP.
//! Every message sent or received is noted in a short ladder ([`UserAgent::ladder`]) for reports.

pub mod digest;
pub mod message;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

pub use self::message::{SipMessage, StartLine};
use super::token;
use super::ws::{WsConn, WsError};

/// The largest UDP datagram read; SIP over UDP stays below the path MTU in practice.
const UDP_BUFFER: usize = 8192;

/// At most this many ladder entries are kept per user agent.
const LADDER_MAX: usize = 64;

/// Why a SIP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    /// The WebSocket failed.
    #[error(transparent)]
    Ws(#[from] WsError),
    /// UDP I/O failed.
    #[error("SIP over UDP to {server} failed")]
    Udp {
        /// The server.
        server: SocketAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// No final response arrived in time.
    #[error("no final response to {method} within {waited:?}")]
    Timeout {
        /// The request.
        method: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The server challenged again after an authenticated request: the password is wrong.
    #[error("{method} answered {code} {reason} again after digest auth ({attempts} attempts)")]
    AuthRejected {
        /// The request.
        method: String,
        /// 401 or 407.
        code: u16,
        /// Reason phrase.
        reason: String,
        /// Requests sent.
        attempts: u32,
    },
    /// The challenge could not be answered (not MD5, no realm or nonce).
    #[error("cannot answer the challenge to {method}: {challenge:?}")]
    BadChallenge {
        /// The request.
        method: String,
        /// The challenge header.
        challenge: String,
    },
    /// A final error response.
    #[error("{method} answered {code} {reason}")]
    Rejected {
        /// The request.
        method: String,
        /// Status code.
        code: u16,
        /// Reason phrase.
        reason: String,
        /// Warning or Reason header, when the server said why.
        warning: Option<String>,
    },
}

/// How SIP messages travel.
pub enum Transport {
    /// SIP over secure WebSocket; Via and Contact carry a random `.invalid` host, as browsers do.
    Wss {
        /// The connection (boxed: it holds the TLS state).
        conn: Box<WsConn>,
        /// The `.invalid` host for Via and Contact.
        host: String,
    },
    /// SIP over UDP to one server.
    Udp {
        /// Our socket, connected to the server (datagrams from elsewhere are not read).
        sock: UdpSocket,
        /// The server.
        server: SocketAddr,
        /// Receive buffer.
        buf: Box<[u8]>,
    },
}

impl Transport {
    /// SIP over UDP from an ephemeral port on the interface that routes to `server`.
    pub async fn udp(server: SocketAddr) -> Result<Transport, SipError> {
        let err = |source| SipError::Udp { server, source };
        let any = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let sock = UdpSocket::bind(any).await.map_err(err)?;
        sock.connect(server).await.map_err(err)?;
        Ok(Transport::Udp { sock, server, buf: vec![0u8; UDP_BUFFER].into_boxed_slice() })
    }

    /// SIP over an open WebSocket.
    pub fn wss(conn: WsConn) -> Transport {
        Transport::Wss { conn: Box::new(conn), host: format!("{}.invalid", token()) }
    }

    /// Our address as the server sees it on this transport's network path (UDP only): the
    /// local address the kernel picked to reach the server.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Transport::Udp { sock, .. } => sock.local_addr().ok(),
            Transport::Wss { .. } => None,
        }
    }

    fn reliable(&self) -> bool {
        matches!(self, Transport::Wss { .. })
    }

    fn sent_by(&self) -> String {
        match self {
            Transport::Wss { host, .. } => host.clone(),
            Transport::Udp { sock, .. } => sock.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        }
    }

    fn via(&self, branch: &str) -> String {
        match self {
            Transport::Wss { host, .. } => format!("SIP/2.0/WSS {host};branch={branch}"),
            Transport::Udp { .. } => format!("SIP/2.0/UDP {};rport;branch={branch}", self.sent_by()),
        }
    }

    fn contact(&self, user: &str) -> String {
        match self {
            Transport::Wss { host, .. } => format!("<sip:{user}@{host};transport=ws>"),
            Transport::Udp { .. } => format!("<sip:{user}@{}>", self.sent_by()),
        }
    }

    async fn send(&mut self, msg: &str) -> Result<(), SipError> {
        match self {
            Transport::Wss { conn, .. } => Ok(conn.send_text(msg).await?),
            Transport::Udp { sock, server, .. } => match sock.send(msg.as_bytes()).await {
                Ok(_) => Ok(()),
                // An ICMP error from an earlier datagram: the retransmission timer covers it.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
                Err(source) => Err(SipError::Udp { server: *server, source }),
            },
        }
    }

    /// The next SIP message; what does not parse (keep-alive CRLFs) is skipped. Cancel-safe.
    async fn recv(&mut self) -> Result<SipMessage, SipError> {
        loop {
            let text = match self {
                Transport::Wss { conn, .. } => conn.recv_text().await?,
                Transport::Udp { sock, server, buf } => match sock.recv(buf).await {
                    Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                    // An ICMP port unreachable from an earlier send: nobody listens (yet).
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                    Err(source) => return Err(SipError::Udp { server: *server, source }),
                },
            };
            if let Some(m) = SipMessage::parse(&text) {
                return Ok(m);
            }
        }
    }
}

/// An outgoing request, before it is written.
struct Request {
    method: &'static str,
    uri: String,
    call_id: String,
    from: String,
    to: String,
    cseq: u32,
    branch: String,
    headers: Vec<String>,
    body: Option<(&'static str, String)>,
}

impl Request {
    fn render(&self, t: &Transport) -> String {
        let mut m = format!(
            "{method} {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nUser-Agent: astrtc\r\n",
            method = self.method,
            uri = self.uri,
            via = t.via(&self.branch),
            from = self.from,
            to = self.to,
            call_id = self.call_id,
            cseq = self.cseq,
        );
        for h in &self.headers {
            m.push_str(h);
            m.push_str("\r\n");
        }
        match &self.body {
            Some((ctype, body)) => {
                m.push_str(&format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}", body.len()))
            }
            None => m.push_str("Content-Length: 0\r\n\r\n"),
        }
        m
    }
}

/// An established call.
#[derive(Debug, Clone)]
pub struct Dialog {
    call_id: String,
    from: String,
    to: String,
    remote_target: String,
    route: Vec<String>,
    cseq: u32,
    /// The answer's SDP.
    pub remote_sdp: String,
}

/// What an answered INVITE took.
#[derive(Debug, Clone)]
pub struct InviteOutcome {
    /// The dialog.
    pub dialog: Dialog,
    /// When the first INVITE (before any challenge) was sent.
    pub first_invite_sent: Instant,
    /// When the 200 arrived.
    pub answered: Instant,
    /// INVITEs sent (2 with a digest challenge).
    pub attempts: u32,
}

/// How a call's hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// The planned time passed.
    Elapsed,
    /// The server hung up (BYE).
    RemoteBye,
}

/// The user agent: one account on one transport.
pub struct UserAgent {
    transport: Transport,
    user: String,
    password: String,
    domain: String,
    reg_call_id: String,
    reg_tag: String,
    reg_cseq: u32,
    started: Instant,
    ladder: Vec<String>,
    /// Final response timeout per transaction.
    pub timeout: Duration,
}

impl UserAgent {
    /// An agent for `user@domain` on `transport`.
    pub fn new(transport: Transport, user: &str, password: &str, domain: &str) -> UserAgent {
        UserAgent {
            transport,
            user: user.into(),
            password: password.into(),
            domain: domain.into(),
            reg_call_id: token(),
            reg_tag: token(),
            reg_cseq: 0,
            started: Instant::now(),
            ladder: Vec::new(),
            timeout: Duration::from_secs(8),
        }
    }

    /// The transport (to read its local address).
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Closes the transport (the WebSocket gracefully).
    pub async fn close(self) {
        if let Transport::Wss { conn, .. } = self.transport {
            (*conn).close().await;
        }
    }

    /// The address-of-record URI.
    pub fn aor(&self) -> String {
        format!("sip:{}@{}", self.user, self.domain)
    }

    /// Messages sent (`->`) and received (`<-`) so far, one start line each with the time since
    /// the agent was made, e.g. `12.3 ms <- 401 Unauthorized (REGISTER)`.
    pub fn ladder(&self) -> &[String] {
        &self.ladder
    }

    fn note(&mut self, arrow: &str, what: String) {
        if self.ladder.len() < LADDER_MAX {
            let ms = self.started.elapsed().as_secs_f64() * 1000.0;
            self.ladder.push(format!("{ms:.1} ms {arrow} {what}"));
        }
    }

    async fn send_raw(&mut self, text: &str) -> Result<(), SipError> {
        let first = text.split("\r\n").next().unwrap_or_default();
        let what = first.split(' ').next().unwrap_or_default().to_string();
        let what = if what == "SIP/2.0" { first.trim_start_matches("SIP/2.0 ").to_string() } else { what };
        self.note("->", what);
        self.transport.send(text).await
    }

    async fn recv_raw(&mut self) -> Result<SipMessage, SipError> {
        let m = self.transport.recv().await?;
        self.note("<-", m.summary());
        Ok(m)
    }

    /// The next message from the server, whatever it is (the answering side's loop: the
    /// server's INVITEs, ACKs and BYEs, and stray responses). Cancel-safe.
    pub async fn next_message(&mut self) -> Result<SipMessage, SipError> {
        self.transport.recv().await
    }

    /// Our Contact for this transport, e.g. `<sip:3001@127.0.0.1:40000>`.
    pub fn contact(&self) -> String {
        self.transport.contact(&self.user)
    }

    /// Sends a response to `req`: its Via, Record-Route (RFC 3261 12.1.1: a proxy in front, such
    /// as a cluster's edge, stays in the dialog), From, Call-ID and CSeq, its To with `to_tag`
    /// added (when the To has none yet), then `headers` and an SDP `body`.
    pub async fn respond(
        &mut self,
        req: &SipMessage,
        status: &str,
        to_tag: Option<&str>,
        headers: &[String],
        body: Option<&str>,
    ) -> Result<(), SipError> {
        let mut r = format!("SIP/2.0 {status}\r\n");
        for v in req.headers("Via") {
            r.push_str(&format!("Via: {v}\r\n"));
        }
        for v in req.headers("Record-Route") {
            r.push_str(&format!("Record-Route: {v}\r\n"));
        }
        for h in ["From", "Call-ID", "CSeq"] {
            if let Some(v) = req.header(h) {
                r.push_str(&format!("{h}: {v}\r\n"));
            }
        }
        let to = req.header("To").unwrap_or_default();
        match to_tag {
            Some(tag) if !to.contains(";tag=") => r.push_str(&format!("To: {to};tag={tag}\r\n")),
            _ => r.push_str(&format!("To: {to}\r\n")),
        }
        r.push_str("User-Agent: astrtc\r\n");
        for h in headers {
            r.push_str(h);
            r.push_str("\r\n");
        }
        match body {
            Some(b) => r.push_str(&format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}", b.len())),
            None => r.push_str("Content-Length: 0\r\n\r\n"),
        }
        // Not in the ladder: an answering agent serves many calls, the ladder is for one.
        self.transport.send(&r).await
    }

    /// Answers a request from the server: 200 to BYE, OPTIONS, NOTIFY and CANCEL, else 501.
    async fn answer(&mut self, req: &SipMessage) -> Result<(), SipError> {
        let StartLine::Request { method, .. } = &req.start else { return Ok(()) };
        if method == "ACK" {
            return Ok(());
        }
        let code = if matches!(method.as_str(), "BYE" | "OPTIONS" | "NOTIFY" | "CANCEL") {
            "200 OK"
        } else {
            "501 Not Implemented"
        };
        let mut r = format!("SIP/2.0 {code}\r\n");
        for v in req.headers("Via") {
            r.push_str(&format!("Via: {v}\r\n"));
        }
        for h in ["From", "To", "Call-ID", "CSeq"] {
            if let Some(v) = req.header(h) {
                r.push_str(&format!("{h}: {v}\r\n"));
            }
        }
        r.push_str("Content-Length: 0\r\n\r\n");
        self.send_raw(&r).await
    }

    /// Sends `req` and waits for its final response, retransmitting over UDP (timer A doubling
    /// from 500 ms up to 4 s) and answering server requests meanwhile. A non-2xx final response
    /// to an INVITE is acknowledged here.
    async fn transact(&mut self, req: &Request) -> Result<SipMessage, SipError> {
        let text = req.render(&self.transport);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut rto = Duration::from_millis(500);
        self.send_raw(&text).await?;
        let mut next_retransmit = tokio::time::Instant::now() + rto;
        loop {
            let msg = tokio::select! {
                m = self.recv_raw() => m?,
                _ = tokio::time::sleep_until(next_retransmit), if !self.transport.reliable() => {
                    self.send_raw(&text).await?;
                    rto = (rto * 2).min(Duration::from_secs(4));
                    next_retransmit = tokio::time::Instant::now() + rto;
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(SipError::Timeout { method: req.method.into(), waited: started.elapsed() });
                }
            };
            if let StartLine::Request { .. } = msg.start {
                self.answer(&msg).await?;
                continue;
            }
            let ours =
                msg.header("Call-ID") == Some(req.call_id.as_str()) && msg.cseq() == Some((req.cseq, req.method));
            let Some(code) = msg.code().filter(|_| ours) else { continue };
            if code < 200 {
                // Provisional: the server has it; stop retransmitting, keep waiting.
                next_retransmit = deadline;
                continue;
            }
            if req.method == "INVITE" && code >= 300 {
                let ack = Request {
                    method: "ACK",
                    uri: req.uri.clone(),
                    call_id: req.call_id.clone(),
                    from: req.from.clone(),
                    to: msg.header("To").unwrap_or(&req.to).to_string(),
                    cseq: req.cseq,
                    branch: req.branch.clone(),
                    headers: Vec::new(),
                    body: None,
                };
                let text = ack.render(&self.transport);
                self.send_raw(&text).await?;
            }
            return Ok(msg);
        }
    }

    /// Sends the request `build(cseq, authorization)` makes, answering one digest challenge.
    /// Returns the final response, the last CSeq and the number of requests sent.
    async fn authenticated(
        &mut self,
        method: &'static str,
        uri: &str,
        first_cseq: u32,
        mut build: impl FnMut(u32, Option<String>) -> Request,
    ) -> Result<(SipMessage, u32, u32), SipError> {
        let mut cseq = first_cseq;
        let mut attempts = 1;
        let mut resp = self.transact(&build(cseq, None)).await?;
        while let Some(code @ (401 | 407)) = resp.code() {
            let (challenge_header, auth_header) = if code == 401 {
                ("WWW-Authenticate", "Authorization")
            } else {
                ("Proxy-Authenticate", "Proxy-Authorization")
            };
            let challenge = resp.header(challenge_header).unwrap_or_default().to_string();
            let stale = digest::param(&challenge, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true"));
            // A second challenge means the credentials were refused, unless the server says the
            // nonce was merely stale (then one more try).
            if attempts >= 2 && !(stale && attempts < 3) {
                return Err(SipError::AuthRejected {
                    method: method.into(),
                    code,
                    reason: resp.reason().to_string(),
                    attempts,
                });
            }
            let auth = digest::authorization(&challenge, method, uri, &self.user, &self.password)
                .ok_or_else(|| SipError::BadChallenge { method: method.into(), challenge: challenge.clone() })?;
            cseq += 1;
            attempts += 1;
            resp = self.transact(&build(cseq, Some(format!("{auth_header}: {auth}")))).await?;
        }
        Ok((resp, cseq, attempts))
    }

    /// REGISTERs for `expires` seconds (0 removes the binding); the 2xx response.
    pub async fn register(&mut self, expires: u32) -> Result<SipMessage, SipError> {
        let uri = format!("sip:{}", self.domain);
        let (aor, tag, call_id, contact) =
            (self.aor(), self.reg_tag.clone(), self.reg_call_id.clone(), self.transport.contact(&self.user));
        let (resp, cseq, _) = self
            .authenticated("REGISTER", &uri.clone(), self.reg_cseq + 1, |cseq, auth| Request {
                method: "REGISTER",
                uri: uri.clone(),
                call_id: call_id.clone(),
                from: format!("<{aor}>;tag={tag}"),
                to: format!("<{aor}>"),
                cseq,
                branch: format!("z9hG4bK{}", token()),
                headers: [
                    Some(format!("Contact: {contact};expires={expires}")),
                    Some(format!("Expires: {expires}")),
                    auth,
                ]
                .into_iter()
                .flatten()
                .collect(),
                body: None,
            })
            .await?;
        self.reg_cseq = cseq;
        match resp.code() {
            Some(200..=299) => Ok(resp),
            _ => Err(rejected("REGISTER", &resp)),
        }
    }

    /// Sends an OPTIONS to `uri` (out of dialog, no authentication) and returns the final
    /// response, whatever its code: any answer proves a SIP server listens there.
    pub async fn options(&mut self, uri: &str) -> Result<SipMessage, SipError> {
        let req = Request {
            method: "OPTIONS",
            uri: uri.to_string(),
            call_id: token(),
            from: format!("<{}>;tag={}", self.aor(), token()),
            to: format!("<{uri}>"),
            cseq: 1,
            branch: format!("z9hG4bK{}", token()),
            headers: vec!["Accept: application/sdp".to_string()],
            body: None,
        };
        self.transact(&req).await
    }

    /// INVITEs `target` (an extension at the domain) with `sdp`; on 200, sends the ACK.
    pub async fn invite(&mut self, target: &str, sdp: &str) -> Result<InviteOutcome, SipError> {
        let uri = format!("sip:{target}@{}", self.domain);
        let call_id = token();
        let from = format!("<{}>;tag={}", self.aor(), token());
        let to = format!("<{uri}>");
        let contact = self.transport.contact(&self.user);
        let reliable = self.transport.reliable();
        let first_invite_sent = Instant::now();
        let (resp, cseq, attempts) = self
            .authenticated("INVITE", &uri.clone(), 1, |cseq, auth| Request {
                method: "INVITE",
                uri: uri.clone(),
                call_id: call_id.clone(),
                from: from.clone(),
                to: to.clone(),
                cseq,
                branch: format!("z9hG4bK{}", token()),
                headers: [
                    Some(format!("Contact: {contact}")),
                    Some("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS".to_string()),
                    Some("Supported: outbound".to_string()).filter(|_| reliable),
                    auth,
                ]
                .into_iter()
                .flatten()
                .collect(),
                body: Some(("application/sdp", sdp.to_string())),
            })
            .await?;
        let answered = Instant::now();
        if !matches!(resp.code(), Some(200..=299)) {
            return Err(rejected("INVITE", &resp));
        }
        let remote_target = resp.header("Contact").and_then(message::angle_uri).unwrap_or(&uri).to_string();
        let mut route: Vec<String> = resp.headers("Record-Route").map(str::to_string).collect();
        route.reverse();
        let dialog = Dialog {
            call_id,
            from,
            to: resp.header("To").unwrap_or(&to).to_string(),
            remote_target,
            route,
            cseq,
            remote_sdp: resp.body.clone(),
        };
        self.send_ack(&dialog).await?;
        Ok(InviteOutcome { dialog, first_invite_sent, answered, attempts })
    }

    fn in_dialog(&self, d: &Dialog, method: &'static str, cseq: u32) -> Request {
        Request {
            method,
            uri: d.remote_target.clone(),
            call_id: d.call_id.clone(),
            from: d.from.clone(),
            to: d.to.clone(),
            cseq,
            branch: format!("z9hG4bK{}", token()),
            headers: d.route.iter().map(|r| format!("Route: {r}")).collect(),
            body: None,
        }
    }

    async fn send_ack(&mut self, d: &Dialog) -> Result<(), SipError> {
        let text = self.in_dialog(d, "ACK", d.cseq).render(&self.transport);
        self.send_raw(&text).await
    }

    /// Keeps the call up until `until`: answers server requests, re-ACKs retransmitted 200s.
    /// Returns early when the server hangs up.
    pub async fn hold_call(&mut self, d: &Dialog, until: tokio::time::Instant) -> Result<CallEnd, SipError> {
        loop {
            let msg = tokio::select! {
                m = self.recv_raw() => m?,
                _ = tokio::time::sleep_until(until) => return Ok(CallEnd::Elapsed),
            };
            match &msg.start {
                StartLine::Request { method, .. } => {
                    self.answer(&msg).await?;
                    if method == "BYE" && msg.header("Call-ID") == Some(d.call_id.as_str()) {
                        return Ok(CallEnd::RemoteBye);
                    }
                }
                StartLine::Response { code: 200..=299, .. } if msg.cseq() == Some((d.cseq, "INVITE")) => {
                    self.send_ack(d).await?;
                }
                StartLine::Response { .. } => {}
            }
        }
    }

    /// Hangs up; the BYE's final response.
    pub async fn bye(&mut self, d: &mut Dialog) -> Result<SipMessage, SipError> {
        d.cseq += 1;
        let req = self.in_dialog(d, "BYE", d.cseq);
        self.transact(&req).await
    }
}

fn rejected(method: &str, resp: &SipMessage) -> SipError {
    SipError::Rejected {
        method: method.into(),
        code: resp.code().unwrap_or_default(),
        reason: resp.reason().to_string(),
        warning: resp.header("Warning").or_else(|| resp.header("Reason")).map(str::to_string),
    }
}
