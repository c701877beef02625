//! The cluster topology (`topology = "cluster"`, issue 16) for real: the compose stack rendered
//! from the `cluster-compose` fixture — Debian's Kamailio (edge) and rtpengine (relay) on the host
//! network, PostgreSQL and two Asterisk servers (the image this repository builds) on the pool's
//! network — on free ports and a subnet of its own, with real clients:
//!
//! 1. two Chromium browsers running the demo phone register through the edge and call each
//!    other (user → edge → user): opus, DTLS connected on both sides, packets received both
//!    ways, the media through rtpengine (the pool takes no call); then one calls the echo
//!    extension (DTLS-SRTP to the relay, plain RTP to a pool member) and hears it back;
//! 2. 20 echo calls from astrtc's own media probe (SIP over UDP, G.711 through the relay) land on
//!    both pool members, each at least 5, each with its audio echoed; then 4 WebRTC echo calls
//!    from the probe (ICE and DTLS-SRTP with the relay, plain RTP on to the pool, whose SSRC the
//!    relay's answer does not name) are echoed too;
//! 3. a pool member (a replica of the pool's `asterisk` service, `asterisk-N` here) stopped with
//!    `docker stop` (its drain: OPTIONS and INVITEs answered 503) is marked inactive by the edge's probes and takes none of the new calls, while the call it
//!    holds keeps its audio;
//! 4. an edge restart keeps a UDP phone's registration (the PostgreSQL row is unchanged) and
//!    the phone is called through the restarted edge with audio both ways; a call held across
//!    the restart keeps its audio and its BYE, sent afterwards, is answered (dialog in the database);
//! 5. forged in-dialog requests (a Route header naming the edge, no call behind them) are
//!    answered 481 and not sent on, while the edge's own calls end with their BYE answered;
//! 6. the edge bans a password guesser (wrong passwords over UDP and WSS, an unknown user,
//!    another user's credentials; svcrack's malformed UDP credentials are never counted) after
//!    `security.ban_after` failures, serves every other address meanwhile, never bans
//!    `security.allow`, and lifts the ban after `ban_seconds`;
//! 7. `astrtc bench calls` through the edge (sip-echo and webrtc-echo) sets up every call and
//!    reads the CPU of every service — each pool member, the edge, the relay, the database —
//!    with the pool's sum as Asterisk's; both members carry calls; a kind a cluster cannot
//!    measure (webrtc-to-sip) and `--container` are refused before a call is placed;
//! 8. `astrtc verify --call` against the cluster: every check passes, among them each pool
//!    member active in the edge's dispatcher, the users in the database, and a WebRTC and a SIP
//!    call through the edge with audio back; a stopped member and a missing user fail the
//!    check that names them;
//! 9. a phone registered over UDP from behind a NAT (its Contact a private address, not the one
//!    it sends from) gets the edge's keepalive OPTIONS every `cluster.natping_seconds`, at the
//!    address it sends from; a phone not behind a NAT gets none, nor does one behind a NAT that
//!    registered over TLS (its connection held open; its contact not flagged for keepalives);
//! 10. a renewed certificate (a new leaf from the deployment's CA in deploy/keys) is served by
//!     the edge's WSS listener without a restart, while a WebSocket opened before still carries
//!     SIP;
//! 11. a UDP flood of OPTIONS from one address (above `cluster.flood_requests_per_second`) is
//!     dropped while it lasts (not banned: a UDP source can be forged), while another address is
//!     served and loopback's flood is served whole; a flood over a connection (WSS, TLS) bans its
//!     address (no answer over UDP or a new connection) until `security.ban_seconds` have passed,
//!     while another address is served;
//! 12. `astrtc apply` adds a user and changes a password by writing the database: the new user
//!     registers, the old password is refused and the new one taken, while the edge runs on (same
//!     container, start time and PID), a WebSocket and a call opened before stay up and an earlier
//!     registration stays in `location`; a request URI written to change the edge's user query is
//!     no user.
//! 13. the pool grows and shrinks with nothing else restarted and a call held across it all:
//!     `astrtc apply` with `pool_size` 3 starts a third replica, `docker compose up --scale
//!     asterisk=4` (no astrtc) a fourth that takes calls, `--scale asterisk=3` removes it, and
//!     `apply` with `pool_size` 2 drains and removes the third once `--yes` is given; each time
//!     the edge's dispatcher holds exactly the running replicas (the pool watcher).
//!
//! 16. a phone over TLS (baresip, SRTP required) registers at the edge's SIP-over-TLS port and
//!     calls the echo extension: SDES-SRTP on its leg (no plain RTP or SIP on its link, which a
//!     UDP twin's capture does show), plain RTP to the pool; SIP over TCP to the SIP port is
//!     refused and raw SIP over TLS on the WSS port unanswered; `verify` checks the edge's SIP-TLS
//!     certificate;
//! 17. and 18. the TLS phone calls a browser (DTLS-SRTP on the browser's leg) and a UDP phone
//!     (plain RTP on its leg), user to user through the relay, audio both ways.
//! 21. a rotation of the edge's key (`secrets --rotate edge-key`, `apply --yes`) reloads the pool
//!     in place and restarts the edge, a call held across it keeps its audio, both keys are taken
//!     until `--finish-rotation edge-key` and `apply` (which restart nothing), the old one not after;
//! 22. with the relay down, a call through the edge is refused 503 Media Relay Unavailable (not
//!     answered without a media path) and the pool is not called; with it back, a call is echoed;
//! 23. user to user, the edge's header reaches no user (nor its key), and one a user's reply
//!     carries is stripped before the other user gets it.
//!
//! Figures (packets, times) are printed; the only time limits are bounded waits for readiness.
//!
//! The tests by subject (with the numbers of the proofs above they hold), a file each with the
//! helpers only it uses; what several files share is here:
//! - `calls`: browsers and phones calling each other and the echo extension, the relay down (1, 2, 16 to 18, 22);
//! - `pool`: the pool at work: draining, failover, `bench`, `verify`, `apply` of users, scaling by `apply` and compose (3, 7, 8, 12, 13, 14);
//! - `edge`: the edge itself: a restart, NAT keepalives, a renewed certificate, `max_contacts` (4, 9, 10);
//! - `security`: floods, bans, password guessers, forged in-dialog requests, the edge's key and its rotation, transports (5, 6, 11, 21, 23).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use astrtc::media::probe::{CallReport, CallSetup, LegSetup};
use astrtc::media::session::Offer;
use astrtc::plan::Plan;
use serde_json::Value;

