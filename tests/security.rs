//! The security audit: a deployment attacked as an attacker on the Internet would, from network
//! namespaces that stand for other machines ([`crate::common::attacker`]), with the field's own
//! tools from Debian (sipvicious's `svwar` and `svcrack`, `testssl.sh`, `nmap`, `tcpdump`) and
//! real clients (baresip). Each negative result has a twin showing the check can fail: without
//! the guard a guesser is never blocked; a UDP phone's capture does show cleartext SIP; svwar
//! does find an extension on a responder that leaks; the TLS check refuses a weak server; an
//! authenticated call to the echo extension is answered 200 where the toll-fraud calls are
//! refused; the static server does serve a file where the traversals get none.
//!
//! Needs Docker, root (namespaces), sipvicious, testssl.sh, nmap, tcpdump and baresip
//! (`make deps-audit`, `make deps-clients`). Figures for the README are printed (`AUDIT ...`).

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::sip::digest_authorization;
use astrtc::plan::Plan;

use crate::common::attacker::{self, Peer};
use crate::common::docker::{ensure_guard, ensure_image, ComposeProject, HostPorts};
use crate::common::phone::{cleartext_in, Capture, Phone};
use crate::common::*;

// ---------------------------------------------------------------------------------------------
// The deployment under attack.

/// A compose deployment of the `phones-tls` fixture (a browser endpoint, 3001 over TLS with
/// SRTP, 3002 over UDP) on free ports, with the guard unless told otherwise.
struct Stack {
    // Dropped first (`compose down`), while its directory still exists.
    project: ComposeProject,
    plan: Plan,
    dir: tempfile::TempDir,
}

impl Stack {
    /// Renders the fixture with `edit` applied to its spec text and starts `services` (all when
    /// empty), waiting until they are healthy.
    fn up(tag: &str, edit: impl Fn(String) -> String, services: &[&str]) -> Stack {
        Stack::of("phones-tls", tag, edit, services)
    }

    /// The same for another fixture with the same ports (`webrtc-only`).
    fn of(fixture: &str, tag: &str, edit: impl Fn(String) -> String, services: &[&str]) -> Stack {
        let dir = fixture_copy(fixture);
        let spec = dir.path().join("astrtc.toml");
        let ports = HostPorts::free();
        let text = ports
            .apply(&std::fs::read_to_string(&spec).unwrap())
            .replace("sip_tls_port = 15061", &format!("sip_tls_port = {}", ports::free_port()))
            .replace(
                &format!("name = \"astrtc-{}\"", fixture.trim_end_matches("-tls")),
                &format!("name = \"astrtc-{tag}-{}\"", ports.wss),
            );
        let text = format!("image = \"{}\"\n{text}", crate::common::docker::test_image());
        std::fs::write(&spec, edit(text)).unwrap();
        let plan = plan_for(&spec, astrtc::plan::HostFacts::detect()).unwrap();
        astrtc::deploy::write(&plan, &dir.path().join("deploy")).unwrap();
        ensure_image();
        if plan.guard.is_some() {
            ensure_guard();
        }
        if plan.turn.as_ref().is_some_and(|t| t.bundled.is_some()) {
            crate::common::docker::ensure_turn();
        }
        let project = ComposeProject { dir: dir.path().join("deploy") };
        let mut args = vec!["up", "-d", "--wait"];
        args.extend(services);
        let out = project.run(&args);
        assert!(out.status.success(), "compose up: {}", String::from_utf8_lossy(&out.stderr));
        Stack { project, plan, dir }
    }

