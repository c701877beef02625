//! A live SIP call with audio, and its figures, for the tests of `astrtc apply`, the drain and
//! the metrics: a minimal user agent over UDP (INVITE with digest auth, ACK, BYE; answers a BYE
//! from the server) that sends G.711 µ-law every 20 ms and records when each packet comes back
//! (the echo extension returns what it hears), so the longest silence between two received
//! packets is the RTP gap a listener would hear.
//!
//! It stands in for the media probe (`src/media`, being built for issue 12): the tests use only
//! [`Call::start`], [`Call::stats`], [`Call::hang_up`], [`Call::wait_ended`] and
//! [`invite_status`], so moving them to the probe means reimplementing these few functions here.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::sip::digest_authorization;

/// Who calls what, where.
#[derive(Debug, Clone)]
pub struct CallSpec {
    /// Asterisk's SIP (UDP) address.
    pub sip: SocketAddr,
    /// The calling endpoint.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The extension called.
    pub target: String,
    /// Loss on purpose: every Nth packet is never sent (its sequence number is used up), so the
    /// far end counts it lost. `None` sends every packet.
    pub skip_every: Option<u32>,
}

/// What the call saw so far.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// RTP packets sent.
    pub sent: u64,
    /// RTP packets received.
    pub received: u64,
    /// The longest time between two received packets.
    pub max_gap: Duration,
    /// When the longest gap ended, since the call was answered.
    pub max_gap_at: Duration,
    /// When the last packet came, since the call was answered.
    pub last_packet_at: Option<Duration>,
    /// When the server hung up (a BYE from Asterisk), since the call was answered.
    pub bye_from_server_at: Option<Duration>,
}

/// One SIP dialog's identity.
struct Dialog {
    user: String,
    call_id: String,
    from_tag: String,
    to: String,
    remote_target: String,
    local: SocketAddr,
    cseq: u32,
}

/// A call in progress: media flowing both ways.
pub struct Call {
    spec: CallSpec,
    sip: UdpSocket,
    dialog: Dialog,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// When the 200 OK came.
    pub answered: Instant,
}