use crate::common::docker::{
    cluster_test_images_spec, ensure_cluster_images, ensure_image, test_image, ComposeProject, HostPorts,
};
use crate::common::sip::SipConnection;
use crate::common::*;

mod calls;
mod edge;
mod pool;
mod security;

/// A running cluster: the compose project (removed on drop, volumes too), its directory and plan.
struct Stack {
    // First: `docker compose down` runs in the directory, before it is removed.
    project: ComposeProject,
    dir: tempfile::TempDir,
    plan: Plan,
}

/// A subnet for this stack's pool network that no other Docker network on this host uses.
fn free_subnet() -> String {
    let used = Command::new("sh")
        .args([
            "-c",
            "docker network inspect $(docker network ls -q) --format '{{range .IPAM.Config}}{{.Subnet}} {{end}}'",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let start = (std::process::id() % 150) as u16;
    for i in 0..150u16 {
        let octet = 100 + (start + i) % 150;
        let subnet = format!("172.29.{octet}.0/24");
        if !used.contains(&format!("172.29.{octet}.")) && claim(&subnet) {
            return subnet;
        }
    }
    panic!("no free 172.29.x.0/24 subnet");
}

/// Each subnet once per test run (tests here run at once).
fn claim(subnet: &str) -> bool {
    static TAKEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    if taken.iter().any(|s| s == subnet) {
        return false;
    }
    taken.push(subnet.to_string());
    true
}

impl Stack {
    /// The cluster fixture on free ports and a free subnet, its spec changed by `edit`, rendered
    /// and started (`up --wait`: every service healthy); `None` when Docker tests are off.
    fn start(test: &str, edit: impl FnOnce(String) -> String) -> Option<Stack> {
        if docker_off() {
            return None;
        }
        ensure_image();
        ensure_cluster_images();
        let dir = fixture_copy("cluster-compose");
        let spec = dir.path().join("astrtc.toml");
        let text = std::fs::read_to_string(&spec).unwrap();
        let moved = HostPorts::free().apply(&text);
        assert_ne!(moved, text, "the fixture's ports were not found");
        let project =
            format!("astrtc-cl-{}-{}", test.replace('_', "-").chars().take(20).collect::<String>(), std::process::id());
        let moved = moved
            .replacen("name = \"astrtc-cluster\"", &format!("name = {project:?}\nimage = {:?}", test_image()), 1)
            .replace("subnet = \"172.29.0.0/24\"", &format!("subnet = {:?}", free_subnet()))
            .replace(
                "relay_control_port = 12223\n",
                &format!("relay_control_port = {}\n{}", ports::free_port(), cluster_test_images_spec()),
            )
            .replace("sip_tls_port = 15061", &format!("sip_tls_port = {}", ports::free_port()));
        assert!(moved.contains("edge_image = "), "the fixture's [cluster] has no relay_control_port line to follow");
        std::fs::write(&spec, edit(moved)).unwrap();
        let plan = plan_for(&spec, astrtc::plan::HostFacts::detect()).unwrap();
        let deploy = dir.path().join("deploy");
        astrtc::deploy::write(&plan, &deploy).unwrap();
        let project = ComposeProject { dir: deploy };
        let started = Instant::now();
        let out = project.run(&["up", "-d", "--wait", "--wait-timeout", "180"]);
        if !out.status.success() {
            let logs = project.run(&["logs", "--no-color", "--tail", "60"]);
            panic!(
                "the cluster did not come up: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&logs.stdout)
            );
        }
        eprintln!("cluster {} up (every service healthy) in {:.1?}", plan.name, started.elapsed());
        let stack = Stack { project, dir, plan };
        // Every test finds the members as replicas: so many as the spec says run.
        let names: Vec<String> = stack.members().into_iter().map(|m| m.name).collect();
        let want: Vec<String> = (1..=stack.cluster().pool_size).map(|n| format!("asterisk-{n}")).collect();
        assert_eq!(names, want, "the pool's running replicas");
        Some(stack)
    }

    fn cluster(&self) -> &astrtc::plan::Cluster {
        self.plan.cluster.as_ref().unwrap()
    }

    fn password(&self, id: &str) -> String {
        self.plan.endpoints.iter().find(|e| e.id == id).unwrap().password.expose().to_string()
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("deploy/keys/ca.crt")).unwrap()
    }

    /// The pool's running members (replicas of its `asterisk` service), by replica number: each
    /// one's name (`asterisk-N`), container and address on the pool's network.
    fn members(&self) -> Vec<Member> {
        let out = self.project.run(&["ps", "-q", "asterisk"]);
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
        let network = format!("{}_pool", self.plan.name);
        let mut members: Vec<(u32, Member)> = ids
            .iter()
            .map(|id| {
                let format = format!(
                    "{{{{index .Config.Labels \"com.docker.compose.container-number\"}}}} \
                     {{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"
                );
                let out = Command::new("docker").args(["inspect", "-f", &format, id]).output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
                let (n, address) = text.split_once(' ').unwrap_or_else(|| panic!("docker inspect {id}: {text:?}"));
                let n: u32 = n.parse().unwrap_or_else(|_| panic!("replica number of {id}: {text:?}"));
                let address = address.parse().unwrap_or_else(|_| panic!("address of {id}: {text:?}"));
                (n, Member { name: format!("asterisk-{n}"), id: id.clone(), address })
            })
            .collect();
        members.sort_by_key(|(n, _)| *n);
        members.into_iter().map(|(_, m)| m).collect()
    }

    /// `docker compose exec -T SERVICE ARGS` (a pool member by its name, `asterisk-N`: the
    /// pool service's replica N): its stdout (panics on failure).
    fn exec(&self, service: &str, args: &[&str]) -> String {
        let index = service.strip_prefix("asterisk-").map(|n| format!("--index={n}"));
        let mut all = vec!["exec", "-T"];
        match &index {
            Some(index) => all.extend([index.as_str(), "asterisk"]),
            None => all.push(service),
        }
        all.extend_from_slice(args);
        let out = self.project.run(&all);
        assert!(
            out.status.success(),
            "{service} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A query in the edge's database (unaligned, tuples only).
    fn sql(&self, query: &str) -> String {
        self.exec("db", &["psql", "-U", "postgres", "-d", "kamailio", "-tAc", query])
    }

    /// Calls a pool member has taken so far (`calls processed`).
    fn processed(&self, member: &str) -> u64 {
        let out = self.exec(member, &["asterisk", "-rx", "core show channels count"]);
        count_before(&out, " call processed").or_else(|| count_before(&out, " calls processed")).unwrap_or(0)
    }

    /// Calls up on a pool member now.
    fn active(&self, member: &str) -> u64 {
        let out = self.exec(member, &["asterisk", "-rx", "core show channels count"]);
        count_before(&out, " active call").unwrap_or(0)
    }

    /// The dispatcher's flags for each pool member, as the edge sees them (`AP`: active and
    /// probed, `IP`: inactive and probed).
    fn dispatcher_flags(&self) -> Vec<(String, String)> {
        let out = self.exec("edge", &["kamcmd", "-s", "unix:/run/kamailio/kamailio_ctl", "dispatcher.list"]);
        astrtc::verify::parse_dispatcher_list(&out)
    }

    /// Waits (20 s at most) until the edge's dispatcher holds every running member active.
    fn wait_all_active(&self) {
        let members = &self.members();
        let all =
            wait_until(Duration::from_secs(20), || members.iter().all(|m| self.flags_of(m.address).starts_with('A')));
        assert!(all.is_some(), "not every member is active at the edge: {:?}", self.dispatcher_flags());
    }

    /// The member's dispatcher flags.
    fn flags_of(&self, address: Ipv4Addr) -> String {
        let want = format!("sip:{address}:");
        self.dispatcher_flags().into_iter().find(|(u, _)| u.starts_with(&want)).map(|(_, f)| f).unwrap_or_default()
    }

    /// A WebRTC echo call from astrtc's probe through the edge (ICE + DTLS-SRTP to the relay).
    fn webrtc_setup(&self, user: &str, extension: &str, hold: Duration) -> CallSetup {
        CallSetup {
            leg: LegSetup::Webrtc {
                wss: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.plan.network.wss_port),
                ca_pem: Arc::from(self.ca_pem()),
                local_ips: Vec::new(),
                relay: None,
            },
            domain: self.plan.tls.domain.clone(),
            user: user.to_string(),
            password: self.password(user),
            extension: extension.to_string(),
            hold,
            register: false,
            offer: Offer::OpusThenPcmu,
            reencoded: false,
            release: None,
        }
    }

    /// A plain SIP call (UDP, G.711) from the probe through the edge.
    fn sip_setup(&self, user: &str, extension: &str, hold: Duration) -> CallSetup {
        CallSetup {
            leg: LegSetup::Sip { server: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.plan.network.sip_port) },
            ..self.webrtc_setup(user, extension, hold)
        }
    }

    fn save_logs(&self, test: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/astrtc-artifacts").join(test);
        let _ = std::fs::create_dir_all(&dir);
        let out = self.project.run(&["logs", "--no-color", "--timestamps"]);
        let _ = std::fs::write(dir.join("compose.log"), &out.stdout);
        eprintln!("logs of every service: {}", dir.join("compose.log").display());
    }
}

/// The number in front of `what` in Asterisk's `core show channels count` output.
fn count_before(out: &str, what: &str) -> Option<u64> {
    out.lines().find_map(|l| l.split_once(what).and_then(|(n, _)| n.trim().parse().ok()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Prints a call's figures and returns the packets echoed back (matched by payload).
fn figures(label: &str, r: &CallReport) -> u64 {
    let m = r.media.as_ref();
    eprintln!(
        "{label}: {} — answered {:?} ms, DTLS {:?} ms, codec {:?}, sent {:?}, echoed {:?}, loss {:?} %",
        if r.healthy() { "ok" } else { "FAILED" },
        r.answered_ms.map(|x| x.round()),
        r.dtls_connected_ms.map(|x| x.round()),
        r.codec,
        m.map(|m| m.sent),
        m.map(|m| m.matched),
        m.map(|m| (m.steady_loss_percent * 10.0).round() / 10.0),
    );
    m.map(|m| m.matched).unwrap_or(0)
}

fn assert_echoed(label: &str, r: &CallReport, at_least: u64) {
    let echoed = figures(label, r);
    assert!(r.healthy(), "{label} failed: {:?}\nladder:\n{}", r.failure, r.ladder.join("\n"));
    assert!(echoed >= at_least, "{label}: only {echoed} packets echoed (at least {at_least} expected)");
}

/// Waits (at most `limit`) until `ready` holds; how long it took, or None.
fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if ready() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The container id of a compose service, or of a pool member by its name (`asterisk-N`).
fn container_of(stack: &Stack, service: &str) -> String {
    if service.starts_with("asterisk-") {
        let found = stack.members().into_iter().find(|m| m.name == service);
        return found.unwrap_or_else(|| panic!("no running pool member {service}")).id;
    }
    let out = stack.project.run(&["ps", "-q", service]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A running pool member ([`Stack::members`]).
#[derive(Debug, Clone)]
struct Member {
    /// `asterisk-N`: replica N of the pool's service.
    name: String,
    /// Its container's id.
    id: String,
    /// Its address on the pool's network.
    address: Ipv4Addr,
}

/// Runs `astrtc verify --json` (and `extra`) against the stack: exit code and report.
fn verify(stack: &Stack, extra: &[&str]) -> (i32, Value) {
    let out = astrtc()
        .args(["verify", "--json", "--spec"])
        .arg(stack.dir.path().join("astrtc.toml"))
        .arg("--out")
        .arg(stack.dir.path().join("deploy"))
        .args(["--host", "127.0.0.1"])
        .args(extra)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON report ({e}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// The status and detail of the check `name` of a verify report.
fn check_of(report: &Value, name: &str) -> (String, String) {
    let c = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#}"));
    (c["status"].as_str().unwrap_or_default().to_string(), c["detail"].to_string())
}

/// Registers `id` over UDP from `sock` with `contact` as its Contact, answering the challenge;
/// the final answer.
pub(crate) fn register_from(
    sock: &std::net::UdpSocket,
    to: SocketAddr,
    id: &str,
    password: &str,
    contact: &str,
) -> String {
    register_from_then(sock, to, id, password, contact, || {})
}

/// [`register_from`], calling `before_credentials` between the challenge and the REGISTER that
/// answers it (threads meeting at a barrier there send their credentials at once).
fn register_from_then(
    sock: &std::net::UdpSocket,
    to: SocketAddr,
    id: &str,
    password: &str,
    contact: &str,
    before_credentials: impl Fn(),
) -> String {
    let via = format!("UDP {}", sock.local_addr().unwrap());
    let mut sent = 0;
    let exchange = |request: &str| {
        sent += 1;
        if sent == 2 {
            before_credentials();
        }
        // Sent again when no answer comes within the socket's timeout, as a phone does over UDP
        // (a database stall on a loaded host must not fail a REGISTER the edge would take); only
        // the final answer with this request's CSeq counts (a resent challenge's second 401 is not
        // the answer to the credentials).
        let cseq = request.lines().find(|l| l.starts_with("CSeq: ")).expect("a CSeq").to_string();
        let mut buf = [0u8; 4096];
        let mut tries = 0;
        'send: loop {
            tries += 1;
            sock.send_to(request.as_bytes(), to).unwrap();
            loop {
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if !text.starts_with("SIP/2.0 1") && text.lines().any(|l| l == cseq) {
                            break 'send text;
                        }
                    }
                    Err(e)
                        if tries < 6
                            && matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                    {
                        continue 'send
                    }
                    Err(e) => panic!("no answer to REGISTER ({cseq}) in {tries} tries: {e}"),
                }
            }
        }
    };
    register_with(&via, exchange, to, id, password, contact)
}

/// [`register_from`] over a connection held open (TLS or WSS).
fn register_over(conn: &mut SipConnection, to: SocketAddr, id: &str, password: &str, contact: &str) -> String {
    let via = conn.via().to_string();
    let exchange = |request: &str| {
        conn.send(request).unwrap();
        loop {
            let text = conn.next(Duration::from_secs(5)).unwrap().expect("an answer to REGISTER");
            if text.starts_with("SIP/2.0 ") && !text.starts_with("SIP/2.0 1") {
                break text;
            }
        }
    };
    register_with(&via, exchange, to, id, password, contact)
}

/// A REGISTER from `via` (`UDP address:port`, `TLS …`), then one with the answer to its
/// challenge, each through `exchange` (sends a request, returns its final answer); the last answer.
fn register_with(
    via: &str,
    mut exchange: impl FnMut(&str) -> String,
    to: SocketAddr,
    id: &str,
    password: &str,
    contact: &str,
) -> String {
    use crate::common::sip::digest_authorization;
    let uri = format!("sip:{to}");
    let transport = via.split(' ').next().unwrap_or_default();
    // CSeq numbers rise across calls, as a phone's do: a refresh with the Call-ID of an earlier
    // REGISTER and a CSeq not above its own would be taken for a retransmission.
    static CSEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let first = CSEQ.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
    let mut auth = String::new();
    for cseq in first..=first + 1 {
        let register = format!(
            "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/{via};branch=z9hG4bK-{id}-{cseq};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:{id}@{to}>;tag={id}\r\nTo: <sip:{id}@{to}>\r\nCall-ID: nat-{id}-{transport}@test\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <{contact}>\r\nExpires: 300\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        let answer = exchange(&register);
        if !answer.starts_with("SIP/2.0 401") {
            return answer;
        }
        let challenge =
            answer.lines().find_map(|l| l.strip_prefix("WWW-Authenticate: ")).expect("a 401 with a challenge");
        auth =
            format!("Authorization: {}\r\n", digest_authorization(challenge, "REGISTER", &uri, id, password).unwrap());
    }
    panic!("challenged twice")
}

/// The first SIP request `sock` receives within `limit`, if any.
fn next_request(sock: &std::net::UdpSocket, limit: Duration) -> Option<String> {
    let until = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        sock.set_read_timeout(Some(left)).unwrap();
        let Ok((n, _)) = sock.recv_from(&mut buf) else { return None };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if !text.starts_with("SIP/2.0 ") {
            return Some(text);
        }
    }
    None
}

/// OPTIONS number `i` of a flood from `via` (`UDP address:port`, `TLS …`, `WSS …`) to `to`.
fn flood_options(via: &str, to: SocketAddr, i: usize) -> String {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/{via};branch=z9hG4bK-flood-{i};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:flood@{to}>;tag=flood{i}\r\nTo: <sip:{to}>\r\nCall-ID: flood-{i}@test\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A connection a phone or a browser opens to the edge, with the edge's name and CA.
#[derive(Clone, Copy)]
enum Over<'a> {
    /// SIP over TLS, as phones with `transport = "tls"` use (on `network.sip_tls_port`).
    Tls(&'a str, &'a str),
    /// SIP over a secure WebSocket, as browsers use (on `network.wss_port`).
    Wss(&'a str, &'a str),
}

/// Whether an OPTIONS over a new connection to `to` is answered within `limit`.
fn options_over_new_connection(to: SocketAddr, over: Over<'_>, limit: Duration) -> bool {
    let mut conn = match over {
        Over::Tls(domain, ca) => SipConnection::tls(to, domain, ca),
        Over::Wss(domain, ca) => SipConnection::wss(to, domain, ca),
    }
    .expect("a connection to the edge (a ban drops requests, not connections)");
    let via = conn.via().to_string();
    conn.send(&flood_options(&via, to, 0)).unwrap();
    matches!(conn.next(limit), Ok(Some(answer)) if answer.starts_with("SIP/2.0 "))
}

/// Peers in network namespaces of their own, one per role, made before the edge starts (Kamailio
/// binds the host's addresses at start); `None` when Docker tests are off or no namespace can be
/// made (a SKIP is printed).
fn peers_first<const N: usize>(roles: [&str; N]) -> Option<[crate::common::attacker::Peer; N]> {
    use crate::common::attacker::{self, Peer};
    if docker_off() {
        return None;
    }
    if let Some(why) = attacker::available() {
        skip(&why);
        return None;
    }
    Some(roles.map(Peer::new))
}

/// What the edge logged, without timestamps.
fn edge_log(stack: &Stack) -> String {
    let out = stack.project.run(&["logs", "--no-color", "edge"]);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A UDP socket on loopback whose reads wait at most `timeout`: a phone, a target or an
/// attacker of the test's.
fn local_socket(timeout: Duration) -> std::net::UdpSocket {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(timeout)).unwrap();
    sock
}

/// `docker inspect` of a container: when it started and its main process' PID.
fn started_and_pid(id: &str) -> String {
    let out =
        Command::new("docker").args(["inspect", "-f", "{{.State.StartedAt}} {{.State.Pid}}", id]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