    fn exec(&self, service: &str, args: &[&str]) -> String {
        let mut full = vec!["exec", "-T", service];
        full.extend(args);
        let out = self.project.run(&full);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn security_log(&self) -> String {
        self.exec("asterisk", &["cat", "/var/log/asterisk/security.log"])
    }

    fn container(&self, service: &str) -> String {
        String::from_utf8_lossy(&self.project.run(&["ps", "-a", "-q", service]).stdout).trim().to_string()
    }

    /// The guard's log (fail2ban's own lines, across restarts of its container).
    fn guard_log(&self) -> String {
        let out = Command::new("docker").args(["logs", &self.container("guard")]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// The addresses the guard has banned now, as fail2ban itself reports them.
    fn banned(&self) -> BTreeSet<String> {
        let status = self.exec("guard", &["fail2ban-client", "status", "asterisk"]);
        let list = status.lines().find_map(|l| l.split_once("Banned IP list:")).map(|(_, r)| r).unwrap_or("");
        list.split_whitespace().map(str::to_string).collect()
    }

    fn password(&self, id: &str) -> String {
        self.plan.endpoints.iter().find(|e| e.id == id).unwrap().password.expose().to_string()
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("deploy/keys/ca.crt")).unwrap()
    }

    /// Saves the security log, the guard's and Asterisk's logs into `dir` (also when the test
    /// failed: call it from a drop guard).
    fn save_logs(&self, dir: &Path) {
        let _ = std::fs::write(dir.join("security.log"), self.security_log());
        if self.plan.guard.is_some() {
            let _ = std::fs::write(dir.join("guard.log"), self.guard_log());
        }
        if let Ok(out) = Command::new("docker").args(["logs", &self.container("asterisk")]).output() {
            let _ = std::fs::write(dir.join("asterisk.log"), [out.stdout, out.stderr].concat());
        }
    }

    fn healthy(&self, service: &str) -> bool {
        let id = self.container(service);
        let out = Command::new("docker").args(["inspect", "-f", "{{.State.Health.Status}}", &id]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "healthy"
    }

    fn wait_healthy(&self, service: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.healthy(service) {
            assert!(Instant::now() < deadline, "{service} not healthy within {within:?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// What is missing for the audit, if anything.
fn audit_tools_missing() -> Option<String> {
    if let Some(why) = attacker::available() {
        return Some(why);
    }
    for (tool, package) in [
        ("/usr/bin/svcrack", "sipvicious"),
        ("/usr/bin/svwar", "sipvicious"),
        ("/usr/bin/svmap", "sipvicious"),
        ("/usr/bin/testssl", "testssl.sh"),
        ("/usr/bin/nmap", "nmap"),
        ("/usr/bin/tcpdump", "tcpdump"),
        ("/usr/bin/baresip", "baresip-core"),
    ] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} is not installed (Debian package {package}: make deps-audit)"));
        }
    }
    None
}

/// True (after a counted skip) when the audit cannot run here.
fn cannot_run() -> bool {
    if docker_off() {
        return true;
    }
    if let Some(why) = audit_tools_missing() {
        skip(&why);
        return true;
    }
    false
}

/// On drop (a test's end, or its panic): saves the stack's logs and stops background work.
struct Finally<'a> {
    stack: &'a Stack,
    dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for Finally<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.stack.save_logs(&self.dir);
    }
}

/// The legitimate phone's loop of calls: stopped and joined when dropped, so its namespace is
/// removed even when the test fails.
struct Caller(Option<std::thread::JoinHandle<(usize, usize, String)>>, Arc<AtomicBool>);

impl Caller {
    fn finish(mut self) -> (usize, usize, String) {
        self.1.store(true, Ordering::SeqCst);
        self.0.take().unwrap().join().unwrap()
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.1.store(true, Ordering::SeqCst);
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the logs.

/// Seconds since the epoch of `YYYY-MM-DD HH:MM:SS[.,]fff` (UTC, as both containers log).
fn timestamp(s: &str) -> Option<f64> {
    let s = s.trim();
    let (date, time) = s.split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time = time.replace(',', ".");
    let mut t = time.split(':');
    let (hh, mm, ss) = (t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?, t.next()?.parse::<f64>().ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    Some(days as f64 * 86400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

/// The security events the guard counts as failures, from `ip`: their times, in order.
fn failures_from(log: &str, ip: &str) -> Vec<f64> {
    let needle = format!("/{ip}/");
    log.lines()
        .filter(|l| {
            ["FailedACL", "InvalidAccountID", "ChallengeResponseFailed", "InvalidPassword"]
                .iter()
                .any(|e| l.contains(&format!("SecurityEvent=\"{e}\"")))
        })
        .filter(|l| l.split("RemoteAddress=\"").nth(1).is_some_and(|r| r.split('"').next().unwrap().contains(&needle)))
        .filter_map(|l| timestamp(l.strip_prefix('[')?.split(']').next()?))
        .collect()
}

/// When the guard logged `what IP` (`Ban`, `Unban`, `Restore Ban`): fail2ban's own timestamps.
fn guard_events(log: &str, what: &str, ip: &str) -> Vec<f64> {
    let end = format!("] {what} {ip}");
    log.lines().filter(|l| l.trim_end().ends_with(&end)).filter_map(|l| timestamp(l.get(..23)?)).collect()
}

// ---------------------------------------------------------------------------------------------
// SIP over UDP, as far as the audit needs it: one request, its final answer.

/// A SIP response: status line and headers.
#[derive(Debug, Clone)]
struct Answer {
    code: u16,
    raw: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.raw.lines().skip(1).take_while(|l| !l.is_empty()).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Header names in order, without the ones that differ on every request.
    fn header_names(&self) -> Vec<String> {
        self.raw
            .lines()
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, _)| k.trim().to_lowercase())
            .collect()
    }

    /// A challenge's parameters, values of those that change per request (nonce, opaque) removed.
    fn challenge_shape(&self) -> Option<String> {
        let c = self.header("WWW-Authenticate")?;
        let mut parts: Vec<String> = c
            .trim_start_matches("Digest")
            .split(',')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                let k = k.trim().to_lowercase();
                if k == "nonce" || k == "opaque" {
                    k
                } else {
                    format!("{k}={}", v.trim())
                }
            })
            .collect();
        parts.sort();
        Some(parts.join(","))
    }
}

fn token() -> String {
    format!("{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

/// A UDP SIP user agent bound to the calling thread's namespace.
struct Ua {
    sock: UdpSocket,
    server: SocketAddr,
    domain: String,
}

impl Ua {
    fn new(server: SocketAddr, domain: &str) -> Ua {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        Ua { sock, server, domain: domain.into() }
    }

    fn local(&self) -> String {
        // The address the server sees: connect() picks the source for this route.
        let probe = UdpSocket::bind("0.0.0.0:0").unwrap();
        probe.connect(self.server).unwrap();
        format!("{}:{}", probe.local_addr().unwrap().ip(), self.sock.local_addr().unwrap().port())
    }

    /// Sends `msg` (retransmitted every 500 ms, as RFC 3261's timer A does) and waits up to
    /// `within` for a final response with this `call_id`; provisional ones are skipped.
    fn transact(&self, msg: &str, call_id: &str, within: Duration) -> Option<Answer> {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 65535];
        let mut next_send = Instant::now();
        let mut provisional = false;
        while Instant::now() < deadline {
            if !provisional && Instant::now() >= next_send {
                self.sock.send_to(msg.as_bytes(), self.server).unwrap();
                next_send = Instant::now() + Duration::from_millis(500);
            }
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else { continue };
            let raw = String::from_utf8_lossy(&buf[..n]).into_owned();
            let Some(code) = raw.strip_prefix("SIP/2.0 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()) else {
                continue;
            };
            let answer = Answer { code, raw };
            if answer.header("Call-ID") != Some(call_id) {
                continue;
            }
            if code >= 200 {
                return Some(answer);
            }
            provisional = true;
        }
        None
    }

    /// A request from `from` to `to` (user names) within `call`.
    fn request(
        &self,
        method: &str,
        uri: &str,
        (from, to): (&str, &str),
        call: &Call,
        extra: &str,
        body: &str,
    ) -> String {
        let local = self.local();
        let ctype = if body.is_empty() { String::new() } else { "Content-Type: application/sdp\r\n".into() };
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\n\
             From: <sip:{from}@{domain}>;tag={tag}\r\nTo: <sip:{to}@{domain}>{to_tag}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} {cseq_method}\r\nContact: <sip:{from}@{local}>\r\n{extra}User-Agent: astrtc-audit\r\n\
             {ctype}Content-Length: {len}\r\n\r\n{body}",
            branch = call.branch,
            domain = self.domain,
            tag = call.tag,
            to_tag = call.to_tag.as_deref().map(|t| format!(";tag={t}")).unwrap_or_default(),
            call_id = call.id,
            cseq = call.cseq,
            cseq_method = if method == "ACK" { "INVITE" } else { method },
            len = body.len(),
        )
    }

    /// REGISTER as `user` without credentials: the first answer a scanner sees.
    fn register_probe(&self, user: &str) -> Option<Answer> {
        let call = Call::new();
        let uri = format!("sip:{}", self.domain);
        let msg = self.request("REGISTER", &uri, (user, user), &call, "Expires: 60\r\n", "");
        self.transact(&msg, &call.id, Duration::from_secs(3))
    }

    /// REGISTERs every id of `ids` without credentials (100 at a time, each asked again until
    /// answered) and groups the ids by the shape of their answer (status line, header names,
    /// the challenge without its nonce).
    fn enumerate(&self, ids: std::ops::RangeInclusive<u32>) -> std::collections::BTreeMap<String, Vec<u32>> {
        let mut shapes: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        let ids: Vec<u32> = ids.collect();
        let mut buf = vec![0u8; 65535];
        for batch in ids.chunks(100) {
            let mut pending: std::collections::BTreeMap<String, u32> = Default::default();
            let calls: Vec<(u32, Call)> = batch.iter().map(|id| (*id, Call::new())).collect();
            for (id, call) in &calls {
                pending.insert(call.id.clone(), *id);
            }
            for _round in 0..5 {
                for (id, call) in &calls {
                    if pending.contains_key(&call.id) {
                        let uri = format!("sip:{}", self.domain);
                        let user = id.to_string();
                        let msg = self.request("REGISTER", &uri, (&user, &user), call, "Expires: 60\r\n", "");
                        let _ = self.sock.send_to(msg.as_bytes(), self.server);
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(2);
                while !pending.is_empty() && Instant::now() < deadline {
                    let Ok((n, _)) = self.sock.recv_from(&mut buf) else { continue };
                    let raw = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let Some(code) = raw.strip_prefix("SIP/2.0 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok())
                    else {
                        continue;
                    };
                    let a = Answer { code, raw };
                    if code < 200 {
                        continue;
                    }
                    let Some(id) = a.header("Call-ID").and_then(|c| pending.remove(c)) else { continue };
                    let shape = format!(
                        "{} | {:?} | {:?}",
                        a.raw.lines().next().unwrap_or(""),
                        a.header_names(),
                        a.challenge_shape()
                    );
                    shapes.entry(shape).or_default().push(id);
                }
                if pending.is_empty() {
                    break;
                }
            }
        }
        shapes
    }

    /// INVITE `target` as `user` (digest-authenticated when a password is given) and returns
    /// the final answer; a 200 is ACKed and hung up, any other final answer ACKed.
    fn invite(&self, user: &str, password: Option<&str>, target: &str) -> Option<Answer> {
        let mut call = Call::new();
        let uri = format!("sip:{target}@{}", self.domain);
        let local = self.local();
        let ip = local.split(':').next().unwrap();
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        let mut answer = self.transact(
            &self.request("INVITE", &uri, (user, target), &call, "", &sdp),
            &call.id,
            Duration::from_secs(5),
        )?;
        if answer.code == 401 || answer.code == 407 {
            self.ack(&uri, user, target, &call, &answer);
            let Some(pw) = password else { return Some(answer) };
            let header = if answer.code == 401 { "WWW-Authenticate" } else { "Proxy-Authenticate" };
            let auth = digest_authorization(answer.header(header)?, "INVITE", &uri, user, pw)?;
            let name = if answer.code == 401 { "Authorization" } else { "Proxy-Authorization" };
            call.cseq += 1;
            call.branch = token();
            let msg = self.request("INVITE", &uri, (user, target), &call, &format!("{name}: {auth}\r\n"), &sdp);
            answer = self.transact(&msg, &call.id, Duration::from_secs(8))?;
        }
        self.ack(&uri, user, target, &call, &answer);
        if answer.code == 200 {
            call.to_tag = to_tag(&answer);
            call.cseq += 1;
            call.branch = token();
            let bye = self.request("BYE", &uri, (user, target), &call, "", "");
            let _ = self.transact(&bye, &call.id, Duration::from_secs(3));
        }
        Some(answer)
    }

    fn ack(&self, uri: &str, user: &str, target: &str, call: &Call, answer: &Answer) {
        let mut ack_call = call.clone();
        ack_call.to_tag = to_tag(answer);
        if answer.code == 200 {
            ack_call.branch = token();
        }
        let ack = self.request("ACK", uri, (user, target), &ack_call, "", "");
        let _ = self.sock.send_to(ack.as_bytes(), self.server);
    }
}

fn to_tag(a: &Answer) -> Option<String> {
    a.header("To")?.split(";tag=").nth(1).map(|t| t.split(';').next().unwrap().trim().to_string())
}

#[derive(Clone)]
struct Call {
    id: String,
    tag: String,
    branch: String,
    to_tag: Option<String>,
    cseq: u32,
}

impl Call {
    fn new() -> Call {
        Call { id: token(), tag: token(), branch: token(), to_tag: None, cseq: 1 }
    }
}

// ---------------------------------------------------------------------------------------------
// Tools.

// ---------------------------------------------------------------------------------------------
// The tests.

/// The guard: a password guesser is banned after `ban_after` failures, within 2 s of the one
/// that crossed the line, and its later packets are dropped; a WSS guesser too; an allowed
/// network is never banned; a legitimate phone keeps registering and calling throughout; the ban
/// survives a guard restart and lifts after `ban_seconds`.
#[test]
fn guard_bans_guessers_and_spares_legitimate_and_allowed_clients() {
    if cannot_run() {
        return;
    }
    let (attacker, allowed, legit, wss_guesser) =
        (Peer::new("atk"), Peer::new("allow"), Peer::new("legit"), Peer::new("wss"));
    const BAN_SECONDS: u32 = 45;
    let allow = allowed.network();
    let stack = Stack::up(
        "guard",
        |t| {
            t.replace("ban_seconds = 3600", &format!("ban_seconds = {BAN_SECONDS}"))
                .replace("allow = [\"192.0.2.0/24\", \"2001:db8::/32\"]", &format!("allow = [\"{allow}\"]"))
        },
        &[],
    );
    let plan = stack.plan.clone();
    let ban_after = plan.security.ban_after as usize;
    let art = crate::clients::artifacts("guard");

    // A legitimate phone (3002 over UDP, the very account under attack) registers and calls the
    // echo extension, again and again, for the whole attack.
    let stop = Arc::new(AtomicBool::new(false));
    let _finally = Finally { stack: &stack, dir: art.clone(), stop: stop.clone() };
    let legit_ip = legit.ip.to_string();
    let legit_calls = {
        let (stopped, art) = (stop.clone(), art.clone());
        let (password, sip, ca) =
            (stack.password("3002"), plan.network.sip_port, stack.dir.path().join("deploy/keys/ca.crt"));
        let echo = plan.dialplan.echo_extension.clone();
        Caller(
            Some(std::thread::spawn(move || {
                let (mut placed, mut answered, mut logs) = (0, 0, String::new());
                while !stopped.load(Ordering::SeqCst) {
                    let phone = Phone {
                        peer: &legit,
                        user: "3002",
                        password: &password,
                        server_port: sip,
                        transport: "udp",
                        ca: &ca,
                        dir: &art,
                    };
                    let (log, ok) = phone.call(&echo, 4);
                    placed += 1;
                    answered += usize::from(ok);
                    logs.push_str(&log);
                }
                drop(legit);
                (placed, answered, logs)
            })),
            stop.clone(),
        )
    };

    // 1. svcrack from the attacker: banned.
    let started = Instant::now();
    let crack = attacker.svcrack(plan.network.sip_port, "3002", 3000);
    let crack_took = started.elapsed();
    std::fs::write(art.join("svcrack-attacker.txt"), &crack).unwrap();
    let banned = stack.banned();
    assert!(banned.contains(&attacker.ip.to_string()), "the attacker is not banned: {banned:?}\n{crack}");
    let log = stack.security_log();
    let failures = failures_from(&log, &attacker.ip.to_string());
    assert!(failures.len() >= ban_after, "only {} failures logged from the attacker", failures.len());
    let ban = guard_events(&stack.guard_log(), "Ban", &attacker.ip.to_string());
    assert_eq!(ban.len(), 1, "one ban expected:\n{}", stack.guard_log());
    let ban = ban[0];
    let crossing = failures[ban_after - 1];
    let time_to_ban = ban - crossing;
    assert!((0.0..=2.0).contains(&time_to_ban), "banned {time_to_ban:.3} s after failure {ban_after}");
    // Later packets are dropped: nothing from the attacker reached Asterisk a second after the ban
    // (what was in flight while nft added the rule is all), and svcrack gave up for want of answers.
    let last = *failures.last().unwrap();
    assert!(last - ban <= 1.0, "failures from the attacker went on {:.3} s after the ban", last - ban);
    assert!(crack.contains("since we last received a response"), "svcrack was not cut off:\n{crack}");
    let options = attacker.run({
        let to = attacker.to(plan.network.sip_port);
        move || crate::common::sip::options_over_udp(to, Duration::from_secs(2))
    });
    assert!(options.is_none(), "a banned address still gets answers: {options:?}");

    // 2. Bans survive a restart of the guard (fail2ban restores them from its database).
    let out = stack.project.run(&["restart", "guard"]);
    assert!(out.status.success());
    stack.wait_healthy("guard", Duration::from_secs(60));
    let after_restart = stack.banned();
    assert!(after_restart.contains(&attacker.ip.to_string()), "the ban was lost in the restart: {after_restart:?}");
    let options = attacker.run({
        let to = attacker.to(plan.network.sip_port);
        move || crate::common::sip::options_over_udp(to, Duration::from_secs(2))
    });
    assert!(options.is_none(), "after the guard's restart the banned address gets answers again");

    // 3. The allowed network guesses as much and is never banned.
    let t = Instant::now();
    let allowed_crack = allowed.svcrack(plan.network.sip_port, "3002", 100);
    eprintln!("allowed svcrack: {:.1?}", t.elapsed());
    std::fs::write(art.join("svcrack-allowed.txt"), &allowed_crack).unwrap();
    let allowed_failures = failures_from(&stack.security_log(), &allowed.ip.to_string()).len();
    assert!(allowed_failures >= 100, "the allowed network got {allowed_failures} answers to 100 guesses");
    assert!(!stack.banned().contains(&allowed.ip.to_string()), "the allowed network was banned");
    assert!(guard_events(&stack.guard_log(), "Ban", &allowed.ip.to_string()).is_empty());

    // 4. Digest guessing through the WebSocket is banned the same way.
    let wss = wss_guesser.to(plan.network.wss_port);
    let (domain, ca) = (plan.tls.domain.clone(), stack.ca_pem());
    let (wss_answered, wss_error) = wss_guesser.run(move || {
        let wrong = "wrong-password-xxxxxxxx";
        let mut session = crate::common::sip::Registrar::open(wss, &domain, &ca, "3001", wrong).unwrap();
        let (mut answered, deadline) = (0, Instant::now() + Duration::from_secs(20));
        while Instant::now() < deadline {
            match session.register() {
                Ok(code) => {
                    assert!(code == 401 || code == 403, "a wrong password got {code}");
                    answered += 1;
                }
                Err(e) => return (answered, e),
            }
        }
        (answered, String::new())
    });
    assert!(!wss_error.is_empty(), "{wss_answered} wrong passwords over WSS in 20 s were all answered");
    assert!(stack.banned().contains(&wss_guesser.ip.to_string()), "the WSS guesser is not banned");
    let reconnect = wss_guesser.run({
        let (domain, ca) = (plan.tls.domain.clone(), stack.ca_pem());
        move || crate::common::sip::Registrar::open(wss, &domain, &ca, "3001", "x").is_ok()
    });
    assert!(!reconnect, "a banned address can still open a WSS connection");

    // 5. The ban lifts after ban_seconds.
    let deadline = Instant::now() + Duration::from_secs(u64::from(BAN_SECONDS) + 30);
    let unban = loop {
        // Stopping fail2ban (the restart) logs an Unban too; the one that counts comes after the
        // restored ban.
        let log = stack.guard_log();
        let restored = guard_events(&log, "Restore Ban", &attacker.ip.to_string());
        let restored = restored.last().copied().unwrap_or(f64::MAX);
        if let Some(t) = guard_events(&log, "Unban", &attacker.ip.to_string()).into_iter().find(|t| *t > restored) {
            break t;
        }
        assert!(Instant::now() < deadline, "no unban:\n{}", stack.guard_log());
        std::thread::sleep(Duration::from_millis(500));
    };
    // fail2ban counts the ban from its ticket, the time of the failures that caused it, not from
    // the moment it logged "Ban". That time is near failure ban_after but not always it (one CI run
    // measured the unban 44.5 s after it, for 45), the ban is restored across the guard's restart,
    // and unbans are checked about once a second. The window allows for that and still refuses
    // fail2ban's default bantime (600 s), a ban that never lifts, or one that lifts early.
    let held = unban - crossing;
    assert!(
        (f64::from(BAN_SECONDS) - 3.0..=f64::from(BAN_SECONDS) + 10.0).contains(&held),
        "the ban lasted {held:.1} s from failure {ban_after}, not {BAN_SECONDS}"
    );
    let options = attacker.run({
        let to = attacker.to(plan.network.sip_port);
        move || crate::common::sip::options_over_udp(to, Duration::from_secs(3))
    });
    assert!(options.is_some(), "no answer once the ban lifted");

    let (placed, answered, logs) = legit_calls.finish();
    std::fs::write(art.join("legit-baresip.log"), &logs).unwrap();
    assert!(placed >= 3, "the legitimate phone placed only {placed} calls");
    assert_eq!(answered, placed, "legitimate calls failed during the attack; see {}", art.display());
    assert!(!stack.banned().contains(&legit_ip));
    let size = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Size}}", astrtc::image::GUARD_IMAGE])
        .output()
        .unwrap();
    let size: f64 = String::from_utf8_lossy(&size.stdout).trim().parse().unwrap_or(0.0);
    eprintln!(
        "AUDIT guard: svcrack ran {crack_took:.1?}; {} guesses answered before the ban (ban_after {ban_after}), \
         banned {time_to_ban:.3} s after failure {ban_after}, last answer {:.3} s after the ban; allowed network: \
         {allowed_failures} guesses answered, never banned; WSS: {wss_answered} wrong passwords answered, then cut \
         off and banned; ban held {held:.1} s (ban_seconds {BAN_SECONDS}) across a guard restart; legitimate phone: \
         {placed} calls placed, {answered} answered during the attack; guard image {:.1} MB",
        failures.len(),
        last - ban,
        size / 1e6
    );
}

/// Whether a STUN Binding request to `to` gets its answer (three tries, a second each).
fn stun_answered(to: SocketAddr) -> bool {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let id: [u8; 12] = rand_u64().to_be_bytes().into_iter().chain(*b"astr").collect::<Vec<_>>().try_into().unwrap();
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(&id);
    let mut buf = [0u8; 1500];
    for _ in 0..3 {
        socket.send_to(&request, to).unwrap();
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            // A Binding success response (0x0101) to this transaction.
            if n >= 20 && buf[0..2] == [0x01, 0x01] && buf[8..20] == id {
                return true;
            }
        }
    }
    false
}

/// With the bundled TURN relay on the host, a ban closes its ports as well (the relay reaches
/// every UDP port of Asterisk's addresses: a banned guesser holding TURN credentials would
/// otherwise go on through it). The twin is the same probes before the ban: the future attacker
/// gets coturn's STUN answer over UDP and a TCP connection to the TURN port and to the TLS port;
/// after guessing over WSS got it banned, none of the three.
#[test]
fn a_ban_also_cuts_the_banned_address_off_from_the_bundled_turn_relay() {
    if cannot_run() {
        return;
    }
    // Created before coturn starts: coturn listens on the addresses the host has at its start.
    let attacker = Peer::new("trn");
    let (port, tls_port, relay) = (ports::free_port(), ports::free_port(), ports::free_range(20));
    let stack = Stack::up(
        "guardturn",
        |t| {
            format!(
                "{t}\n[turn]\nmode = \"bundled\"\nport = {port}\ntls_port = {tls_port}\nrelay_start = {relay}\n\
                 relay_end = {}\n",
                relay + 19
            )
        },
        &[],
    );
    let art = crate::clients::artifacts("guard-turn");
    let _finally = Finally { stack: &stack, dir: art.clone(), stop: Arc::new(AtomicBool::new(false)) };
    let jail = std::fs::read_to_string(stack.dir.path().join("deploy/guard/jail.d/astrtc.local")).unwrap();
    let (udp, tcp, tls) = (attacker.to(port), attacker.to(port), attacker.to(tls_port));
    let probe = |peer: &Peer| {
        peer.run(move || {
            let connects = |a: SocketAddr| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok();
            (stun_answered(udp), connects(tcp), connects(tls))
        })
    };
    let before = probe(&attacker);
    assert_eq!(before, (true, true, true), "(STUN over UDP, TCP, TLS port) before any ban");

    // Guessing over WSS until cut off, as in the guard test.
    let wss = attacker.to(stack.plan.network.wss_port);
    let (domain, ca) = (stack.plan.tls.domain.clone(), stack.ca_pem());
    let answered = attacker.run(move || {
        let mut session =
            crate::common::sip::Registrar::open(wss, &domain, &ca, "199", "wrong-password-xxxxxxxx").unwrap();
        let (mut answered, deadline) = (0, Instant::now() + Duration::from_secs(30));
        while Instant::now() < deadline && session.register().is_ok() {
            answered += 1;
        }
        answered
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stack.banned().contains(&attacker.ip.to_string()) {
        assert!(
            Instant::now() < deadline,
            "the WSS guesser was not banned ({answered} answers):\n{}",
            stack.guard_log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let after = probe(&attacker);
    assert_eq!(after, (false, false, false), "(STUN over UDP, TCP, TLS port) from a banned address; jail:\n{jail}");
    // The relay itself still serves everyone else: coturn answers on loopback (never banned).
    assert!(stun_answered(SocketAddr::from(([127, 0, 0, 1], port))), "coturn stopped answering");
    eprintln!(
        "AUDIT guard and TURN: before the ban the TURN ports answered (STUN, TCP, TLS); {answered} wrong \
         passwords over WSS answered, then banned; after: {after:?} (STUN, TCP, TLS) from the banned address"
    );
}

/// The twin: the same deployment without the guard answers every guess, to the end.
#[test]
fn without_the_guard_password_guessing_is_never_blocked() {
    if cannot_run() {
        return;
    }
    let attacker = Peer::new("noguard");
    let stack = Stack::up("noguard", |t| t, &["asterisk"]);
    let crack = attacker.svcrack(stack.plan.network.sip_port, "3002", 300);
    let failures = failures_from(&stack.security_log(), &attacker.ip.to_string());
    assert!(failures.len() >= 300, "without the guard only {} of 300 guesses were answered:\n{crack}", failures.len());
    assert!(!crack.contains("since we last received a response"), "svcrack was cut off without a guard:\n{crack}");
    let options = attacker.run({
        let to = attacker.to(stack.plan.network.sip_port);
        move || crate::common::sip::options_over_udp(to, Duration::from_secs(3))
    });
    assert!(options.is_some(), "without the guard the guesser must still get answers");
    eprintln!("AUDIT no guard: {} of 300 guesses answered, never blocked", failures.len());
}

/// A SIP responder that leaks which extensions exist (401 for 3001, 404 for anyone else), as
/// some PBXs do: the twin that shows svwar and the same-answer check do find such a leak.
fn leaky_responder(addr: SocketAddr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let sock = UdpSocket::bind(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65535];
        while !stop.load(Ordering::SeqCst) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            if req.starts_with("SIP/2.0") || req.starts_with("ACK") {
                continue;
            }
            let header = |name: &str| {
                req.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
            };
            let to = header("To").unwrap_or_default();
            let known = to.contains("sip:3001@");
            let (status, extra) = if known {
                ("401 Unauthorized", "WWW-Authenticate: Digest realm=\"leaky\", nonce=\"1\", algorithm=MD5\r\n")
            } else {
                ("404 Not Found", "")
            };
            let to = if to.contains("tag=") { to } else { format!("{to};tag=leaky") };
            let resp = format!(
                "SIP/2.0 {status}\r\nVia: {}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
                header("Via").unwrap_or_default(),
                header("From").unwrap_or_default(),
                header("Call-ID").unwrap_or_default(),
                header("CSeq").unwrap_or_default(),
            );
            let _ = sock.send_to(resp.as_bytes(), from);
        }
    })
}

/// `svwar --force` with `method` over `range` from `peer` against `server:port`: its output.
fn svwar(peer: &Peer, server: std::net::Ipv4Addr, port: u16, method: &str, range: &str) -> String {
    let out = peer
        .command("svwar")
        .args(["--force", "-m", method, "-e", range, "-p", &port.to_string()])
        .arg(server.to_string())
        .output()
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// What svwar reported as found (the extensions in its result table).
fn svwar_found(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.starts_with('|') && (l.contains("reqauth") || l.contains("noauth") || l.contains("weird")))
        .filter_map(|l| l.split('|').nth(1).map(|e| e.trim().to_string()))
        .collect()
}

/// Whether two answers to probes for different ids tell them apart (code, reason, headers, the
/// challenge's parameters but its per-request nonce).
fn distinguishable(a: &Answer, b: &Answer) -> bool {
    let reason = |x: &Answer| x.raw.lines().next().unwrap_or("").to_string();
    reason(a) != reason(b) || a.header_names() != b.header_names() || a.challenge_shape() != b.challenge_shape()
}

/// testssl.sh's findings for one listener, from its JSON: (protocols offered, ciphers offered,
/// chain of trust).
struct TlsFindings {
    offered: Vec<String>,
    not_offered: Vec<String>,
    ciphers: Vec<String>,
    chain: String,
}

fn testssl(peer: &Peer, port: u16, ca: &Path, server_defaults: bool, dir: &Path, name: &str) -> TlsFindings {
    let json = dir.join(format!("testssl-{name}.json"));
    let _ = std::fs::remove_file(&json);
    let mut cmd = peer.command("testssl");
    cmd.args(["--quiet", "--color", "0", "--warnings", "off", "-p", "-E"]);
    if server_defaults {
        cmd.arg("-S").arg("--add-ca").arg(ca);
    }
    let out = cmd
        .arg("--jsonfile")
        .arg(&json)
        .args(["--ip", &peer.server.to_string(), &format!("localhost:{port}")])
        .output()
        .unwrap();
    std::fs::write(dir.join(format!("testssl-{name}.txt")), &out.stdout).unwrap();
    let items: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let mut f = TlsFindings { offered: vec![], not_offered: vec![], ciphers: vec![], chain: String::new() };
    for i in &items {
        let (id, finding) = (i["id"].as_str().unwrap_or(""), i["finding"].as_str().unwrap_or(""));
        match id {
            "SSLv2" | "SSLv3" | "TLS1" | "TLS1_1" | "TLS1_2" | "TLS1_3" => {
                if finding.starts_with("offered") {
                    f.offered.push(id.into());
                } else {
                    f.not_offered.push(id.into());
                }
            }
            "cert_chain_of_trust" => f.chain = finding.into(),
            _ if id.starts_with("cipher-tls") || id.starts_with("cipher-ssl") => f.ciphers.push(finding.into()),
            _ => {}
        }
    }
    f
}

/// The cipher suites among `ciphers` (testssl's lines) that are not forward-secret AEAD.
fn weak_ciphers(ciphers: &[String]) -> Vec<String> {
    ciphers
        .iter()
        .filter(|c| {
            let t: Vec<&str> = c.split_whitespace().collect();
            let (kx, enc) = (t.get(4).copied().unwrap_or(""), t.get(6).copied().unwrap_or(""));
            let forward_secret = kx.starts_with("ECDH") || kx == "DH";
            let aead = matches!(enc, "AESGCM" | "ChaCha20" | "AESCCM" | "AESCCM8");
            !(forward_secret && aead)
        })
        .cloned()
        .collect()
}

/// An attacker learns nothing and gets nowhere: svwar finds no extension (a known and an
/// unknown id get the same answer), no unauthenticated call is answered and no authenticated
/// one leaves the PBX, a malformed-SIP burst leaves Asterisk healthy and calling, no path reaches
/// a file outside the static directory, and both TLS listeners offer TLS 1.2/1.3 with
/// forward-secret AEAD suites only, chained to the deployment's CA.
#[test]
fn an_attacker_finds_no_extension_no_route_out_and_no_weak_tls() {
    if cannot_run() {
        return;
    }
    // The scanner is on an allowed network: the guard must not hide what Asterisk itself answers.
    let scanner = Peer::new("scan");
    let allow = scanner.network();
    let stack = Stack::up(
        "audit",
        |t| t.replace("allow = [\"192.0.2.0/24\", \"2001:db8::/32\"]", &format!("allow = [\"{allow}\"]")),
        &[],
    );
    let plan = stack.plan.clone();
    let art = crate::clients::artifacts("audit");
    let sip = plan.network.sip_port;
    let domain = plan.tls.domain.clone();

    // 1. Enumeration: svwar --force over 100-4000 with each method finds nothing.
    let started = Instant::now();
    for method in ["REGISTER", "INVITE", "OPTIONS"] {
        let out = svwar(&scanner, scanner.server, sip, method, "100-4000");
        std::fs::write(art.join(format!("svwar-{method}.txt")), &out).unwrap();
        assert!(svwar_found(&out).is_empty(), "svwar {method} found extensions:\n{out}");
        assert!(out.contains("found nothing"), "svwar {method} did not report:\n{out}");
        // svwar first asks for a random id to learn what "no such user" looks like; here that is
        // the same 401 challenge every id gets, so it says it cannot work and stops.
        assert!(out.contains("svwar will probably not work"), "svwar {method} told users apart:\n{out}");
    }
    let svwar_took = started.elapsed();
    // svwar stops there, so the audit finishes its scan: a REGISTER for every id of 100-4000
    // (199, 3001 and 3002 among them) gets the very answer an unknown id gets.
    let to = scanner.to(sip);
    let d = domain.clone();
    let started = Instant::now();
    let shapes = scanner.run(move || Ua::new(to, &d).enumerate(100..=4000));
    let enumerate_took = started.elapsed();
    assert_eq!(shapes.values().map(Vec::len).sum::<usize>(), 3901, "not every id was answered");
    assert_eq!(
        shapes.len(),
        1,
        "ids are told apart: {:?}",
        shapes.iter().map(|(k, v)| (k, v.len(), &v[..v.len().min(5)])).collect::<Vec<_>>()
    );
    // ... and a known and an unknown id get the same answer.
    let to = scanner.to(sip);
    let d = domain.clone();
    let (known, unknown) = scanner.run(move || {
        let ua = Ua::new(to, &d);
        (ua.register_probe("3001").unwrap(), ua.register_probe("9999").unwrap())
    });
    assert!(
        !distinguishable(&known, &unknown),
        "3001 and 9999 answered differently:\n{}\n---\n{}",
        known.raw,
        unknown.raw
    );
    // The twin: a responder that leaks is caught by both checks.
    let stop = Arc::new(AtomicBool::new(false));
    let leak_port = ports::free_port();
    let leaky = leaky_responder(SocketAddr::from((scanner.server, leak_port)), stop.clone());
    let out = svwar(&scanner, scanner.server, leak_port, "REGISTER", "3000-3005");
    assert_eq!(svwar_found(&out), ["3001"], "svwar missed the leaky responder's extension:\n{out}");
    let to = SocketAddr::from((scanner.server, leak_port));
    let d = domain.clone();
    let (k, u) = scanner.run(move || {
        let ua = Ua::new(to, &d);
        (ua.register_probe("3001").unwrap(), ua.register_probe("9999").unwrap())
    });
    assert!(distinguishable(&k, &u), "the same-answer check missed a leak");
    stop.store(true, Ordering::SeqCst);
    leaky.join().unwrap();

    // 2. Toll fraud: no unauthenticated call is answered; no authenticated one leaves the PBX;
    // the twin: an authenticated call to the echo extension is answered 200.
    let (pw, echo) = (stack.password("3002"), plan.dialplan.echo_extension.clone());
    let d = domain.clone();
    let to = scanner.to(sip);
    let (unauth, external, echo_call) = scanner.run(move || {
        let ua = Ua::new(to, &d);
        let unauth = ["3001", "600", "0044123456789"].map(|t| (t, ua.invite("9999", None, t).map(|a| a.code)));
        let external = ["0044123456789", "+15551234567", "9011441234567"]
            .map(|t| (t, ua.invite("3002", Some(&pw), t).map(|a| a.code)));
        (unauth, external, ua.invite("3002", Some(&pw), &echo).map(|a| a.code))
    });
    for (target, code) in unauth {
        assert!(code.is_some_and(|c| c != 200 && c >= 400), "an unauthenticated INVITE to {target} got {code:?}");
    }
    for (target, code) in external {
        assert!(code.is_some_and(|c| c >= 400), "an authenticated INVITE to {target} got {code:?}");
    }
    assert_eq!(echo_call, Some(200), "the authenticated call to the echo extension was not answered");

    // 3. A malformed-SIP burst: garbage, oversized headers, truncated INVITEs (UDP), garbage on
    // the TLS listeners. Asterisk stays up (same container start), healthy, and still calls.
    let started_at = || {
        let id = stack.container("asterisk");
        let out = Command::new("docker").args(["inspect", "-f", "{{.State.StartedAt}}", &id]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = started_at();
    let (udp, tls_port, wss_port) =
        (scanner.to(sip), scanner.to(plan.network.sip_tls_port), scanner.to(plan.network.wss_port));
    let sent = scanner.run(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut sent = 0;
        let invite = "INVITE sip:600@localhost SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx\r\n\
                      From: <sip:9999@localhost>;tag=1\r\nTo: <sip:600@localhost>\r\nCall-ID: burst\r\nCSeq: 1 INVITE\r\n\
                      Content-Length: 0\r\n\r\n";
        for i in 0..300usize {
            let mut junk = vec![0u8; 32 + (i * 37) % 1400];
            getrandom::fill(&mut junk).unwrap();
            let msg: Vec<u8> = match i % 5 {
                0 => junk,
                1 => invite.as_bytes()[..(i * 7) % invite.len()].to_vec(),
                2 => invite.replacen("Max-Forwards", &format!("X-Long: {}\r\nMax-Forwards", "A".repeat(60_000)), 1).replacen("Call-ID: burst", "Call-ID: burst\r\nX-Long: ", 1).into_bytes(),
                3 => format!("INVITE sip:{} SIP/2.0\r\nContent-Length: 99999\r\n\r\n", "6".repeat(2000)).into_bytes(),
                _ => invite.replace("SIP/2.0\r\n", "SIP/9.9\r\n\u{0}\u{1}").into_bytes(),
            };
            if sock.send_to(&msg, udp).is_ok() {
                sent += 1;
            }
        }
        for addr in [tls_port, wss_port] {
            for i in 0..20 {
                if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    use std::io::Write;
                    let mut junk = vec![0u8; 512 + i * 100];
                    getrandom::fill(&mut junk).unwrap();
                    let _ = s.write_all(&junk);
                    sent += 1;
                }
            }
        }
        sent
    });
    std::thread::sleep(Duration::from_secs(2));
    stack.wait_healthy("asterisk", Duration::from_secs(30));
    assert_eq!(started_at(), before, "Asterisk restarted during the burst");
    let (pw, echo, d, to) =
        (stack.password("3002"), plan.dialplan.echo_extension.clone(), domain.clone(), scanner.to(sip));
    let after = scanner.run(move || Ua::new(to, &d).invite("3002", Some(&pw), &echo).map(|a| a.code));
    assert_eq!(after, Some(200), "after the burst an authenticated call to the echo extension was not answered");

    // 4. Path traversal on the HTTPS port returns no file; the twin: the static file itself is served.
    let ca = stack.dir.path().join("deploy/keys/ca.crt");
    let get = |path: &str| {
        let out = scanner
            .command("curl")
            .args(["-s", "--path-as-is", "--max-time", "5", "-w", "\n%{http_code}", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("localhost:{}:{}", plan.network.wss_port, scanner.server)])
            .arg(format!("https://localhost:{}{path}", plan.network.wss_port))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.trim().to_string(), body.to_string())
    };
    let (code, body) = get("/static/phone/index.html");
    assert!(code == "200" && body.contains("<html"), "the twin: the static file was not served ({code})");
    let traversals = [
        "/static/../../../../etc/passwd",
        "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/phone/../../../../../etc/asterisk/pjsip_auth.conf",
        "/static/....//....//....//etc/passwd",
        "/static/..\\..\\..\\..\\etc\\passwd",
        "/httpstatus/../../etc/passwd",
    ];
    for path in traversals {
        let (code, body) = get(path);
        assert_ne!(code, "200", "{path} answered 200:\n{body}");
        assert!(!body.contains("root:") && !body.contains("password"), "{path} returned a file:\n{body}");
    }

    // 5. testssl.sh on both TLS listeners.
    let mut summary = Vec::new();
    for (name, port) in [("wss", plan.network.wss_port), ("sip-tls", plan.network.sip_tls_port)] {
        let f = testssl(&scanner, port, &ca, true, &art, name);
        assert_eq!(f.offered, ["TLS1_2", "TLS1_3"], "{name}: protocols offered");
        assert_eq!(f.not_offered, ["SSLv2", "SSLv3", "TLS1", "TLS1_1"], "{name}: protocols not offered");
        assert!(!f.ciphers.is_empty(), "{name}: testssl found no cipher");
        assert!(weak_ciphers(&f.ciphers).is_empty(), "{name}: weak suites {:?}", weak_ciphers(&f.ciphers));
        assert!(f.chain.starts_with("passed"), "{name}: chain of trust: {}", f.chain);
        let names: Vec<&str> = f.ciphers.iter().filter_map(|c| c.split_whitespace().nth(3)).collect();
        summary.push(format!("{name}: {} / {}", f.offered.join(", "), names.join(" ")));
    }
    // The twin: the same checks refuse a listener that offers a CBC suite without TLS 1.3.
    let weak_port = ports::free_port();
    let keys = stack.dir.path().join("deploy/keys");
    let mut weak = Command::new("openssl")
        .args(["s_server", "-quiet", "-no_tls1_3", "-cipher", "ECDHE-ECDSA-AES128-SHA", "-accept"])
        .arg(format!("{}:{weak_port}", scanner.server))
        .arg("-cert")
        .arg(keys.join("asterisk.crt"))
        .arg("-key")
        .arg(keys.join("asterisk.key"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let f = testssl(&scanner, weak_port, &ca, false, &art, "weak-twin");
    let _ = weak.kill();
    let _ = weak.wait();
    assert!(!weak_ciphers(&f.ciphers).is_empty(), "the twin: a CBC suite went unnoticed: {:?}", f.ciphers);
    assert_ne!(f.offered, ["TLS1_2", "TLS1_3"], "the twin: a server without TLS 1.3 passed");

    // The twin of the health check: with Asterisk stopped, the same call gets no answer.
    let out = stack.project.run(&["stop", "asterisk"]);
    assert!(out.status.success());
    let (pw, echo, d, to) =
        (stack.password("3002"), plan.dialplan.echo_extension.clone(), domain.clone(), scanner.to(sip));
    let down = scanner.run(move || Ua::new(to, &d).invite("3002", Some(&pw), &echo).map(|a| a.code));
    assert_eq!(down, None, "the twin: a stopped Asterisk answered");
    eprintln!(
        "AUDIT scan: svwar REGISTER/INVITE/OPTIONS found nothing ({svwar_took:.1?}: it gives up, every id gets \
         the same challenge); REGISTER for all 3901 ids of 100-4000 answered alike in {enumerate_took:.1?}; 3001 \
         and 9999 answered alike ({} {}); unauthenticated INVITEs refused, 0044/+1/9011 refused, echo 200; malformed burst of \
         {sent} packets: Asterisk healthy, call answered; {} traversal paths: no file",
        known.code,
        known.raw.lines().next().unwrap_or("").trim_start_matches("SIP/2.0 ").split_once(' ').map_or("", |x| x.1),
        traversals.len()
    );
    for s in summary {
        eprintln!("AUDIT testssl {s}");
    }
}

/// nmap's verdict on one UDP port of the deployment, from `peer` (`closed`: the host answered
/// ICMP port unreachable, nothing listens; `open|filtered`: no answer).
fn nmap_udp(peer: &Peer, port: u16) -> String {
    let out = peer
        .command("nmap")
        .args(["-sU", "-Pn", "-n", "--reason", "-p", &port.to_string()])
        .arg(peer.server.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with(&format!("{port}/udp")))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("nmap printed no verdict:\n{text}"))
        .to_string()
}

/// A phone over SIP-TLS with SRTP calls the echo extension and hears itself; a capture of the
/// SIP-TLS port holds no cleartext SIP. The twin: the same capture of a UDP phone's call shows it.
#[test]
fn a_tls_phone_calls_over_srtp_and_nothing_is_in_the_clear() {
    if cannot_run() {
        return;
    }
    let phone_net = Peer::new("phone");
    let stack = Stack::up("tlsphone", |t| t, &["asterisk"]);
    let plan = stack.plan.clone();
    let art = crate::clients::artifacts("tls-phone");
    let ca = stack.dir.path().join("deploy/keys/ca.crt");
    let endpoint = stack.exec("asterisk", &["asterisk", "-rx", "pjsip show endpoint 3001"]);
    assert!(
        endpoint.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["media_encryption", ":", "sdes"]),
        "3001 does not use SDES-SRTP:\n{endpoint}"
    );

    let capture =
        Capture::start(&phone_net, &format!("tcp port {}", plan.network.sip_tls_port), art.join("sip-tls.pcap"));
    let pw = stack.password("3001");
    let phone = Phone {
        peer: &phone_net,
        user: "3001",
        password: &pw,
        server_port: plan.network.sip_tls_port,
        transport: "tls",
        ca: &ca,
        dir: &art,
    };
    let (log, established) = phone.call(&plan.dialplan.echo_extension, 6);
    std::fs::write(art.join("baresip.log"), &log).unwrap();
    let (bytes, packets) = capture.finish();
    assert!(log.contains("200 OK"), "3001 did not register over TLS:\n{log}");
    assert!(established, "the call over TLS was not established:\n{log}");
    assert!(log.contains("SRTP is Enabled"), "the call's media was not SRTP:\n{log}");
    let rms = crate::clients::received_rms(&art);
    assert!(rms > 0.01, "the TLS phone heard silence (RMS {rms})");
    assert!(packets > 10, "the capture saw only {packets} packets of the TLS call");
    let seen = cleartext_in(&bytes);
    assert!(seen.is_empty(), "cleartext SIP on the TLS port: {seen:?}");

    // The twin: a UDP phone's call, captured the same way, is readable.
    let twin_dir = art.join("udp-twin");
    std::fs::create_dir_all(&twin_dir).unwrap();
    let capture =
        Capture::start(&phone_net, &format!("udp port {}", plan.network.sip_port), twin_dir.join("sip-udp.pcap"));
    let pw = stack.password("3002");
    let phone = Phone {
        user: "3002",
        password: &pw,
        server_port: plan.network.sip_port,
        transport: "udp",
        dir: &twin_dir,
        ..phone
    };
    let (log, established) = phone.call(&plan.dialplan.echo_extension, 3);
    let (bytes, _) = capture.finish();
    assert!(established, "the UDP twin's call failed:\n{log}");
    let seen = cleartext_in(&bytes);
    assert!(
        seen.contains(&"INVITE sip:") && seen.contains(&"SIP/2.0"),
        "the capture missed the UDP phone's SIP: {seen:?}"
    );
    // astrtc verify checks the SIP-TLS listener's certificate like the WSS one.
    let out = astrtc().args(["verify", "--spec"]).arg(stack.dir.path().join("astrtc.toml")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "astrtc verify failed:\n{text}");
    let tls_line = format!("on 127.0.0.1:{}, certificate for localhost", plan.network.sip_tls_port);
    assert!(text.lines().any(|l| l.starts_with("ok   sip tls") && l.contains(&tls_line)), "{text}");
    eprintln!(
        "AUDIT tls phone: registered and called {} over TLS with SRTP (AES_CM_128_HMAC_SHA1_80), echo RMS {rms:.3}; \
         {packets} packets captured on the SIP-TLS port, no cleartext SIP; the UDP twin's capture shows {seen:?}",
        plan.dialplan.echo_extension
    );
}

/// A spec with browsers only opens no SIP-over-UDP listener on the network: nmap finds the port
/// closed, while Asterisk still answers OPTIONS on loopback. The twin: with a UDP phone in the
/// spec, the port is open to the same scan.
#[test]
fn a_webrtc_only_spec_opens_no_udp_sip_listener() {
    if cannot_run() {
        return;
    }
    let scanner = Peer::new("nmap");
    let only = Stack::of("webrtc-only", "webrtc-only", |t| t, &["asterisk"]);
    let port = only.plan.network.sip_port;
    assert_eq!(nmap_udp(&scanner, port), "closed", "a WebRTC-only deployment listens for SIP over UDP");
    let local = crate::common::sip::options_over_udp(SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(3));
    assert!(local.is_some(), "OPTIONS over loopback got no answer");
    // astrtc verify at another address of this host says so, and passes.
    let out = astrtc()
        .args(["verify", "--spec"])
        .arg(only.dir.path().join("astrtc.toml"))
        .args(["--host", &scanner.server.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "astrtc verify failed:\n{text}");
    assert!(text.lines().any(|l| l.starts_with("ok   sip udp") && l.contains("no UDP SIP listener on")), "{text}");
    drop(only);
    let phones = Stack::up("udp-twin", |t| t, &["asterisk"]);
    let verdict = nmap_udp(&scanner, phones.plan.network.sip_port);
    assert_ne!(verdict, "closed", "the twin: the UDP phones' listener was not found");
    eprintln!("AUDIT webrtc-only: nmap -sU finds the SIP port closed (with UDP phones: {verdict})");
}

/// A renewed certificate reaches the SIP-TLS listener without dropping what is connected: after
/// the files change, `module reload res_pjsip.so` (what astrtc-reload runs after a certificate change) makes new
/// handshakes get the new certificate, while a TLS connection opened before it still carries SIP.
/// The twin: without the reload the old certificate is still served.
#[test]
fn a_renewed_certificate_reaches_the_sip_tls_listener_without_dropping_connections() {
    if cannot_run() {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let stack = Stack::up("renew", |t| t, &["asterisk"]);
    let plan = stack.plan.clone();
    let port = plan.network.sip_tls_port;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let serial = || astrtc::verify::check_tls(addr, &plan.tls.domain, &stack.ca_pem()).unwrap().leaf.serial;
    let before = serial();

    // A TLS connection opened before the renewal (openssl s_client, as a phone holds one).
    let mut held = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    crate::common::docker::install_leaf_for(stack.dir.path(), &plan, &plan.tls.domain);
    assert_eq!(serial(), before, "the twin: the new certificate was served before any reload");
    let out = stack.exec("asterisk", &["asterisk", "-rx", "module reload res_pjsip.so"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let s = serial();
        if s != before || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_ne!(after, before, "the SIP-TLS listener still serves the old certificate after the reload: {out}");

    // The connection from before still carries SIP.
    let options = format!(
        "OPTIONS sip:{d} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKheld{t}\r\nMax-Forwards: 70\r\n\
         To: <sip:{d}>\r\nFrom: <sip:held@{d}>;tag={t}\r\nCall-ID: held-{t}\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        d = plan.tls.domain,
        t = token()
    );
    held.stdin.as_mut().unwrap().write_all(options.as_bytes()).unwrap();
    held.stdin.as_mut().unwrap().flush().unwrap();
    let stdout = held.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = BufReader::new(stdout).read_line(&mut first);
        let _ = tx.send(first);
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    let _ = held.kill();
    let _ = held.wait();
    assert!(first.starts_with("SIP/2.0 "), "the connection opened before the reload is gone: {first:?}");
    eprintln!("AUDIT renewal: SIP-TLS served serial {after} after `module reload res_pjsip.so` (was {before}); the held connection answered {}", first.trim());
}