fn token() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn status_of(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

fn cseq_method(msg: &str) -> Option<String> {
    header(msg, "CSeq")?.split_whitespace().nth(1).map(str::to_string)
}

fn sdp(local_ip: &str, rtp_port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {local_ip}\r\ns=astrtc-test\r\nc=IN IP4 {local_ip}\r\nt=0 0\r\n\
         m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

fn request(method: &str, uri: &str, d: &Dialog, extra: &str, body: &str) -> String {
    let ctype = if body.is_empty() { String::new() } else { "Content-Type: application/sdp\r\n".to_string() };
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:{user}@{host}>;tag={tag}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n\
         Contact: <sip:{user}@{local}>\r\n{extra}{ctype}Content-Length: {len}\r\n\r\n{body}",
        local = d.local,
        branch = token(),
        user = d.user,
        host = d.local.ip(),
        tag = d.from_tag,
        to = d.to,
        cid = d.call_id,
        cseq = d.cseq,
        len = body.len(),
    )
}

fn recv(sock: &UdpSocket, until: Instant) -> Option<String> {
    let mut buf = vec![0u8; 65535];
    loop {
        let left = until.checked_duration_since(Instant::now())?;
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => return Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if Instant::now() >= until {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

/// Sends an INVITE (answering the digest challenge) and returns the final response.
fn invite(spec: &CallSpec, sip: &UdpSocket, rtp_port: u16) -> Result<(String, Dialog), String> {
    let local = sip.local_addr().unwrap();
    let uri = format!("sip:{}@{}", spec.target, spec.sip);
    let mut d = Dialog {
        user: spec.user.clone(),
        call_id: format!("{}@astrtc-test", token()),
        from_tag: token(),
        to: format!("<{uri}>"),
        remote_target: uri.clone(),
        local,
        cseq: 1,
    };
    let body = sdp(&local.ip().to_string(), rtp_port);
    let mut auth = String::new();
    for _attempt in 0..2 {
        let msg = request("INVITE", &uri, &d, &auth, &body);
        sip.send_to(msg.as_bytes(), spec.sip).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let last = loop {
            let r = recv(sip, deadline).ok_or("no final answer to the INVITE in 10 s")?;
            match status_of(&r) {
                Some(code) if code >= 200 && cseq_method(&r).as_deref() == Some("INVITE") => break r,
                _ => continue,
            }
        };
        let code = status_of(&last).unwrap();
        if code >= 300 {
            // ACK a failure in the same transaction (the To tag of the response).
            let to = header(&last, "To").unwrap_or(&d.to).to_string();
            let via = header(&last, "Via").unwrap_or("").to_string();
            let ack = format!(
                "ACK {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{host}>;tag={tag}\r\n\
                 To: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
                user = spec.user,
                host = local.ip(),
                tag = d.from_tag,
                cid = d.call_id,
                cseq = d.cseq,
            );
            let _ = sip.send_to(ack.as_bytes(), spec.sip);
        }
        if code == 401 || code == 407 {
            if !auth.is_empty() {
                return Ok((last, d));
            }
            let (name, reply) = if code == 401 {
                ("WWW-Authenticate", "Authorization")
            } else {
                ("Proxy-Authenticate", "Proxy-Authorization")
            };
            let challenge = header(&last, name).ok_or("a 401 without a challenge")?;
            let value = digest_authorization(challenge, "INVITE", &uri, &spec.user, &spec.password)
                .ok_or("an unsupported digest challenge")?;
            auth = format!("{reply}: {value}\r\n");
            d.cseq += 1;
            continue;
        }
        return Ok((last, d));
    }
    Err("the INVITE was challenged twice".into())
}

/// Places a call and returns the final status code (e.g. 503 while Asterisk drains), hanging up
/// at once if it was answered.
pub fn invite_status(spec: &CallSpec) -> u16 {
    let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (answer, d) = invite(spec, &sip, rtp.local_addr().unwrap().port()).unwrap_or_else(|e| panic!("{e}"));
    let code = status_of(&answer).unwrap();
    if (200..300).contains(&code) {
        let mut call = established(spec.clone(), sip, rtp, d, &answer);
        call.stop_media();
        call.bye();
    }
    code
}

fn rtp_target(answer: &str) -> Option<SocketAddr> {
    let body = answer.split("\r\n\r\n").nth(1)?;
    let ip = body.lines().find_map(|l| l.strip_prefix("c=IN IP4 "))?.trim();
    let port = body.lines().find_map(|l| l.strip_prefix("m=audio "))?.split_whitespace().next()?;
    format!("{ip}:{port}").parse().ok()
}

/// µ-law encoding of one 16-bit sample (G.711).
fn ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = (s + BIAS).min(32635);
    let exponent = (7 - (s.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

fn established(spec: CallSpec, sip: UdpSocket, rtp: UdpSocket, mut d: Dialog, answer: &str) -> Call {
    d.to = header(answer, "To").unwrap_or(&d.to).to_string();
    if let Some(contact) = header(answer, "Contact") {
        d.remote_target = contact.trim_start_matches('<').split('>').next().unwrap_or(contact).to_string();
    }
    let ack = request("ACK", &d.remote_target, &d, "", "");
    sip.send_to(ack.as_bytes(), spec.sip).unwrap();
    let answered = Instant::now();
    let target = rtp_target(answer).expect("the 200 OK carries an SDP answer");
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let mut threads = Vec::new();
    // Sender: 160 µ-law samples of a 440 Hz tone every 20 ms, on an absolute schedule.
    {
        let (rtp, stop, stats) = (rtp.try_clone().unwrap(), stop.clone(), stats.clone());
        let skip_every = spec.skip_every;
        threads.push(std::thread::spawn(move || {
            let ssrc: u32 = 0x5eed_0001;
            let mut n: u32 = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut pkt = vec![0x80u8, 0];
                pkt.extend_from_slice(&(n as u16).to_be_bytes());
                pkt.extend_from_slice(&(n.wrapping_mul(160)).to_be_bytes());
                pkt.extend_from_slice(&ssrc.to_be_bytes());
                for i in 0..160u32 {
                    let t = f64::from(n * 160 + i) / 8000.0;
                    pkt.push(ulaw((8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16));
                }
                if skip_every.is_none_or(|k| (n + 1) % k != 0) {
                    let _ = rtp.send_to(&pkt, target);
                    stats.lock().unwrap().sent += 1;
                }
                n += 1;
                let next = answered + Duration::from_millis(20) * n;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }));
    }
    // Receiver: when each packet comes back.
    {
        let (rtp, stop, stats) = (rtp, stop.clone(), stats.clone());
        threads.push(std::thread::spawn(move || {
            rtp.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut buf = [0u8; 2048];
            let mut last: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                if rtp.recv_from(&mut buf).is_ok() {
                    let now = Instant::now();
                    let mut s = stats.lock().unwrap();
                    s.received += 1;
                    if let Some(prev) = last {
                        let gap = now - prev;
                        if gap > s.max_gap {
                            s.max_gap = gap;
                            s.max_gap_at = now - answered;
                        }
                    }
                    s.last_packet_at = Some(now - answered);
                    last = Some(now);
                }
            }
        }));
    }
    // Signalling: answers a BYE from the server (and anything else with 200 OK).
    {
        let (sip, stop, stats) = (sip.try_clone().unwrap(), stop.clone(), stats.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(msg) = recv(&sip, Instant::now() + Duration::from_millis(100)) else { continue };
                if msg.starts_with("SIP/2.0") {
                    continue;
                }
                let method = msg.split_whitespace().next().unwrap_or("").to_string();
                let mut reply = String::from("SIP/2.0 200 OK\r\n");
                for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
                    for line in
                        msg.lines().filter(|l| l.split(':').next().is_some_and(|k| k.trim().eq_ignore_ascii_case(h)))
                    {
                        reply.push_str(line);
                        reply.push_str("\r\n");
                    }
                }
                reply.push_str("Content-Length: 0\r\n\r\n");
                let _ = sip.send_to(reply.as_bytes(), spec_sip(&msg).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))));
                if method == "BYE" {
                    stats.lock().unwrap().bye_from_server_at = Some(answered.elapsed());
                }
            }
        }));
    }
    Call { spec, sip, dialog: d, stop, stats, threads, answered }
}

/// Where to answer a request: its top Via's sent-by (with `received`/`rport` if present).
fn spec_sip(msg: &str) -> Option<SocketAddr> {
    let via = header(msg, "Via")?;
    let sent_by = via.split_whitespace().nth(1)?.split(';').next()?;
    sent_by.parse().ok()
}

impl Call {
    /// Calls `spec.target` and returns once it is answered, with media flowing.
    pub fn start(spec: &CallSpec) -> Result<Call, String> {
        let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (answer, d) = invite(spec, &sip, rtp.local_addr().unwrap().port())?;
        match status_of(&answer) {
            Some(code) if (200..300).contains(&code) => Ok(established(spec.clone(), sip, rtp, d, &answer)),
            _ => Err(format!("the call was not answered: {}", answer.lines().next().unwrap_or(""))),
        }
    }

    /// The figures so far.
    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }

    fn stop_media(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Sends BYE; returns the final status (None: no answer in 5 s).
    fn bye(&mut self) -> Option<u16> {
        self.dialog.cseq += 1;
        let msg = request("BYE", &self.dialog.remote_target.clone(), &self.dialog, "", "");
        self.sip.send_to(msg.as_bytes(), self.spec.sip).ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = recv(&self.sip, deadline)?;
            if cseq_method(&r).as_deref() == Some("BYE") {
                if let Some(code) = status_of(&r) {
                    return Some(code);
                }
            }
        }
    }

    /// Hangs up (BYE) and returns the figures and the BYE's final status.
    pub fn hang_up(mut self) -> (Stats, Option<u16>) {
        self.stop_media();
        let code = self.bye();
        (self.stats(), code)
    }

    /// Waits up to `limit` for the server to hang up (its BYE); returns the figures.
    pub fn wait_ended(mut self, limit: Duration) -> Stats {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && self.stats().bye_from_server_at.is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop_media();
        self.stats()
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.stop_media();
    }
}

/// Registers `spec.user` with `spec.password` (`spec.target` unused) for a minute, answering the
/// digest challenge; returns the final status (200, or 401/403 for a wrong password).
pub fn register_status(spec: &CallSpec) -> u16 {
    let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sip.local_addr().unwrap();
    let uri = format!("sip:{}", spec.sip);
    let mut d = Dialog {
        user: spec.user.clone(),
        call_id: format!("{}@astrtc-test", token()),
        from_tag: token(),
        to: format!("<sip:{}@{}>", spec.user, local.ip()),
        remote_target: uri.clone(),
        local,
        cseq: 1,
    };
    let mut extra = "Expires: 60\r\n".to_string();
    for _ in 0..2 {
        let msg = request("REGISTER", &uri, &d, &extra, "");
        sip.send_to(msg.as_bytes(), spec.sip).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let r = loop {
            let r = recv(&sip, deadline).expect("no answer to REGISTER in 5 s");
            if status_of(&r).is_some_and(|c| c >= 200) {
                break r;
            }
        };
        let code = status_of(&r).unwrap();
        if code != 401 || extra.contains("Authorization") {
            return code;
        }
        let challenge = header(&r, "WWW-Authenticate").expect("a 401 without a challenge");
        let value = digest_authorization(challenge, "REGISTER", &uri, &spec.user, &spec.password).unwrap();
        extra = format!("Expires: 60\r\nAuthorization: {value}\r\n");
        d.cseq += 1;
    }
    unreachable!()
}
