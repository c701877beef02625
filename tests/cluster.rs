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
//! 3. a pool member stopped with `docker stop` (its drain: OPTIONS and INVITEs answered 503) is
//!    marked inactive by the edge's probes and takes none of the new calls, while the call it
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
//!
//! 16. a phone over TLS (baresip, SRTP required) registers at the edge's SIP-over-TLS port and
//!     calls the echo extension: SDES-SRTP on its leg (no plain RTP or SIP on its link, which a
//!     UDP twin's capture does show), plain RTP to the pool; SIP over TCP to the SIP port is
//!     refused and raw SIP over TLS on the WSS port unanswered; `verify` checks the edge's SIP-TLS
//!     certificate;
//! 17. and 18. the TLS phone calls a browser (DTLS-SRTP on the browser's leg) and a UDP phone
//!     (plain RTP on its leg), user to user through the relay, audio both ways.
//!
//! Figures (packets, times) are printed; the only time limits are bounded waits for readiness.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use astrtc::media::probe::{self, CallReport, CallSetup, LegSetup};
use astrtc::media::session::{Offer, SharedMedia};
use astrtc::plan::Plan;
use serde_json::Value;

use crate::clients::{artifacts, browser_home, tools_missing};
use crate::common::docker::{
    cluster_test_images_spec, ensure_cluster_images, ensure_image, test_image, ComposeProject, HostPorts,
};
use crate::common::sip::SipConnection;
use crate::common::*;

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
        Some(Stack { project, dir, plan })
    }

    fn cluster(&self) -> &astrtc::plan::Cluster {
        self.plan.cluster.as_ref().unwrap()
    }

    fn password(&self, id: &str) -> String {
        self.plan.endpoints.iter().find(|e| e.id == id).unwrap().password.clone()
    }

    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("deploy/keys/ca.crt")).unwrap()
    }

    /// `docker compose exec -T SERVICE ARGS`: its stdout (panics on failure).
    fn exec(&self, service: &str, args: &[&str]) -> String {
        let mut all = vec!["exec", "-T", service];
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

    /// Waits (20 s at most) until the edge's dispatcher holds every member active.
    fn wait_all_active(&self) {
        let members = &self.cluster().members;
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

#[test]
fn two_browsers_call_each_other_through_the_edge_and_the_relay() {
    if let Some(reason) = tools_missing() {
        skip(&reason);
        return;
    }
    if let Some(why) = crate::common::attacker::available() {
        skip(&why);
        return;
    }
    // The browsers run in a namespace of their own, linked to this host alone (created before the
    // edge starts: Kamailio binds the host's addresses at start). On the host itself Chromium takes
    // its media path over any interface, often another test's Docker bridge, and loses the call
    // when that test removes its network (seen in a CI run: 0 packets received, DTLS connected).
    let seat = crate::common::attacker::Peer::new("brow");
    seat.route_all_to_host();
    let Some(stack) = Stack::start("browsers", |s| s) else { return };
    let art = artifacts("cluster_two_browsers");
    // The demo phone page, as the Asterisk image serves it, loaded from a file (a secure context):
    // in a cluster browsers reach only the edge, which serves no pages.
    let (_page_dir, page) = demo_page(&stack);
    let home = browser_home(Some(&stack.dir.path().join("deploy/keys/ca.crt")));
    let browsers = Browsers { stack: &stack, seat: &seat, home: home.path(), page: &page };
    let before: Vec<u64> = stack.cluster().members.iter().map(|m| stack.processed(&m.name)).collect();
    let relayed_before = relay_packets(&stack);

    let seconds = 6;
    let callee = browser(&browsers, "198", None, seconds, &art.join("callee"));
    // The callee must be registered before it is called: the edge's location table says when.
    let registered = wait_until(Duration::from_secs(30), || {
        stack.sql("SELECT count(*) FROM location WHERE username = '198'").trim() == "1"
    });
    assert!(registered.is_some(), "the callee browser never registered at the edge");
    let caller = browser(&browsers, "199", Some("198"), seconds, &art.join("caller"));
    let (caller, caller_ok) = finish(caller);
    let (callee, callee_ok) = finish(callee);
    stack.save_logs("cluster_two_browsers");
    for (who, r, ok) in [("caller", &caller, caller_ok), ("callee", &callee, callee_ok)] {
        let last = r["samples"].as_array().and_then(|s| s.last()).cloned().unwrap_or(Value::Null);
        eprintln!(
            "{who}: ok {ok}, confirmed {} ms, DTLS {}, codec {}, packets received {}, sent {}, pair {}",
            r["confirmedMs"], last["dtlsState"], last["codec"], last["packetsReceived"], last["packetsSent"], r["pair"]
        );
        assert!(ok, "{who} browser failed: {r:#}");
        assert_eq!(last["dtlsState"], "connected", "{who}: {last}");
        assert_eq!(last["codec"], "audio/opus", "{who}: {last}");
        let received = last["packetsReceived"].as_u64().unwrap_or(0);
        assert!(received >= 100, "{who} received only {received} packets in {seconds} s");
    }
    // The media went through the relay: rtpengine relayed (in userspace) at least every packet
    // the two browsers received. It adds a call's packets to its totals when it deletes the
    // call, `delete-delay` (30 s) after the BYE: a bounded wait for that.
    let received: u64 = [&caller, &callee]
        .iter()
        .map(|r| {
            r["samples"]
                .as_array()
                .and_then(|s| s.last())
                .map(|l| l["packetsReceived"].as_u64().unwrap_or(0))
                .unwrap_or(0)
        })
        .sum();
    let mut relayed = 0;
    let counted = wait_until(Duration::from_secs(45), || {
        relayed = relay_packets(&stack) - relayed_before;
        relayed > 0
    });
    eprintln!(
        "the relay relayed {relayed} packets (counted {counted:.1?} after the call); the browsers received {received}"
    );
    assert!(
        relayed >= received,
        "the relay relayed {relayed} packets, fewer than the {received} the browsers received"
    );
    let after: Vec<u64> = stack.cluster().members.iter().map(|m| stack.processed(&m.name)).collect();
    assert_eq!(before, after, "a call between users went through the pool");

    // A browser calling the echo extension: DTLS-SRTP to the relay, plain RTP to a pool member.
    let echo = stack.plan.dialplan.echo_extension.clone();
    let (r, ok) = finish(browser(&browsers, "199", Some(&echo), 4, &art.join("echo")));
    let last = r["samples"].as_array().and_then(|s| s.last()).cloned().unwrap_or(Value::Null);
    eprintln!(
        "browser to the echo extension: ok {ok}, DTLS {}, codec {}, packets received {}, sent {}",
        last["dtlsState"], last["codec"], last["packetsReceived"], last["packetsSent"]
    );
    assert!(ok, "the browser's echo call failed: {r:#}");
    assert_eq!(last["dtlsState"], "connected", "{last}");
    assert_eq!(last["codec"], "audio/opus", "{last}");
    let received = last["packetsReceived"].as_u64().unwrap_or(0);
    assert!(received >= 100, "the browser got only {received} packets back from the echo");
    let echoed: u64 =
        stack.cluster().members.iter().map(|m| stack.processed(&m.name)).sum::<u64>() - after.iter().sum::<u64>();
    assert_eq!(echoed, 1, "the echo call did not go to the pool");
}

/// Packets rtpengine has relayed in userspace since it started (its ng `statistics` command,
/// `totalstatistics.relayedpackets_user`; counted when a call ends).
/// The demo phone page as the Asterisk image serves it, copied out of a pool member: its
/// directory (kept while the page is used) and its `file://` URL.
fn demo_page(stack: &Stack) -> (tempfile::TempDir, String) {
    let page_dir = tempfile::tempdir().unwrap();
    let out = Command::new("docker")
        .args(["cp", &format!("{}:/usr/share/asterisk/static-http/phone/.", container_of(stack, "asterisk-1"))])
        .arg(page_dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = format!("file://{}/index.html", page_dir.path().display());
    (page_dir, page)
}

fn relay_packets(stack: &Stack) -> u64 {
    let sock = local_socket(Duration::from_secs(3));
    let control = (Ipv4Addr::LOCALHOST, stack.cluster().relay_control_port);
    sock.send_to(b"astrtc-test d7:command10:statisticse", control).unwrap();
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).expect("rtpengine did not answer the statistics command");
    let text = String::from_utf8_lossy(&buf[..n]);
    let key = "19:relayedpackets_useri";
    let at = text.find(key).unwrap_or_else(|| panic!("no relayedpackets_user in rtpengine's statistics: {text}"));
    text[at + key.len()..].split('e').next().unwrap().parse().unwrap()
}

/// The container id of a compose service.
fn container_of(stack: &Stack, service: &str) -> String {
    let out = stack.project.run(&["ps", "-q", service]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Where test 1's browsers run: their namespace, their home (NSS database), the phone page.
struct Browsers<'a> {
    stack: &'a Stack,
    seat: &'a crate::common::attacker::Peer,
    home: &'a Path,
    page: &'a str,
}

/// Starts tests/clients/browser-call.mjs in the seat's namespace, the edge's name mapped to the
/// host's end of its link: calling `target`, or (None) answering one call.
fn browser(b: &Browsers<'_>, user: &str, target: Option<&str>, seconds: u32, art: &Path) -> std::process::Child {
    let Browsers { stack, seat, home, page } = b;
    let profile = tempfile::tempdir().unwrap().keep();
    let mut node = seat.command("node");
    node.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients"))
        .arg("browser-call.mjs")
        .args(["--map-host", &seat.server.to_string()])
        .args(["--page", page])
        .args(["--wss", &format!("wss://{}:{}/ws", stack.plan.tls.domain, stack.plan.network.wss_port)])
        .args(["--user", user, "--password-env", "ASTRTC_TEST_PASSWORD"])
        .args(["--seconds", &seconds.to_string()])
        .arg("--profile")
        .arg(profile)
        .arg("--artifacts")
        .arg(art)
        .env("HOME", home)
        .env("ASTRTC_TEST_PASSWORD", stack.password(user))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    match target {
        Some(t) => node.args(["--target", t]),
        None => node.args(["--answer", "1", "--target", "-"]),
    };
    node.spawn().unwrap()
}

fn finish(child: std::process::Child) -> (Value, bool) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let json =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("browser-call printed no JSON ({e}): {text}"));
    (json, out.status.success())
}

#[test]
fn echo_calls_spread_over_the_pool() {
    let Some(stack) = Stack::start("spread", |s| s) else { return };
    let members = stack.cluster().members.clone();
    let before: Vec<u64> = members.iter().map(|m| stack.processed(&m.name)).collect();
    let echo = stack.plan.dialplan.echo_extension.clone();
    let rt = runtime();
    let shared = SharedMedia::new().unwrap();
    let mut failures = Vec::new();
    for i in 0..20 {
        let user = if i % 2 == 0 { "3001" } else { "3002" };
        let report = rt.block_on(probe::call(&stack.sip_setup(user, &echo, Duration::from_secs(2)), &shared));
        let echoed = figures(&format!("call {:2}", i + 1), &report);
        if !report.healthy() || echoed < 50 {
            failures.push(format!(
                "call {}: {:?}, {echoed} echoed\n{}",
                i + 1,
                report.failure,
                report.ladder.join("\n")
            ));
        }
    }
    let after: Vec<u64> = members.iter().map(|m| stack.processed(&m.name)).collect();
    let taken: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    eprintln!("calls per pool member: {:?}", members.iter().map(|m| &m.name).zip(&taken).collect::<Vec<_>>());
    if !failures.is_empty() {
        stack.save_logs("cluster_spread");
    }
    assert!(failures.is_empty(), "{} of 20 calls failed:\n{}", failures.len(), failures.join("\n"));
    assert_eq!(taken.iter().sum::<u64>(), 20, "the pool did not take every call: {taken:?}");
    for (m, n) in members.iter().zip(&taken) {
        assert!(*n >= 5, "{} took only {n} of 20 calls: {taken:?}", m.name);
    }

    // WebRTC from the probe too: ICE and DTLS-SRTP with the relay, whose answer for the pool's
    // plain RTP names no SSRC (the probe takes it as a browser does: src/media/session.rs).
    for (i, user) in ["199", "198", "199", "198"].into_iter().enumerate() {
        let report = rt.block_on(probe::call(&stack.webrtc_setup(user, &echo, Duration::from_secs(2)), &shared));
        if !report.healthy() || report.media.as_ref().is_none_or(|m| m.matched < 50) {
            stack.save_logs("cluster_spread");
        }
        assert!(report.dtls_connected_ms.is_some(), "webrtc call {}: DTLS never connected", i + 1);
        assert_echoed(&format!("webrtc call {}", i + 1), &report, 50);
    }
}

/// Runs `astrtc bench calls` against the stack; exit code, report (when written), output.
fn bench(stack: &Stack, kind: &str, levels: &str, extra: &[&str]) -> (i32, Option<astrtc::bench::BenchReport>, String) {
    let json = stack.dir.path().join(format!("bench-{kind}.json"));
    let _ = std::fs::remove_file(&json);
    let out = astrtc()
        .args(["bench", "calls", "--spec"])
        .arg(stack.dir.path().join("astrtc.toml"))
        .arg("--out")
        .arg(stack.dir.path().join("deploy"))
        .args(["--host", "127.0.0.1", "--kind", kind, "--levels", levels, "--hold", "3", "--rate", "10"])
        .arg("--json")
        .arg(&json)
        .args(extra)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("$ astrtc bench calls --kind {kind} --levels {levels} {extra:?}\n{text}");
    // miette wraps its messages in a frame: one line of words to search in.
    let text = text.split_whitespace().filter(|w| *w != "│").collect::<Vec<_>>().join(" ");
    let report = std::fs::read_to_string(&json).ok().map(|t| serde_json::from_str(&t).expect("the JSON is a report"));
    (out.status.code().unwrap_or(-1), report, text)
}

#[test]
fn bench_calls_through_the_edge_reads_every_service() {
    use astrtc::bench::Role;
    let Some(stack) = Stack::start("bench", |s| s) else { return };
    let members: Vec<String> = stack.cluster().members.iter().map(|m| m.name.clone()).collect();
    // Refused before any call: a kind that never reaches the pool, and one container for many.
    let (code, report, text) = bench(&stack, "webrtc-to-sip", "2", &[]);
    assert_eq!(code, 2, "{text}");
    assert!(report.is_none() && text.contains("relayed by rtpengine without Asterisk"), "{text}");
    let (code, _, text) = bench(&stack, "sip-echo", "2", &["--container", &container_of(&stack, &members[0])]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("a cluster's services are found by their compose project"), "{text}");
    // The relay opens a port pair on each side of a call: its range holds a quarter as many.
    let holds = (u32::from(stack.plan.rtp.end - stack.plan.rtp.start) + 1) / 4;
    let (code, _, text) = bench(&stack, "sip-echo", &(holds + 1).to_string(), &[]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains(&format!("at most {holds} calls")), "{text}");

    for (kind, codec) in [("sip-echo", "PCMU/8000"), ("webrtc-echo", "opus/48000/2")] {
        let before: Vec<u64> = members.iter().map(|m| stack.processed(m)).collect();
        let (code, report, text) = bench(&stack, kind, "6", &[]);
        if code != 0 {
            stack.save_logs("cluster_bench");
        }
        assert_eq!(code, 0, "{text}");
        let r = report.expect("a report");
        let l = &r.levels[0];
        assert_eq!((l.calls, l.set_up), (6, 6), "{kind}: {l:#?}");
        assert_eq!(l.codecs.get(codec), Some(&6), "{kind}: {:?}", l.codecs);
        // Every service measured, each from its own container, in the pool's order.
        let named: Vec<(&str, Role)> = r.services.iter().map(|s| (s.name.as_str(), s.role)).collect();
        let mut want: Vec<(&str, Role)> = members.iter().map(|m| (m.as_str(), Role::Asterisk)).collect();
        want.extend([("edge", Role::Edge), ("relay", Role::Relay), ("db", Role::Database)]);
        assert_eq!(named, want, "{kind}");
        let ids: std::collections::BTreeSet<&str> = r.services.iter().map(|s| s.source.as_str()).collect();
        assert_eq!(ids.len(), r.services.len(), "each service its own counter: {:?}", r.services);
        for s in &r.services {
            let short: String = container_of(&stack, &s.name).chars().take(12).collect();
            assert!(s.source.starts_with(&format!("container {short}:")), "{}: {}", s.name, s.source);
        }
        assert!(r.asterisk_cpu_source.contains(&members.join(", ")), "{}", r.asterisk_cpu_source);
        // The calls went through the edge and the relay to both members: each used CPU in the
        // window, and Asterisk's figure is the members' sum.
        let taken: Vec<u64> = members.iter().zip(&before).map(|(m, b)| stack.processed(m) - b).collect();
        assert!(taken.iter().all(|n| *n >= 1), "{kind}: both members take calls: {taken:?}");
        for name in members.iter().map(String::as_str).chain(["edge", "relay"]) {
            assert!(l.service_cpu.contains_key(name), "{kind}: no CPU figure for {name}");
        }
        // The relay forwards every packet of every call: it works well above its idle.
        let relay = l.service_cpu["relay"];
        assert!(relay.over_idle_per_call_second > 0.0, "{kind}: the relay did no work beyond its idle: {relay:?}");
        // The setup cost (ramp to window) is reported for every service read.
        let setup: Vec<&String> = l.service_setup_ms.keys().collect();
        assert_eq!(setup, l.service_cpu.keys().collect::<Vec<_>>(), "{kind}");
        let sum: f64 = members.iter().map(|m| l.service_cpu[m].cpu_seconds).sum();
        let a = l.asterisk_cpu.expect("the pool's sum");
        assert!((a.cpu_seconds - sum).abs() < 1e-9, "{kind}: Asterisk's {a:?} is not the members' sum {sum}");
        assert!(text.contains("per service, at the largest carried level"), "{text}");
    }
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

#[test]
fn verify_checks_the_pool_and_the_users_and_calls_through_the_edge() {
    let Some(stack) = Stack::start("verify", |s| s) else { return };
    let members: Vec<_> = stack.cluster().members.clone();
    let (code, report) = verify(&stack, &["--call", "--endpoint", "199", "--endpoint", "3001"]);
    eprintln!("{report:#}");
    let failed: Vec<&Value> = report["checks"].as_array().unwrap().iter().filter(|c| c["status"] != "pass").collect();
    assert!(failed.is_empty(), "checks not passed: {failed:#?}");
    assert_eq!(code, 0);
    for m in &members {
        let (status, detail) = check_of(&report, &format!("pool {}", m.name));
        assert_eq!(status, "pass", "{detail}");
        assert!(detail.contains(&format!("sip:{}:", m.address)) && detail.contains("active"), "{detail}");
    }
    for m in &members {
        let (status, detail) = check_of(&report, &format!("modules {}", m.name));
        assert_eq!(status, "pass", "{detail}");
        assert!(detail.contains("res_pjsip.so") && detail.contains("codec_opus_open_source.so"), "{detail}");
    }
    let (_, users) = check_of(&report, "users");
    assert!(users.contains("198, 199, 3001, 3002"), "{users}");
    for ep in ["199", "3001"] {
        let (status, detail) = check_of(&report, &format!("call {ep}"));
        assert_eq!(status, "pass", "call {ep}: {detail}");
    }
    // Asterisk's own checks are a single deployment's: a cluster has none of them.
    assert!(report["checks"].as_array().unwrap().iter().all(|c| c["name"] != "endpoints"), "{report:#}");

    // A member stopped (no call on it: its drain ends at once) is found inactive by the edge;
    // verify names it, and only it.
    let last = members.last().unwrap();
    let out = stack.project.run(&["stop", &last.name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let probe = Duration::from_secs(u64::from(stack.cluster().probe_seconds));
    let inactive = wait_until(probe * 3 + Duration::from_secs(5), || !stack.flags_of(last.address).starts_with('A'));
    assert!(inactive.is_some(), "the edge never marked {} inactive", last.name);
    // A module a member lost (no call uses it now): verify names it and the member.
    let out = stack.exec(&members[0].name, &["asterisk", "-rx", "module unload codec_opus_open_source.so"]);
    eprintln!("module unload on {}: {}", members[0].name, out.trim());
    // A password and a transport the database does not have (as after a spec change never
    // applied).
    stack.sql("UPDATE subscriber SET ha1 = md5('3001:x:old') WHERE username = '3001'");
    stack.sql("UPDATE astrtc_user SET transport = 'tls' WHERE username = '3002'");
    let (code, report) = verify(&stack, &[]);
    assert_ne!(code, 0, "{report:#}");
    let (status, detail) = check_of(&report, "users");
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains("another password, max_contacts or transport for 3001, 3002"), "{detail}");
    let (status, detail) = check_of(&report, &format!("modules {}", members[0].name));
    eprintln!("modules {}: {status}: {detail}", members[0].name);
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains("codec_opus_open_source.so not loaded"), "{detail}");
    let (status, detail) = check_of(&report, &format!("modules {}", last.name));
    assert_eq!(status, "fail", "the stopped member's modules: {detail}");
    assert!(detail.contains("no running container"), "{detail}");
    // A user the database lost.
    stack.sql("DELETE FROM subscriber WHERE username = '3002'");
    let (code, report) = verify(&stack, &[]);
    assert_ne!(code, 0, "{report:#}");
    let (status, detail) = check_of(&report, &format!("pool {}", last.name));
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains("not active in the edge's dispatcher"), "{detail}");
    assert_eq!(check_of(&report, &format!("pool {}", members[0].name)).0, "pass");
    let (status, detail) = check_of(&report, "users");
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains("[198, 199, 3001, 3010]") && detail.contains("[198, 199, 3001, 3002, 3010]"), "{detail}");
}

/// Registers `id` over UDP from `sock` with `contact` as its Contact, answering the challenge;
/// the final answer.
fn register_from(sock: &std::net::UdpSocket, to: SocketAddr, id: &str, password: &str, contact: &str) -> String {
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
        sock.send_to(request.as_bytes(), to).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            let (n, _) = sock.recv_from(&mut buf).expect("an answer to REGISTER");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !text.starts_with("SIP/2.0 1") {
                break text;
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

/// A cluster whose user 3001 has `max_contacts = 2`.
fn stack_with_two_contacts_for_3001(test: &str) -> Option<Stack> {
    let stack = Stack::start(test, |s| {
        s.replacen("id = \"3001\"\nkind = \"sip\"\n", "id = \"3001\"\nkind = \"sip\"\nmax_contacts = 2\n", 1)
    })?;
    let limit = stack.plan.endpoints.iter().find(|e| e.id == "3001").map(|e| e.max_contacts);
    assert_eq!(limit, Some(2), "the spec edit did not take");
    Some(stack)
}

#[test]
fn a_nated_udp_phone_is_kept_alive_and_tls_or_direct_ones_are_not() {
    // Two phones behind the NAT: 3010 over TLS (its transport), 3001 over UDP.
    let Some(stack) = Stack::start("natping", |s| s) else { return };
    let edge = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    let edge_tls = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_tls_port);
    let every = Duration::from_secs(u64::from(stack.cluster().natping_seconds));
    // Behind a NAT over TLS, first: its Contact a private address, its connection held open. The
    // edge flags it as behind a NAT but, the connection being the phone's to keep, never pings it.
    let mut over_tls =
        SipConnection::tls(edge_tls, &stack.plan.tls.domain, &stack.ca_pem()).expect("a TLS connection to the edge");
    let tls_contact = "sip:3010@10.77.0.7:5061;transport=tls";
    let answer = register_over(&mut over_tls, edge_tls, "3010", &stack.password("3010"), tls_contact);
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    // Behind a NAT over UDP: the Contact names a private address the edge cannot reach; the edge
    // keeps the address the REGISTER came from (received) and flags the contact.
    let nated = local_socket(Duration::from_secs(5));
    let answer = register_from(&nated, edge, "3001", &stack.password("3001"), "sip:3001@10.77.0.5:5060");
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    // Not behind one: the Contact is the address it sends from.
    let direct = local_socket(Duration::from_secs(5));
    let contact = format!("sip:3002@{}", direct.local_addr().unwrap());
    let answer = register_from(&direct, edge, "3002", &stack.password("3002"), &contact);
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    let t0 = Instant::now();
    let ping = next_request(&nated, every * 2 + Duration::from_secs(2)).unwrap_or_else(|| {
        panic!("no keepalive in {:?} (natping_seconds {every:?})", every * 2 + Duration::from_secs(2))
    });
    eprintln!("keepalive {:.1?} after the registration:\n{ping}", t0.elapsed());
    assert!(ping.starts_with("OPTIONS sip:3001@10.77.0.5:5060 "), "{ping}");
    assert!(ping.contains("keepalive@"), "{ping}");
    // A second one: kept alive, not pinged once.
    assert!(next_request(&nated, every * 2 + Duration::from_secs(2)).is_some_and(|p| p.starts_with("OPTIONS ")));
    eprintln!("two keepalives to the UDP phone {:.1?} after the registrations", t0.elapsed());
    // The direct phone got none in the same time.
    let direct_got = next_request(&direct, Duration::from_millis(10));
    assert!(direct_got.is_none(), "a phone not behind a NAT was pinged: {direct_got:?}");
    // Nor did the TLS phone, registered before both UDP phones: the keepalive timer went over
    // the contacts at least twice meanwhile (the UDP phone's two OPTIONS).
    let mut over_tls_got = Vec::new();
    while let Some(message) = over_tls.next(Duration::from_millis(10)).expect("the TLS connection stays open") {
        over_tls_got.push(message);
    }
    eprintln!("messages on the TLS phone's connection since its registration: {}", over_tls_got.len());
    assert!(over_tls_got.is_empty(), "a phone behind a NAT over TLS was pinged: {over_tls_got:?}");
    // The edge's part in that: of the two contacts behind a NAT, only the UDP one is flagged for
    // keepalives (FLB_NATB,
    // branch flag 6: bit 64 of `cflags`). nathelper itself skips a contact whose address names
    // TCP or TLS, so the flag is what the edge's config decides.
    let row = |contact: &str| {
        let out = stack.sql(&format!("SELECT cflags, received FROM location WHERE contact = '{contact}'"));
        let (cflags, received) = out.trim().split_once('|').unwrap_or_else(|| panic!("{contact} is not registered"));
        (cflags.parse::<u32>().unwrap() & 64 != 0, received.to_string())
    };
    let (tls_flagged, tls_received) = row(tls_contact);
    let (udp_flagged, udp_received) = row("sip:3001@10.77.0.5:5060");
    eprintln!("flagged for keepalives: over TLS {tls_flagged} (received {tls_received}), over UDP {udp_flagged} (received {udp_received})");
    assert!(tls_received.ends_with(";transport=tls"), "the TLS phone was not taken as behind a NAT: {tls_received:?}");
    assert!(udp_flagged, "the UDP phone behind a NAT is not flagged for keepalives");
    assert!(
        !tls_flagged,
        "the TLS phone behind a NAT is flagged for keepalives (FLB_NATB): the edge sets it over UDP only"
    );
}

#[test]
fn a_renewed_certificate_reaches_both_edge_listeners_and_their_connections_stay() {
    use astrtc::media::ws::WsConn;
    let Some(stack) = Stack::start("certs", |s| s) else { return };
    // The edge's start time and process: a restart in place keeps the container's id, not these.
    let pid = || started_and_pid(&container_of(&stack, "edge"));
    let edge_before = pid();
    let domain = stack.plan.tls.domain.clone();
    let wss = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.wss_port);
    let sip_tls = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_tls_port);
    let ca = stack.ca_pem();
    let serial_on = |at: SocketAddr| astrtc::verify::check_tls(at, &domain, &ca).expect("the edge's TLS").leaf.serial;
    let serial = || serial_on(wss);
    let before = serial();
    assert_eq!(serial_on(sip_tls), before, "the SIP-over-TLS port serves another certificate than the WSS port");
    let rt = runtime();
    // A browser's connection, opened before the renewal: it carries a REGISTER (answered 401).
    let register = |n: u32| {
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/WSS held.invalid;branch=z9hG4bK-held-{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:199@{domain}>;tag=held\r\nTo: <sip:199@{domain}>\r\n\
             Call-ID: held@test\r\nCSeq: {n} REGISTER\r\nContact: <sip:199@held.invalid;transport=ws>\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };
    let mut held = rt.block_on(WsConn::connect(wss, &domain, &ca, "/ws")).expect("a WebSocket to the edge");
    let answer = rt.block_on(async {
        held.send_text(&register(1)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), held.recv_text()).await
    });
    assert!(matches!(&answer, Ok(Ok(a)) if a.starts_with("SIP/2.0 401")), "{answer:?}");
    // A phone's SIP-over-TLS connection, opened before the renewal too: an OPTIONS is answered.
    let mut phone = SipConnection::tls(sip_tls, &domain, &ca).expect("a SIP-over-TLS connection to the edge");
    let options = |phone: &mut SipConnection, n: usize| {
        let via = phone.via().to_string();
        phone.send(&flood_options(&via, sip_tls, n)).unwrap();
        phone.next(Duration::from_secs(5))
    };
    let answer = options(&mut phone, 1);
    assert!(matches!(&answer, Ok(Some(a)) if a.starts_with("SIP/2.0 ")), "{answer:?}");

    // First a pair that does not match (a new certificate, the old key): the reload fails and the
    // old certificate stays in use.
    let keys = stack.dir.path().join("deploy/keys");
    let old_key = std::fs::read_to_string(keys.join("asterisk.key")).unwrap();
    crate::common::docker::install_leaf_for(stack.dir.path(), &stack.plan, &domain);
    let new_key = std::fs::read_to_string(keys.join("asterisk.key")).unwrap();
    crate::common::docker::overwrite_keep_mode(&keys.join("asterisk.key"), &old_key);
    let refused = wait_until(Duration::from_secs(30), || {
        edge_log(&stack).contains("tls.reload failed, the old one stays in use")
    });
    assert!(
        refused.is_some(),
        "no failed reload logged for a key that does not match its certificate:\n{}",
        edge_log(&stack)
    );
    assert_eq!(serial(), before, "a mismatched pair replaced the certificate");
    assert_eq!(serial_on(sip_tls), before, "a mismatched pair replaced the SIP-over-TLS certificate");
    // Then the key that matches.
    crate::common::docker::overwrite_keep_mode(&keys.join("asterisk.key"), &new_key);
    let took = wait_until(Duration::from_secs(30), || serial() != before);
    let log = stack.project.run(&["logs", "--no-color", "edge"]);
    let log = String::from_utf8_lossy(&log.stderr).into_owned() + &String::from_utf8_lossy(&log.stdout);
    let took = took.unwrap_or_else(|| panic!("the edge still serves serial {before} 30 s after the renewal:\n{log}"));
    eprintln!("the edge served the new certificate {took:.1?} after the files changed (was serial {before})");
    assert!(log.contains("astrtc-edge: the certificate changed; tls.reload"), "{log}");
    assert_eq!(pid(), edge_before, "the edge was restarted");
    // The SIP-over-TLS port serves the new certificate too (one reload for both listeners).
    let new = serial();
    let on_sip_tls = wait_until(Duration::from_secs(10), || serial_on(sip_tls) == new);
    assert!(
        on_sip_tls.is_some(),
        "the SIP-over-TLS port still serves serial {} after the WSS port took {new}",
        serial_on(sip_tls)
    );
    eprintln!("the SIP-over-TLS port serves the new certificate (serial {new}) too");
    let answer = options(&mut phone, 2);
    assert!(
        matches!(&answer, Ok(Some(a)) if a.starts_with("SIP/2.0 ")),
        "the SIP-over-TLS connection opened before the renewal no longer carries SIP: {answer:?}"
    );
    // The connection from before still carries SIP.
    let answer = rt.block_on(async {
        held.send_text(&register(2)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), held.recv_text()).await
    });
    assert!(
        matches!(&answer, Ok(Ok(a)) if a.starts_with("SIP/2.0 401")),
        "the WebSocket opened before the renewal no longer carries SIP: {answer:?}"
    );
    rt.block_on(held.close());
}

/// OPTIONS number `i` of a flood from `via` (`UDP address:port`, `TLS …`, `WSS …`) to `to`.
fn flood_options(via: &str, to: SocketAddr, i: usize) -> String {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/{via};branch=z9hG4bK-flood-{i};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:flood@{to}>;tag=flood{i}\r\nTo: <sip:{to}>\r\nCall-ID: flood-{i}@test\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The flood request an answer is for (its Call-ID `flood-N@test`), if it is one.
fn flood_answer(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("Call-ID: flood-")).map(str::to_string)
}

/// Sends `n` OPTIONS to `to` from a fresh UDP socket, 100 a second (five times the test's flood
/// limit; a burst would also overrun the edge's socket buffer, a loss that is not the edge's
/// doing), then collects answers until none came for 2 s: how many were answered.
fn flood(to: SocketAddr, n: usize) -> usize {
    let sock = std::net::UdpSocket::bind(if to.ip().is_loopback() { "127.0.0.1:0" } else { "0.0.0.0:0" }).unwrap();
    let via = format!("UDP {}", sock.local_addr().unwrap());
    let mut answered = std::collections::BTreeSet::new();
    let mut buf = [0u8; 4096];
    let mut collect = |sock: &std::net::UdpSocket| {
        while let Ok((len, _)) = sock.recv_from(&mut buf) {
            answered.extend(flood_answer(&String::from_utf8_lossy(&buf[..len])));
        }
    };
    // Answers are read as they come (a socket left unread would drop them itself).
    sock.set_nonblocking(true).unwrap();
    for i in 0..n {
        sock.send_to(flood_options(&via, to, i).as_bytes(), to).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        collect(&sock);
    }
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    collect(&sock);
    answered.len()
}

/// [`flood`] over a connection: `n` OPTIONS at 100 a second, answers read as they come, then
/// until none came for 2 s (or the edge closed the connection). How many were answered, and when
/// the last answer came.
fn flood_over(conn: &mut SipConnection, to: SocketAddr, n: usize) -> (usize, Option<Instant>) {
    let via = conn.via().to_string();
    let mut answered = std::collections::BTreeSet::new();
    let mut last = None;
    let mut take = |message: &str| {
        if let Some(id) = flood_answer(message) {
            answered.insert(id);
            last = Some(Instant::now());
        }
    };
    let t0 = Instant::now();
    'sending: for i in 0..n {
        if conn.send(&flood_options(&via, to, i)).is_err() {
            break;
        }
        let tick = t0 + Duration::from_millis(10 * (i as u64 + 1));
        while let Some(left) = tick.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            match conn.next(left) {
                Ok(Some(message)) => take(&message),
                Ok(None) => break,
                Err(_) => break 'sending,
            }
        }
    }
    while let Ok(Some(message)) = conn.next(Duration::from_secs(2)) {
        take(&message);
    }
    (answered.len(), last)
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

/// A cluster whose edge takes `rate` requests a second from one address
/// (`cluster.flood_requests_per_second`) and bans for `ban_seconds`.
fn flood_stack(test: &str, rate: usize, ban_seconds: u64) -> Option<Stack> {
    let stack = Stack::start(test, |s| {
        s.replace("natping_seconds = 5\n", &format!("natping_seconds = 5\nflood_requests_per_second = {rate}\n"))
            + &format!("\n[security]\nban_seconds = {ban_seconds}\n")
    })?;
    assert_eq!(stack.cluster().flood_requests_per_second, rate as u32, "the spec edit did not take");
    assert_eq!(u64::from(stack.plan.security.ban_seconds), ban_seconds, "the spec edit did not take");
    Some(stack)
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

#[test]
fn a_udp_flood_is_dropped_not_banned_and_others_are_served() {
    use crate::common::sip::options_over_udp;
    let Some([flooder, bystander]) = peers_first(["flood", "bystand"]) else { return };
    const RATE: usize = 20;
    let Some(stack) = flood_stack("flood", RATE, 60) else { return };
    let sip = stack.plan.network.sip_port;
    const SENT: usize = 400;
    // From loopback (never banned, as the pool and security.allow): every request is served.
    let local = flood(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), sip), SENT);
    eprintln!("OPTIONS flood from loopback: {local} of {SENT} answered");
    // From another address: a few seconds' worth, then nothing.
    let to = flooder.to(sip);
    let answered = flooder.run(move || flood(to, SENT));
    eprintln!("OPTIONS flood from {}: {answered} of {SENT} answered", flooder.ip);
    let log = edge_log(&stack);
    let dropped = format!("astrtc: dropping a UDP flood from {} (over {RATE} requests a second)", flooder.ip);
    assert!(log.contains(&dropped), "no flood logged for {}:\n{log}", flooder.ip);
    assert!(answered < SENT / 2, "the flood was answered: {answered} of {SENT}");
    let to = bystander.to(sip);
    assert!(
        bystander.run(move || options_over_udp(to, Duration::from_secs(2))).is_some(),
        "a bystander is not answered"
    );
    // Over UDP the source could be forged: the address is not banned (ban_seconds is 60 here),
    // only its flood was dropped; once it stops, it is answered again.
    let to = flooder.to(sip);
    let back = wait_until(Duration::from_secs(20), || {
        flooder.run(move || options_over_udp(to, Duration::from_millis(500))).is_some()
    });
    let back = back.unwrap_or_else(|| panic!("{} is still unanswered 20 s after its UDP flood: banned", flooder.ip));
    eprintln!("the flooder was answered again {back:.1?} after its flood");
    assert!(
        !edge_log(&stack).contains(&format!("astrtc: banned {}", flooder.ip)),
        "a UDP flood got its address banned"
    );
    assert!(!log.contains("astrtc: banned 127.0.0.1"), "loopback was banned:\n{log}");
    assert!(options_over_udp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), sip), Duration::from_secs(2)).is_some());
    assert!(local >= SENT - SENT / 100, "loopback's requests were dropped: {local} of {SENT} answered");
}

#[test]
fn a_flood_over_a_connection_bans_its_address_and_spares_others() {
    use crate::common::attacker::Peer;
    use crate::common::sip::options_over_udp;
    let Some([tls_flooder, wss_flooder, bystander]) = peers_first(["tflood", "wflood", "bystand"]) else { return };
    const RATE: usize = 20;
    const BAN_SECONDS: u64 = 20;
    let Some(stack) = flood_stack("connflood", RATE, BAN_SECONDS) else { return };
    let (sip, sip_tls, wss, domain, ca) = (
        stack.plan.network.sip_port,
        stack.plan.network.sip_tls_port,
        stack.plan.network.wss_port,
        stack.plan.tls.domain.clone(),
        stack.ca_pem(),
    );
    const SENT: usize = 400;
    // Whether `peer` is answered: OPTIONS over UDP, and over a new TLS connection (a phone's).
    let answered = |peer: &Peer| {
        let (to, to_tls, d, c) = (peer.to(sip), peer.to(sip_tls), domain.clone(), ca.clone());
        peer.run(move || {
            let limit = Duration::from_secs(1);
            (options_over_udp(to, limit).is_some(), options_over_new_connection(to_tls, Over::Tls(&d, &c), limit))
        })
    };
    let banned_line = |peer: &Peer, proto: &str| {
        format!("astrtc: banned {} for {BAN_SECONDS} s: a flood over {proto} (over {RATE} requests a second)", peer.ip)
    };

    // 1. Over a WebSocket (the browsers' transport), 400 OPTIONS at 100 a second on one
    //    connection: the first are answered, then the address is banned: no answer over UDP, a
    //    new TLS connection or a new WebSocket.
    let (to, d, c) = (wss_flooder.to(wss), domain.clone(), ca.clone());
    let (wss_answered, _) = wss_flooder.run(move || {
        let mut conn = SipConnection::wss(to, &d, &c).expect("a WebSocket to the edge");
        flood_over(&mut conn, to, SENT)
    });
    eprintln!("OPTIONS flood over WSS from {}: {wss_answered} of {SENT} answered", wss_flooder.ip);
    let log = edge_log(&stack);
    assert!(log.contains(&banned_line(&wss_flooder, "wss")), "no ban logged for {}:\n{log}", wss_flooder.ip);
    assert!(wss_answered > 0, "the WebSocket carried no SIP before its flood was seen");
    assert!(wss_answered < SENT / 2, "the flood over WSS was answered: {wss_answered} of {SENT}");
    assert_eq!(answered(&wss_flooder), (false, false), "the WSS flooder is answered (UDP, new TLS connection)");
    let (to, d, c) = (wss_flooder.to(wss), domain.clone(), ca.clone());
    let again = wss_flooder.run(move || options_over_new_connection(to, Over::Wss(&d, &c), Duration::from_secs(1)));
    assert!(!again, "the WSS flooder is answered on a new WebSocket");
    // Everyone else is served.
    assert_eq!(answered(&bystander), (true, true), "a bystander is not answered (UDP, TLS)");

    // 2. The same over SIP over TLS (a phone's transport).
    let (to, d, c) = (tls_flooder.to(sip_tls), domain.clone(), ca.clone());
    let (tls_answered, last_answer) = tls_flooder.run(move || {
        let mut conn = SipConnection::tls(to, &d, &c).expect("a TLS connection to the edge");
        flood_over(&mut conn, to, SENT)
    });
    eprintln!("OPTIONS flood over TLS from {}: {tls_answered} of {SENT} answered", tls_flooder.ip);
    // The ban was set right after the last answer (the next request set it).
    let banned_at = last_answer.expect("no request of the TLS flood was answered");
    let log = edge_log(&stack);
    assert!(log.contains(&banned_line(&tls_flooder, "tls")), "no ban logged for {}:\n{log}", tls_flooder.ip);
    assert!(tls_answered < SENT / 2, "the flood over TLS was answered: {tls_answered} of {SENT}");
    assert_eq!(answered(&tls_flooder), (false, false), "the TLS flooder is answered (UDP, new TLS connection)");
    assert_eq!(answered(&bystander), (true, true), "a bystander is not answered (UDP, TLS)");
    assert!(!log.contains("astrtc: banned 127.0.0.1"), "loopback was banned:\n{log}");
    assert!(!log.contains(&format!("banned {} ", bystander.ip)), "the bystander was banned");

    // 3. The TLS flooder's ban holds for ban_seconds and then lifts: asked again and again (each
    //    time an OPTIONS over UDP and one over a new TLS connection), it is first answered no
    //    earlier than ban_seconds after the ban (less a second's margin for when the test saw the
    //    ban set: slowness only makes the figure larger).
    let mut unanswered = 0;
    let lifted = wait_until(Duration::from_secs(BAN_SECONDS + 20), || {
        let (udp, tls) = answered(&tls_flooder);
        unanswered += usize::from(!udp && !tls);
        udp || tls
    });
    let after = banned_at.elapsed();
    assert!(
        lifted.is_some(),
        "{} is still banned {after:.1?} after its flood (ban_seconds = {BAN_SECONDS})",
        tls_flooder.ip
    );
    eprintln!(
        "the TLS flooder was answered again {after:.1?} after its ban (ban_seconds = {BAN_SECONDS}; {unanswered} asks unanswered before)"
    );
    assert!(
        unanswered > 0,
        "the ban had lifted before the test asked again ({after:.1?}): the asks above took too long"
    );
    assert!(
        after >= Duration::from_secs(BAN_SECONDS - 1),
        "the ban lifted {after:.1?} after it was set, before ban_seconds = {BAN_SECONDS}"
    );
    let both = wait_until(Duration::from_secs(5), || answered(&tls_flooder) == (true, true));
    assert!(both.is_some(), "after its ban the TLS flooder is answered over one transport only");
}

#[test]
fn a_draining_member_takes_no_new_calls_and_keeps_its_call() {
    let Some(stack) = Stack::start("drain", |s| s) else { return };
    let members = stack.cluster().members.clone();
    let probe_seconds = stack.cluster().probe_seconds;
    let echo = stack.plan.dialplan.echo_extension.clone();
    let rt = runtime();
    let shared = SharedMedia::new().unwrap();
    // Every member active before anything happens.
    stack.wait_all_active();

    // A call held on one member.
    let held = rt.spawn({
        let setup = stack.sip_setup("3001", &echo, Duration::from_secs(20));
        let shared = shared.clone();
        async move { probe::call(&setup, &shared).await }
    });
    let mut holder = None;
    let found = wait_until(Duration::from_secs(15), || {
        holder = members.iter().find(|m| stack.active(&m.name) > 0).cloned();
        holder.is_some()
    });
    assert!(found.is_some(), "the held call never showed up on a pool member");
    let holder = holder.unwrap();
    eprintln!("the held call is on {} ({})", holder.name, holder.address);

    // Stop it: docker stop runs its drain (new calls and OPTIONS get 503) and waits for it.
    let container = container_of(&stack, &holder.name);
    let stop_started = Instant::now();
    let stopper = std::thread::spawn(move || {
        let out = Command::new("docker").args(["stop", "-t", "120", &container]).output().unwrap();
        (out.status.success(), Instant::now())
    });
    let marked = wait_until(Duration::from_secs(u64::from(probe_seconds) * 3 + 5), || {
        stack.flags_of(holder.address).starts_with('I')
    });
    let flags = stack.dispatcher_flags();
    assert!(marked.is_some(), "{} was not marked inactive by the edge's probes: {flags:?}", holder.name);
    eprintln!(
        "{} marked inactive {:.1?} after docker stop began (probe interval {probe_seconds} s): {flags:?}",
        holder.name,
        marked.unwrap()
    );

    // New calls: all answered, none by the draining member.
    let before: Vec<u64> =
        members.iter().map(|m| if m.name == holder.name { 0 } else { stack.processed(&m.name) }).collect();
    let holder_before = stack.processed(&holder.name);
    let n = 6;
    for i in 0..n {
        let report = rt.block_on(probe::call(&stack.sip_setup("3002", &echo, Duration::from_secs(2)), &shared));
        assert_echoed(&format!("new call {}", i + 1), &report, 50);
    }
    let holder_after = stack.processed(&holder.name);
    let others: u64 = members
        .iter()
        .zip(&before)
        .filter(|(m, _)| m.name != holder.name)
        .map(|(m, b)| stack.processed(&m.name) - b)
        .sum();
    eprintln!("of {n} new calls: {} on the draining member, {others} on the others", holder_after - holder_before);
    assert_eq!(holder_after, holder_before, "the draining member took new calls");
    assert_eq!(others, n, "the other members did not take every new call");

    // The held call kept its audio to the end; then the member stopped by itself.
    let report = rt.block_on(held).unwrap();
    assert_echoed("the held call", &report, 800);
    let (stopped, at) = stopper.join().unwrap();
    assert!(stopped, "docker stop failed");
    eprintln!("{} stopped {:.1?} after docker stop began (when its last call ended)", holder.name, at - stop_started);
}

#[test]
fn an_edge_restart_keeps_registrations() {
    let Some(stack) = Stack::start("edge-restart", |s| s) else { return };
    let rt = runtime();
    let edge_sip = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    let restart_edge = || {
        let t0 = Instant::now();
        let out = stack.project.run(&["restart", "edge"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = stack.project.run(&["up", "-d", "--wait", "--wait-timeout", "60", "edge"]);
        assert!(out.status.success(), "the edge did not come back: {}", String::from_utf8_lossy(&out.stderr));
        eprintln!("edge restarted and healthy in {:.1?}", t0.elapsed());
    };
    let phone = rt
        .block_on(astrtc::media::answer::AnsweringPhone::register(
            edge_sip,
            "3002",
            &stack.password("3002"),
            &stack.plan.tls.domain,
        ))
        .expect("the UDP phone could not register at the edge");
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let running = rt.spawn(phone.run(stopped));
    let row = || stack.sql("SELECT ruid, contact, received, expires FROM location WHERE username = '3002'");
    let before = row();
    eprintln!("registration before the restart: {}", before.trim());
    assert!(!before.trim().is_empty(), "the phone's registration is not in the database");

    // The edge's rtpengine cookies carry its server_id: a new one on every start, or the
    // restarted edge's first commands would get replies rtpengine kept for the old one's.
    let server_id = || {
        let out = stack.exec("edge", &["kamcmd", "-s", "unix:/run/kamailio/kamailio_ctl", "core.ppdefines_full"]);
        // Blocks of `name: N`, `type: T`, `value: V`.
        let mut lines = out.lines().map(str::trim).skip_while(|l| *l != "name: SERVER_ID");
        lines
            .find_map(|l| l.strip_prefix("value: ").map(str::to_string))
            .unwrap_or_else(|| panic!("no SERVER_ID among the edge's defines:\n{out}"))
    };
    let id_before = server_id();
    restart_edge();
    let id_after = server_id();
    eprintln!("edge server_id {id_before} before the restart, {id_after} after");
    assert_ne!(id_before, id_after, "the restarted edge kept its server_id (rtpengine cookies would collide)");
    let after = row();
    assert_eq!(before, after, "the registration changed across the edge restart");

    // Called through the restarted edge without registering again: audio both ways (the phone
    // echoes what it receives; the caller matches what comes back).
    let report = rt
        .block_on(probe::call(&stack.sip_setup("3001", "3002", Duration::from_secs(4)), &SharedMedia::new().unwrap()));
    stop.send(()).unwrap();
    let phone = rt.block_on(running).unwrap().unwrap();
    eprintln!("the phone: {phone:?}");
    if !report.healthy() {
        stack.save_logs("cluster_edge_restart");
    }
    assert_echoed("call to the phone after the restart", &report, 100);
    assert_eq!(phone.confirmed, 1, "the phone did not answer exactly one call: {phone:?}");
    assert!(phone.echoed >= 100, "the phone received only {} packets", phone.echoed);

    // A call to the echo extension, up across a second restart: its BYE, sent after it, must
    // still be taken as the edge's own call's (the dialog kept in the database) and reach the pool.
    const HOLD: Duration = Duration::from_secs(15);
    let held_started = Instant::now();
    let held = rt.spawn({
        let setup = stack.sip_setup("3001", &stack.plan.dialplan.echo_extension, HOLD);
        async move { probe::call(&setup, &SharedMedia::new().unwrap()).await }
    });
    let dialog_up = wait_until(Duration::from_secs(10), || stack.sql("SELECT count(*) FROM dialog").trim() != "0");
    assert!(dialog_up.is_some(), "the held call's dialog is not in the database");
    restart_edge();
    // The held call hangs up `HOLD` after it was answered, so after this point.
    assert!(held_started.elapsed() < HOLD, "the edge was back only after the held call's BYE");
    let held = rt.block_on(held).unwrap();
    if !held.healthy() {
        stack.save_logs("cluster_edge_restart");
    }
    // 15 s at 50 packets a second: a gap of 1 s or more in the restart would fail this.
    assert_echoed("call held across the restart", &held, 700);
    assert_eq!(
        held.hangup.as_deref(),
        Some("BYE answered 200 OK"),
        "the held call's BYE after the restart:\n{}",
        held.ladder.join("\n")
    );
}

/// One REGISTER for 3002 from a new UDP socket (in the calling thread's namespace) to `to`, with
/// `auth` as its Authorization header if given: the answer's text (panics on no answer in 3 s).
fn raw_register(to: SocketAddr, id: &str, auth: Option<&str>) -> String {
    try_register(to, id, auth).unwrap_or_else(|e| panic!("no answer to REGISTER {id}: {e}"))
}

/// [`raw_register`], or why nothing answered (a banned address).
fn try_register(to: SocketAddr, id: &str, auth: Option<&str>) -> Result<String, String> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.connect(to).unwrap();
    let me = sock.local_addr().unwrap();
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let register = format!(
        "REGISTER sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{id};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:3002@{to}>;tag={id}\r\nTo: <sip:3002@{to}>\r\nCall-ID: {id}@test\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:3002@{me}>\r\n{auth}Content-Length: 0\r\n\r\n"
    );
    sock.send(register.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).map_err(|e| format!("from {me}: {e}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// What the edge logged, without timestamps.
fn edge_log(stack: &Stack) -> String {
    let out = stack.project.run(&["logs", "--no-color", "edge"]);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_edge_bans_password_guessers_and_spares_everyone_else() {
    use crate::common::attacker::Peer;
    use crate::common::sip::{digest_authorization, options_over_udp, Registrar};
    let Some([attacker, allowed, legit, wss_guesser, scanner, framer, nobody, borrower]) =
        peers_first(["atk", "allow", "legit", "wss", "scan", "frame", "nobody", "borrow"])
    else {
        return;
    };
    if !Path::new("/usr/bin/svcrack").exists() {
        skip("/usr/bin/svcrack is not installed (Debian package sipvicious: make deps-audit)");
        return;
    }
    const BAN_AFTER: usize = 5;
    const BAN_SECONDS: u64 = 20;
    let allow = allowed.network();
    let Some(stack) = Stack::start("bans", |s| {
        format!(
            "{s}\n[security]\nban_after = {BAN_AFTER}\nfind_seconds = 60\nban_seconds = {BAN_SECONDS}\nallow = [{allow:?}]\n"
        )
    }) else {
        return;
    };
    let art = artifacts("cluster_bans");
    let (sip, domain) = (stack.plan.network.sip_port, stack.plan.tls.domain.clone());
    let options = |peer: &Peer| {
        let to = peer.to(sip);
        peer.run(move || options_over_udp(to, Duration::from_secs(2)))
    };
    let failures = |log: &str, ip: &str| {
        let (last, inner) = (format!(" from {ip}"), format!(" from {ip} "));
        log.lines().filter(|l| l.contains("astrtc: failed login") && (l.ends_with(&last) || l.contains(&inner))).count()
    };
    // Wrong passwords from `peer` (well-formed digests) until the edge stops answering, at most
    // `tries`: how many were answered, and the error that ended them ("" if none did).
    let guess = |peer: &Peer, udp: bool, user: &'static str, tries: usize| {
        let (to_sip, to_wss) = (peer.to(sip), peer.to(stack.plan.network.wss_port));
        let (domain, ca) = (domain.clone(), stack.ca_pem());
        peer.run(move || {
            let wrong = "wrong-password-xxxxxxxx";
            let mut session = if udp {
                Registrar::udp(to_sip, &domain, user, wrong).unwrap()
            } else {
                Registrar::open(to_wss, &domain, &ca, user, wrong).unwrap()
            };
            for answered in 0..tries {
                match session.register() {
                    Ok(code) => assert!(code == 401 || code == 403, "a wrong password got {code}"),
                    Err(e) => return (answered, e, Instant::now()),
                }
            }
            (tries, String::new(), Instant::now())
        })
    };

    // 1. Wrong passwords over UDP: exactly ban_after are answered and counted, then the edge
    //    answers nothing from that address.
    let (answered, error, _) = guess(&attacker, true, "3001", 100);
    let log = edge_log(&stack);
    std::fs::write(art.join("edge.log"), &log).unwrap();
    let ip = attacker.ip.to_string();
    eprintln!("UDP guesses answered before the ban: {answered} ({error})");
    assert_eq!(answered, BAN_AFTER, "wrong passwords answered over UDP before the ban");
    assert!(log.contains(&format!("astrtc: banned {ip} for {BAN_SECONDS} s")), "no ban logged for {ip}");
    assert_eq!(failures(&log, &ip), BAN_AFTER, "failed logins counted from the attacker");
    assert_eq!(options(&attacker), None, "a banned address still gets answers");

    // 1b. A user the edge does not know (auth_check -3) counts the same: ban_after answered.
    let (answered, error, _) = guess(&nobody, true, "9999", 100);
    eprintln!("UDP guesses for an unknown user answered before the ban: {answered} ({error})");
    assert_eq!(answered, BAN_AFTER, "guesses for an unknown user answered before the ban");
    assert_eq!(failures(&edge_log(&stack), &nobody.ip.to_string()), BAN_AFTER, "unknown-user failures counted");
    assert_eq!(options(&nobody), None, "the unknown-user guesser is still answered");

    // 1c. Another user's credentials (3001's right password, REGISTER for 3002: auth_check -8)
    //     count too. Each try asks for a nonce of its own first (nonces are bound to the address).
    let (to, password) = (borrower.to(sip), stack.password("3001"));
    let answered = borrower.run(move || {
        let uri = format!("sip:{to}");
        let mut answered = 0;
        for n in 0..BAN_AFTER * 4 {
            let Ok(text) = try_register(to, &format!("borrow{n}c"), None) else { break };
            let challenge = text.lines().find_map(|l| l.strip_prefix("WWW-Authenticate: ")).expect(&text).to_string();
            let auth = digest_authorization(&challenge, "REGISTER", &uri, "3001", &password).unwrap();
            let Ok(answer) = try_register(to, &format!("borrow{n}"), Some(&auth)) else { break };
            assert!(answer.starts_with("SIP/2.0 401"), "another user's credentials got: {answer}");
            answered += 1;
        }
        answered
    });
    eprintln!("REGISTERs with another user's credentials answered before the ban: {answered}");
    assert_eq!(answered, BAN_AFTER, "another user's credentials answered before the ban");
    assert_eq!(failures(&edge_log(&stack), &borrower.ip.to_string()), BAN_AFTER, "-8 failures counted");

    // 2. Everyone else is served: another address gets its OPTIONS answered and registers the
    //    account under attack, over UDP, with its password.
    assert!(options(&legit).is_some(), "the edge does not answer an address it never banned");
    let (to, d, password) = (legit.to(sip), domain.clone(), stack.password("3001"));
    let code = legit.run(move || Registrar::udp(to, &d, "3001", &password)?.register());
    assert_eq!(code, Ok(200), "the attacked account could not register from another address");

    // 3. No one can have an address banned with a nonce of their own: credentials built on a
    //    nonce the edge gave another address count as a stale nonce, never as a failure.
    let to = legit.to(sip);
    let challenge = legit.run(move || {
        let text = raw_register(to, "nonce", None);
        text.lines().find_map(|l| l.strip_prefix("WWW-Authenticate: ").map(str::to_string)).expect(&text)
    });
    let to = framer.to(sip);
    let stale = framer.run(move || {
        let uri = format!("sip:{to}");
        let auth = digest_authorization(&challenge, "REGISTER", &uri, "3002", "wrong-password-xxxxxxxx").unwrap();
        (0..BAN_AFTER + 2).map(|n| raw_register(to, &format!("frame{n}"), Some(&auth))).collect::<Vec<_>>()
    });
    assert!(stale.iter().all(|a| a.starts_with("SIP/2.0 401")), "credentials on another address's nonce: {stale:#?}");
    let marked = stale.iter().filter(|a| a.to_ascii_lowercase().contains("stale=true")).count();
    eprintln!("credentials on another address's nonce: {} answered 401, {marked} of them stale=true", stale.len());
    assert_eq!(failures(&edge_log(&stack), &framer.ip.to_string()), 0, "a borrowed nonce counted as a failed login");
    assert!(options(&framer).is_some(), "the address that used another's nonce was banned");

    // 4. svcrack over UDP: its credentials (qop without cnonce) are refused before any password
    //    is checked and could come from a forged source: never counted, never banned.
    let malformed = |log: &str| log.matches("Credentials are not filled properly").count();
    let before = malformed(&edge_log(&stack));
    let crack = scanner.svcrack(sip, "3001", 50);
    std::fs::write(art.join("svcrack-scanner.txt"), &crack).unwrap();
    let log = edge_log(&stack);
    assert!(malformed(&log) - before >= 50, "svcrack's 50 guesses did not all reach the edge:\n{crack}");
    assert!(!crack.contains("since we last received a response"), "svcrack over UDP was cut off:\n{crack}");
    assert_eq!(failures(&log, &scanner.ip.to_string()), 0, "svcrack's malformed UDP credentials counted");

    // 5. The allowed network guesses as much and is never banned: every guess answered.
    let (allowed_answered, _, _) = guess(&allowed, true, "3001", 30);
    let log = edge_log(&stack);
    let allowed_ip = allowed.ip.to_string();
    assert_eq!(allowed_answered, 30, "the allowed network's wrong passwords were not all answered");
    assert!(failures(&log, &allowed_ip) >= 30, "the allowed network's failures were not logged");
    assert!(!log.contains(&format!("banned {allowed_ip} ")), "the allowed network was banned");
    assert!(options(&allowed).is_some());

    // 6. Over the WebSocket the same: exactly ban_after wrong passwords answered, then none.
    let (answered, error, banned_by) = guess(&wss_guesser, false, "198", 100);
    eprintln!("WSS guesses answered before the ban: {answered} ({error})");
    assert_eq!(answered, BAN_AFTER, "wrong passwords answered over WSS before the ban");
    // The ban was set while the edge handled the last answered guess: before `banned_by` (when
    // the next one went unanswered, 5 s later) minus that timeout.
    let banned_at = banned_by - Duration::from_secs(5);

    // 7. That ban holds until ban_seconds have passed, and then lifts.
    let still = banned_at + Duration::from_secs(BAN_SECONDS - 2);
    std::thread::sleep(still.saturating_duration_since(Instant::now()));
    assert_eq!(options(&wss_guesser), None, "the ban lifted before {BAN_SECONDS} s");
    let lifted = wait_until(Duration::from_secs(15), || options(&wss_guesser).is_some());
    let lifted = lifted.map(|_| banned_at.elapsed());
    eprintln!("the WSS guesser is answered again {lifted:?} after its ban (ban_seconds = {BAN_SECONDS})");
    assert!(lifted.is_some(), "the ban did not lift within {BAN_SECONDS} s + 15 s");
}

#[test]
fn in_dialog_requests_pass_only_for_the_edges_own_calls() {
    let Some(stack) = Stack::start("dialogs", |s| s) else { return };
    let edge = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    // Where a forged request would be sent on to: a socket of the test's own.
    let target = local_socket(Duration::from_secs(3));
    let target_addr = target.local_addr().unwrap();
    let attacker = local_socket(Duration::from_secs(3));
    let me = attacker.local_addr().unwrap();
    for (n, method) in ["INVITE", "BYE", "UPDATE"].into_iter().enumerate() {
        // An in-dialog request (To tag) of no call the edge knows, routed through the edge (a
        // Route header naming it) to the target.
        let forged = format!(
            "{method} sip:victim@{target_addr} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK-forged-{n};rport\r\n\
             Route: <sip:{edge};lr>\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:attacker@example.test>;tag=forged-from-{n}\r\n\
             To: <sip:victim@example.test>;tag=forged-to-{n}\r\n\
             Call-ID: forged-{n}@example.test\r\n\
             CSeq: 2 {method}\r\n\
             Contact: <sip:attacker@{me}>\r\n\
             Content-Length: 0\r\n\r\n"
        );
        attacker.send_to(forged.as_bytes(), edge).unwrap();
        // Nothing reaches the target (its read waits 3 s), then the edge's final answer is 481.
        let mut buf = [0u8; 4096];
        let relayed =
            target.recv_from(&mut buf).map(|(len, from)| (from, String::from_utf8_lossy(&buf[..len]).into_owned()));
        assert!(relayed.is_err(), "the edge sent a forged in-dialog {method} on: {relayed:?}");
        let answer = loop {
            let (len, _) = attacker.recv_from(&mut buf).expect("no final answer to a forged in-dialog request");
            let answer = String::from_utf8_lossy(&buf[..len]).into_owned();
            if !answer.starts_with("SIP/2.0 1") {
                break answer;
            }
        };
        let status = answer.lines().next().unwrap_or_default().to_string();
        eprintln!("forged in-dialog {method}: {status}");
        assert!(status.starts_with("SIP/2.0 481"), "a forged in-dialog {method} got: {answer}");
    }
    // The edge's own calls still pass in-dialog requests: the probe's BYE reaches the pool and
    // is answered there.
    let report = runtime().block_on(probe::call(
        &stack.sip_setup("3001", &stack.plan.dialplan.echo_extension, Duration::from_secs(2)),
        &SharedMedia::new().unwrap(),
    ));
    if !report.healthy() {
        stack.save_logs("cluster_dialogs");
    }
    assert_echoed("echo call", &report, 50);
    assert_eq!(report.hangup.as_deref(), Some("BYE answered 200 OK"), "{}", report.ladder.join("\n"));
    pool_refuses_calls_without_the_edges_key(&stack, edge);

    // A party to a real call cannot have the edge send the call's requests elsewhere: an
    // in-dialog INFO with the right Call-ID, tags and route set but a request URI at the test's
    // socket, or the call's own request URI with an alias naming that socket, is refused (403)
    // and nothing reaches the socket; the same INFO to the call's real target reaches the pool.
    let echo = stack.plan.dialplan.echo_extension.clone();
    let mut call = RawDialog::call(edge, &stack.plan.tls.domain, "3001", &stack.password("3001"), &echo);
    eprintln!("raw call: target {}, route set {:?}", call.target, call.routes);
    let real = call.target.clone();
    // (The pool's contact already carries the edge's alias for it: replaced, not added to.)
    let aliased = format!("{};alias=127.0.0.1~{}~1", real.split(";alias=").next().unwrap(), target_addr.port());
    for (what, uri) in [("a request URI at another host", format!("sip:victim@{target_addr}")), ("an alias", aliased)] {
        let status = call.in_dialog("INFO", &uri);
        refused_and_not_relayed(&target, &format!("a party's in-dialog INFO with {what} ({uri})"), &status);
    }
    let status = call.in_dialog("INFO", &real);
    eprintln!("in-dialog INFO to the call's target ({real}): {status}");
    assert!(status.starts_with("SIP/2.0 200"), "the call's own INFO was not answered by the pool: {status}");
    // Nor back to the caller itself (relayed, it would reach the caller's socket, which never
    // answers: 408, not 403).
    let own = format!("sip:raw@{}", call.sock.local_addr().unwrap());
    let status = call.in_dialog("INFO", &own);
    eprintln!("in-dialog INFO from the caller to itself ({own}): {status}");
    assert!(status.starts_with("SIP/2.0 403"), "the caller's in-dialog INFO to itself got: {status}");
    // Someone who knows the call's Call-ID, tags and route set but sends from an address of
    // their own (an eavesdropper on the UDP path) cannot end it: their BYE to the call's real
    // target is refused, and the call is still up at the pool (its INFO answered 200, not 481).
    let mut eavesdropper = call.sent_elsewhere();
    let status = eavesdropper.in_dialog("BYE", &real);
    eprintln!("the call's BYE from another address ({}): {status}", eavesdropper.sock.local_addr().unwrap());
    assert!(status.starts_with("SIP/2.0 403"), "a BYE from an address not a party to the call got: {status}");
    call.cseq = eavesdropper.cseq;
    let status = call.in_dialog("INFO", &real);
    assert!(status.starts_with("SIP/2.0 200"), "the call did not outlive the eavesdropper's BYE: {status}");
    // The two parties are kept with the dialog in the database (an edge restart keeps the check).
    let vars = stack.sql("SELECT dialog_key || '=' || dialog_value FROM dialog_vars ORDER BY dialog_key");
    eprintln!("dialog_vars: {vars:?}");
    for key in ["answered=1", "callee=", "caller=127.0.0.1:"] {
        assert!(vars.lines().any(|l| l.starts_with(key)), "no {key} in dialog_vars: {vars:?}");
    }
    let status = call.in_dialog("BYE", &real);
    assert!(status.starts_with("SIP/2.0 200"), "the call's BYE: {status}");

    // The other way: the pool hangs up a call (the member's channel hung up by hand), and its
    // BYE reaches the caller through the edge — the caller is a party too.
    let other = RawDialog::call(edge, &stack.plan.tls.domain, "3001", &stack.password("3001"), &echo);
    for m in &stack.cluster().members {
        stack.exec(&m.name, &["asterisk", "-rx", "channel request hangup all"]);
    }
    let bye = next_request(&other.sock, Duration::from_secs(5));
    eprintln!("from the pool to the caller: {:?}", bye.as_deref().and_then(|r| r.lines().next()));
    assert!(bye.as_deref().is_some_and(|r| r.starts_with("BYE ")), "the pool's BYE never reached the caller: {bye:?}");

    // A phone that keeps the edge as a preloaded Route calls a user who is not registered: the
    // edge's 480 (sent within a transaction) is taken back by the phone's ACK, Route and all, so
    // the edge does not send it again (over UDP it would, from half a second on, until an ACK).
    let mut offline = RawDialog::invite_routed(edge, &stack.plan.tls.domain, "3001", &stack.password("3001"), "3010");
    let answer = offline.final_answer();
    eprintln!("a call to a user not registered: {}", answer.lines().next().unwrap_or_default());
    assert!(answer.starts_with("SIP/2.0 480"), "a call to a user not registered got: {answer}");
    let uri = format!("sip:3010@{}", stack.plan.tls.domain);
    offline.ack_failure(&answer, &uri);
    offline.sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 4096];
    let again = offline.sock.recv_from(&mut buf).map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(again.is_err(), "the edge sent its failure answer again after the routed ACK: {again:?}");

    // Before the callee answers (here: 3002 registered at a socket that never replies), the
    // dialog matches any To tag: a request made up with one may go only to the caller.
    let phone = local_socket(Duration::from_secs(5));
    let contact = format!("sip:3002@{}", phone.local_addr().unwrap());
    let registered = register_from(&phone, edge, "3002", &stack.password("3002"), &contact);
    assert!(registered.starts_with("SIP/2.0 200"), "3002 could not register: {registered}");
    let mut ringing = RawDialog::invite(edge, &stack.plan.tls.domain, "3001", &stack.password("3001"), "3002");
    let invite = next_request(&phone, Duration::from_secs(5));
    assert!(invite.as_deref().is_some_and(|r| r.starts_with("INVITE ")), "3002's phone got no INVITE: {invite:?}");
    ringing.to = format!("<sip:3002@{}>;tag=made-up", stack.plan.tls.domain);
    ringing.routes = vec![format!("<sip:{edge};lr>")];
    let status = ringing.in_dialog("INFO", &format!("sip:victim@{target_addr}"));
    refused_and_not_relayed(&target, "an in-dialog INFO (a made-up To tag) before the answer", &status);

    // A browser's WebSocket closes mid-call (an edge restart closes them all) and it comes back
    // from another port of the same address: its BYE is taken (over a connection, whose address
    // cannot be forged, the sender's address is enough).
    let wss = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.wss_port);
    let (domain, ca) = (stack.plan.tls.domain.clone(), stack.ca_pem());
    let open = || SipConnection::wss(wss, &domain, &ca).expect("a WebSocket to the edge");
    let mut browser = RawDialog::call_over(Some(open()), edge, &domain, "199", &stack.password("199"), &echo);
    browser.conn = Some(open());
    let target_of_call = browser.target.clone();
    let status = browser.in_dialog("BYE", &target_of_call);
    eprintln!("the call's BYE over a new WebSocket from the same address: {status}");
    assert!(status.starts_with("SIP/2.0 200"), "a BYE over the caller's new WebSocket got: {status}");

    let log = edge_log(&stack);
    let refused = |what: &str, why: &str| log.lines().filter(|l| l.contains(what) && l.contains(why)).count();
    let (info, bye) = ("astrtc: refused an in-dialog INFO", "astrtc: refused an in-dialog BYE");
    assert_eq!(refused(info, ": not the other party to call"), 4, "the edge did not log every misdirected INFO");
    assert_eq!(refused(bye, ": not a party to call"), 1, "the edge did not log the eavesdropper's BYE");
}

/// The pool trusts the edge by its key, not by its address alone: any process on the host sends
/// from the edge's address on the pool's network (the bridge's gateway, the edge endpoint's
/// `match`). From there, straight to a pool member, an INVITE of the echo extension with an offer
/// is refused 403 (the dialplan's `Hangup(21)`) and logged by the member, with a made-up key as
/// without one; with the right key the same INVITE is answered 200 (so the refusal is the key's,
/// not the address's). A client that writes its own `X-Astrtc-Edge` into a call through the edge
/// (a wrong key) is answered 200 — the edge removed it and sent its own — and nothing of the key
/// comes back.
fn pool_refuses_calls_without_the_edges_key(stack: &Stack, edge: SocketAddr) {
    let cluster = stack.cluster();
    let (domain, echo) = (&stack.plan.tls.domain, &stack.plan.dialplan.echo_extension);
    let member = &cluster.members[0];
    let to = SocketAddr::new(IpAddr::V4(member.address), stack.plan.network.sip_port);
    let from_host = || {
        let sock = std::net::UdpSocket::bind((cluster.edge_address, 0)).expect("a socket at the host's pool address");
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        sock
    };
    let forged = "X-Astrtc-Edge: forgedForgedForgedForged0123456789\r\n";
    for (what, headers) in [("without a key", ""), ("with a made-up key", forged)] {
        let (d, answer) = RawDialog::invite_direct(from_host(), to, domain, echo, headers);
        let status = answer.lines().next().unwrap_or_default().to_string();
        eprintln!("a direct INVITE {what} from {} to {} at {to}: {status}", d.sock.local_addr().unwrap(), member.name);
        assert!(
            status.starts_with("SIP/2.0 403"),
            "a direct INVITE {what} from the host's pool address (the edge's match) to {} was not refused 403 \
             (the pool took the edge's address alone for the edge): {answer}",
            member.name
        );
    }
    let right = format!("X-Astrtc-Edge: {}\r\n", cluster.edge_key);
    let (_, answer) = RawDialog::invite_direct(from_host(), to, domain, echo, &right);
    eprintln!("a direct INVITE with the edge's key: {}", answer.lines().next().unwrap_or_default());
    assert!(answer.starts_with("SIP/2.0 200"), "a direct INVITE with the edge's key was not answered: {answer}");
    let log = {
        let out = stack.project.run(&["logs", "--no-color", &member.name]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let refusals = log
        .lines()
        .filter(|l| l.contains(&format!("astrtc: refused a call to {echo} from {}:", cluster.edge_address)))
        .count();
    assert_eq!(refusals, 2, "{} did not log each refusal (\"astrtc: refused a call to {echo} from …\")", member.name);

    let (mut call, answer) = RawDialog::call_carrying(edge, domain, "3001", &stack.password("3001"), echo, forged);
    eprintln!("a call through the edge carrying a made-up key: {}", answer.lines().next().unwrap_or_default());
    assert!(
        !answer.to_ascii_lowercase().contains("x-astrtc-edge"),
        "the edge relayed the header to the caller: {answer}"
    );
    assert!(!answer.contains(&cluster.edge_key), "the edge's key reached the caller: {answer}");
    let target = call.target.clone();
    let status = call.in_dialog("BYE", &target);
    assert!(status.starts_with("SIP/2.0 200"), "the call's BYE: {status}");
}

/// A UDP socket on loopback whose reads wait at most `timeout`: a phone, a target or an
/// attacker of the test's.
fn local_socket(timeout: Duration) -> std::net::UdpSocket {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(timeout)).unwrap();
    sock
}

/// A party's in-dialog request (`what`) was answered `status`: it must be 403 with nothing
/// reaching `target` (whose read waits its timeout).
fn refused_and_not_relayed(target: &std::net::UdpSocket, what: &str, status: &str) {
    eprintln!("{what}: {status}");
    let mut buf = [0u8; 4096];
    let relayed =
        target.recv_from(&mut buf).map(|(len, from)| (from, String::from_utf8_lossy(&buf[..len]).into_owned()));
    assert!(relayed.is_err(), "the edge sent {what} on: {relayed:?}");
    assert!(status.starts_with("SIP/2.0 403"), "{what} got: {status}");
}

/// A call placed by hand over UDP through the edge (no media): what its in-dialog requests need.
struct RawDialog {
    sock: std::net::UdpSocket,
    /// A connection (WSS) the dialog's requests go over instead of `sock`.
    conn: Option<SipConnection>,
    edge: SocketAddr,
    call_id: String,
    from: String,
    to: String,
    /// The route set: the answer's Record-Route, reversed.
    routes: Vec<String>,
    /// The answer's Contact URI.
    target: String,
    cseq: u32,
    /// Header lines every request of this dialog carries besides its own (each ending CRLF).
    headers: String,
}

impl RawDialog {
    /// INVITEs `extension` through the edge as `user` (answering the challenge), then ACKs
    /// the 200 OK.
    fn call(edge: SocketAddr, domain: &str, user: &str, password: &str, extension: &str) -> RawDialog {
        RawDialog::call_over(None, edge, domain, user, password, extension)
    }

    /// [`RawDialog::call`] over `conn` when given (a WebSocket), else UDP.
    fn call_over(
        conn: Option<SipConnection>,
        edge: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        extension: &str,
    ) -> RawDialog {
        let mut d = RawDialog::invite_over(conn, edge, domain, user, password, extension);
        let answer = d.final_answer();
        assert!(answer.starts_with("SIP/2.0 200"), "the call was not answered: {answer}");
        d.answered(&answer);
        d
    }

    /// [`RawDialog::call`] with `headers` in every request: the dialog and the INVITE's 200 OK.
    fn call_carrying(
        edge: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        extension: &str,
        headers: &str,
    ) -> (RawDialog, String) {
        let mut d =
            RawDialog::start_over(None, edge, domain, user, password, extension, |d| d.headers = headers.into());
        let answer = d.final_answer();
        assert!(answer.starts_with("SIP/2.0 200"), "the call carrying {headers:?} was not answered: {answer}");
        d.answered(&answer);
        (d, answer)
    }

    /// Takes the dialog's tag, target and route set from its 200 OK, and ACKs it.
    fn answered(&mut self, answer: &str) {
        let d = self;
        d.to = header_of(answer, "To").unwrap().to_string();
        d.target = header_of(answer, "Contact").unwrap().trim_start_matches('<').split('>').next().unwrap().into();
        let mut routes: Vec<String> = answer
            .lines()
            .filter_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("Record-Route")))
            .flat_map(|(_, v)| v.split(',').map(|r| r.trim().to_string()).collect::<Vec<_>>())
            .collect();
        routes.reverse();
        d.routes = routes;
        let target = d.target.clone();
        let ack = d.request("ACK", &target, "", "");
        d.transmit(&ack);
    }

    /// Sends the INVITE, answers the edge's challenge and sends it again with credentials; does
    /// not wait for the call's answer.
    fn invite(edge: SocketAddr, domain: &str, user: &str, password: &str, extension: &str) -> RawDialog {
        RawDialog::invite_over(None, edge, domain, user, password, extension)
    }

    /// [`RawDialog::invite`] from a phone that keeps the edge as a preloaded Route (baresip with
    /// an outbound proxy): every request it sends, ACKs to failures included, carries it.
    fn invite_routed(edge: SocketAddr, domain: &str, user: &str, password: &str, extension: &str) -> RawDialog {
        RawDialog::start_over(None, edge, domain, user, password, extension, |d| {
            d.routes = vec![format!("<sip:{edge};lr>")]
        })
    }

    fn invite_over(
        conn: Option<SipConnection>,
        edge: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        extension: &str,
    ) -> RawDialog {
        RawDialog::start_over(conn, edge, domain, user, password, extension, |_| {})
    }

    fn start_over(
        conn: Option<SipConnection>,
        edge: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        extension: &str,
        setup: impl FnOnce(&mut RawDialog),
    ) -> RawDialog {
        use crate::common::sip::digest_authorization;
        let (mut d, uri, sdp) =
            RawDialog::unsent(local_socket(Duration::from_secs(10)), conn, edge, domain, user, extension);
        setup(&mut d);
        let ctype = "Content-Type: application/sdp\r\n";
        let invite = d.request("INVITE", &uri, ctype, &sdp);
        let answer = d.send(&invite);
        let (name, reply) = if answer.starts_with("SIP/2.0 401") {
            ("WWW-Authenticate", "Authorization")
        } else {
            assert!(answer.starts_with("SIP/2.0 407"), "the INVITE was not challenged: {answer}");
            ("Proxy-Authenticate", "Proxy-Authorization")
        };
        d.ack_failure(&answer, &uri);
        let challenge = header_of(&answer, name).expect("a challenge");
        let auth = format!("{reply}: {}\r\n", digest_authorization(challenge, "INVITE", &uri, user, password).unwrap());
        d.cseq += 1;
        let invite = d.request("INVITE", &uri, &format!("{auth}{ctype}"), &sdp);
        d.transmit(&invite);
        d
    }

    /// An INVITE of `extension` with an offer (G.711), sent without credentials from `sock`
    /// straight to `to` carrying `headers`: the dialog and the INVITE's final answer (a failure
    /// ACKed, a 200 OK ACKed and its call ended with a BYE).
    fn invite_direct(
        sock: std::net::UdpSocket,
        to: SocketAddr,
        domain: &str,
        extension: &str,
        headers: &str,
    ) -> (RawDialog, String) {
        let (mut d, uri, sdp) = RawDialog::unsent(sock, None, to, domain, "attacker", extension);
        d.headers = headers.to_string();
        // A CSeq of its own, so a branch of its own (the Via branch is made of the Call-ID's
        // length and the CSeq): pjsip matches a transaction by branch alone, and took a second
        // call's INVITE for the first's.
        d.cseq = u32::from(d.sock.local_addr().unwrap().port());
        let invite = d.request("INVITE", &uri, "Content-Type: application/sdp\r\n", &sdp);
        let answer = d.send(&invite);
        if answer.starts_with("SIP/2.0 200") {
            d.answered(&answer);
            let target = d.target.clone();
            let bye = d.in_dialog("BYE", &target);
            eprintln!("the direct call's BYE: {bye}");
        } else {
            d.ack_failure(&answer, &uri);
        }
        (d, answer)
    }

    /// A dialog whose first INVITE (to `extension`) is not sent yet: the dialog, the request URI
    /// and the INVITE's offer.
    fn unsent(
        sock: std::net::UdpSocket,
        conn: Option<SipConnection>,
        edge: SocketAddr,
        domain: &str,
        user: &str,
        extension: &str,
    ) -> (RawDialog, String, String) {
        let me = sock.local_addr().unwrap();
        let uri = format!("sip:{extension}@{domain}");
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
            me.port() + 2
        );
        let d = RawDialog {
            sock,
            conn,
            edge,
            call_id: format!("raw-{}-{}@test", std::process::id(), me.port()),
            from: format!("<sip:{user}@{domain}>;tag=raw-{}", me.port()),
            to: format!("<{uri}>"),
            routes: Vec::new(),
            target: uri.clone(),
            cseq: 1,
            headers: String::new(),
        };
        (d, uri, sdp)
    }

    /// The next final answer (provisional ones and requests skipped).
    fn final_answer(&mut self) -> String {
        let mut buf = [0u8; 8192];
        loop {
            let text = match self.conn.as_mut() {
                Some(conn) => conn.next(Duration::from_secs(10)).unwrap().expect("no final answer in 10 s"),
                None => {
                    let (n, _) = self.sock.recv_from(&mut buf).expect("no final answer in 10 s");
                    String::from_utf8_lossy(&buf[..n]).into_owned()
                }
            };
            if text.starts_with("SIP/2.0") && !text.starts_with("SIP/2.0 1") {
                return text;
            }
        }
    }

    /// Writes a message to the edge, over the connection if there is one.
    fn transmit(&mut self, msg: &str) {
        match self.conn.as_mut() {
            Some(conn) => conn.send(msg).unwrap(),
            None => {
                self.sock.send_to(msg.as_bytes(), self.edge).unwrap();
            }
        }
    }

    /// This end as Via (`UDP address:port`, `WSS name.invalid`) and as a Contact URI.
    fn me(&self) -> (String, String) {
        match &self.conn {
            Some(conn) => {
                let host = conn.via().split(' ').nth(1).unwrap_or_default().to_string();
                (conn.via().to_string(), format!("sip:raw@{host};transport=ws"))
            }
            None => {
                let me = self.sock.local_addr().unwrap();
                (format!("UDP {me}"), format!("sip:raw@{me}"))
            }
        }
    }

    fn request(&self, method: &str, uri: &str, extra: &str, body: &str) -> String {
        let (via, contact) = self.me();
        let routes: String = self.routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{via};branch=z9hG4bK-{}-{method}-{};rport\r\n{routes}\
             Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n\
             Contact: <{contact}>\r\n{}{extra}Content-Length: {}\r\n\r\n{body}",
            self.call_id.len(),
            self.cseq,
            self.from,
            self.to,
            self.call_id,
            self.cseq,
            self.headers,
            body.len()
        )
    }

    /// Sends a request; its final answer (requests from the far end are skipped).
    fn send(&mut self, msg: &str) -> String {
        self.transmit(msg);
        self.final_answer()
    }

    /// The ACK to a failure answer: the INVITE's Via and route set, the answer's To (RFC 3261
    /// 17.1.1.3).
    fn ack_failure(&mut self, answer: &str, uri: &str) {
        let (_, contact) = self.me();
        let via = header_of(answer, "Via").unwrap_or_default();
        let to = header_of(answer, "To").unwrap_or_default();
        let routes: String = self.routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
        let ack = format!(
            "ACK {uri} SIP/2.0\r\nVia: {via}\r\n{routes}Max-Forwards: 70\r\nFrom: {}\r\nTo: {to}\r\n\
             Call-ID: {}\r\nCSeq: {} ACK\r\nContact: <{contact}>\r\nContent-Length: 0\r\n\r\n",
            self.from, self.call_id, self.cseq
        );
        self.transmit(&ack);
    }

    /// The same dialog sent from another socket (another source port): what someone who saw the
    /// call's headers could send.
    fn sent_elsewhere(&self) -> RawDialog {
        let sock = local_socket(Duration::from_secs(10));
        RawDialog {
            sock,
            conn: None,
            edge: self.edge,
            call_id: self.call_id.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            routes: self.routes.clone(),
            target: self.target.clone(),
            cseq: self.cseq,
            headers: self.headers.clone(),
        }
    }

    /// An in-dialog request (next CSeq) to `uri`; the status line of its final answer.
    fn in_dialog(&mut self, method: &str, uri: &str) -> String {
        self.cseq += 1;
        let msg = self.request(method, uri, "", "");
        self.send(&msg).lines().next().unwrap_or_default().to_string()
    }
}

/// The value of the first header `name` in a SIP message.
fn header_of<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// What a change must leave alone, taken before it by [`Stack::before_a_change`].
struct Before {
    /// A WebSocket to the edge with 199 registered on it.
    ws: crate::common::sip::Registrar,
    /// The edge's container.
    edge: String,
    /// Its `StartedAt` and PID.
    edge_before: String,
    /// An echo call held through the edge, the relay and the pool.
    held: tokio::task::JoinHandle<CallReport>,
}

impl Stack {
    /// Registers 199 over a WebSocket it keeps, notes the edge's container as it started, and
    /// holds an echo call from `user` for `hold` (waiting until its dialog is in the database).
    fn before_a_change(&self, rt: &tokio::runtime::Runtime, user: &str, hold: Duration) -> Before {
        let wss = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.plan.network.wss_port);
        let mut ws = crate::common::sip::Registrar::open(
            wss,
            &self.plan.tls.domain,
            &self.ca_pem(),
            "199",
            &self.password("199"),
        )
        .expect("no WebSocket to the edge");
        assert_eq!(ws.register(), Ok(200), "199 could not register over WSS");
        let edge = container_of(self, "edge");
        let edge_before = started_and_pid(&edge);
        let held = rt.spawn({
            let setup = self.sip_setup(user, &self.plan.dialplan.echo_extension, hold);
            async move { probe::call(&setup, &SharedMedia::new().unwrap()).await }
        });
        let up = wait_until(Duration::from_secs(10), || self.sql("SELECT count(*) FROM dialog").trim() != "0");
        assert!(up.is_some(), "the held call's dialog is not in the database");
        Before { ws, edge, edge_before, held }
    }
}

/// `docker inspect` of a container: when it started and its main process' PID.
fn started_and_pid(id: &str) -> String {
    let out =
        Command::new("docker").args(["inspect", "-f", "{{.State.StartedAt}} {{.State.Pid}}", id]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn apply_writes_users_into_the_database_without_restarting_the_edge() {
    use crate::common::call::{invite_status, CallSpec};
    use crate::common::sip::Registrar;
    let Some(stack) = Stack::start("apply", |s| s) else { return };
    let rt = runtime();
    let domain = stack.plan.tls.domain.clone();
    let edge_sip = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    let register = |user: &str, password: &str| {
        Registrar::udp(edge_sip, &domain, user, password).and_then(|mut r| r.register()).unwrap_or_else(|e| {
            stack.save_logs("cluster_apply");
            panic!("REGISTER {user}: {e}")
        })
    };
    let invite = |target: &str| {
        invite_status(&CallSpec {
            sip: edge_sip,
            user: "3001".into(),
            password: stack.password("3001"),
            target: target.into(),
            skip_every: None,
        })
    };

    // Before: a UDP phone registered (its row in `location`), a WebSocket held open with a
    // registration on it, a call to the echo extension held through the edge, the relay and
    // the pool, and the edge's container as it started.
    assert_eq!(register("3001", &stack.password("3001")), 200, "3001 could not register");
    let row = || stack.sql("SELECT ruid, contact, received, expires FROM location WHERE username = '3001'");
    let registration = row();
    assert!(!registration.trim().is_empty(), "3001's registration is not in the database");
    let Before { mut ws, edge, edge_before, held } = stack.before_a_change(&rt, "3001", Duration::from_secs(12));

    // The change: endpoint 3003 added, 3002's password changed.
    let old_3002 = stack.password("3002");
    let (new_3002, new_3003) = ("applied-sip-3002-password-new", "applied-sip-3003-password");
    let secrets = stack.dir.path().join("astrtc.secrets.toml");
    let text = std::fs::read_to_string(&secrets).unwrap();
    let edited = text.replacen("[endpoints]\n", &format!("[endpoints]\n3003 = {new_3003:?}\n"), 1).replacen(
        &format!("3002 = {old_3002:?}"),
        &format!("3002 = {new_3002:?}"),
        1,
    );
    assert_eq!(edited.matches("applied-sip-").count(), 2, "the secrets file was not edited: {edited}");
    std::fs::write(&secrets, edited).unwrap();
    let spec = stack.dir.path().join("astrtc.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, format!("{text}\n[[endpoints]]\nid = \"3003\"\nkind = \"sip\"\n")).unwrap();

    // No --yes and no terminal: it must need no restart, or it would refuse (exit 2).
    let started = Instant::now();
    let out = astrtc().args(["apply", "--spec"]).arg(&spec).output().unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("astrtc apply ({took:.1?}):\n{stdout}");
    assert!(out.status.success(), "apply failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("users: 6 written to the database (1 added: 3003, 0 removed, 1 password(s) changed: 3002"),
        "{stdout}"
    );
    assert!(stdout.contains("edge: unchanged, not restarted"), "{stdout}");
    // The pool holds no user (render::a_clusters_pool_holds_no_user_and_no_password): nothing to
    // reload there.
    assert!(stdout.contains("pool: asterisk-1, asterisk-2 unchanged"), "{stdout}");
    assert!(!stdout.contains("only a restart applies"), "{stdout}");

    // After: 3003 registers; 3002's old password is refused and the new one taken.
    assert_eq!(register("3003", new_3003), 200, "the new endpoint 3003 could not register through the edge");
    assert_eq!(register("3002", &old_3002), 401, "3002's old password was not refused");
    assert_eq!(register("3002", new_3002), 200, "3002's new password was not taken");
    // The edge was not restarted: the same container, started at the same time, the same PID;
    // the WebSocket opened before is still open (a REGISTER on it answered); the earlier
    // registration is still in the database, unchanged.
    assert_eq!(container_of(&stack, "edge"), edge, "the edge container was replaced");
    let edge_after = started_and_pid(&edge);
    eprintln!("edge StartedAt and PID before and after apply: {edge_before} / {edge_after}");
    assert_eq!(edge_before, edge_after, "the edge was restarted");
    assert_eq!(ws.register(), Ok(200), "the WebSocket opened before apply was closed");
    assert_eq!(row(), registration, "3001's registration changed across apply");
    let held = rt.block_on(held).unwrap();
    if !held.healthy() {
        stack.save_logs("cluster_apply");
    }
    // 12 s at 50 packets a second: a gap of 1 s or more would fail this.
    assert_echoed("call held across apply", &held, 550);
    assert_eq!(held.hangup.as_deref(), Some("BYE answered 200 OK"), "{}", held.ladder.join("\n"));

    // A user's extension is found in the database (198 is a user, not registered: 480), and a
    // request URI written to change the query is no user (the pool answers it: 404).
    assert_eq!(invite("198"), 480, "a user who is not registered");
    let hostile = invite("x'OR'1'='1");
    eprintln!("INVITE sip:x'OR'1'='1@edge: {hostile}");
    assert_eq!(hostile, 404, "a request URI with SQL in it was taken for a user");

    // Nothing left to do: the same users, nothing to reload.
    let out = astrtc().args(["apply", "--spec"]).arg(&spec).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("astrtc apply again:\n{stdout}");
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("(0 added, 0 removed, 0 password(s) changed, 0 max_contacts changed, 0 transport(s) changed)"),
        "{stdout}"
    );
    assert!(stdout.contains("pool: asterisk-1, asterisk-2 unchanged"), "{stdout}");
    // The same members: the dispatcher is not reloaded (a reload would reset what its probes
    // and failovers learnt about each member).
    assert!(!stdout.contains("dispatcher reloaded"), "{stdout}");

    // A change only an edge restart applies (the probe interval, in kamailio.cfg): announced,
    // refused without --yes and a terminal (exit 2, the edge untouched), done with --yes.
    let text = std::fs::read_to_string(&spec).unwrap();
    let edited = text.replacen("probe_seconds = 1\n", "probe_seconds = 2\n", 1);
    assert_ne!(edited, text, "the spec has no probe_seconds = 1");
    std::fs::write(&spec, edited).unwrap();
    let out = astrtc().args(["apply", "--spec"]).arg(&spec).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("astrtc apply (probe interval changed):\n{stdout}");
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("only a restart applies") && stdout.contains("edge ("), "{stdout}");
    assert!(stdout.contains("closes every browser's WebSocket"), "{stdout}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(started_and_pid(&edge), edge_before, "the edge was restarted without --yes");
    let started = Instant::now();
    let out = astrtc().args(["apply", "--yes", "--spec"]).arg(&spec).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("astrtc apply --yes ({:.1?}):\n{stdout}", started.elapsed());
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("restarted: every service healthy"), "{stdout}");
    let edge_now = container_of(&stack, "edge");
    assert_ne!(started_and_pid(&edge_now), edge_before, "the edge was not restarted");
    assert!(stdout.contains("pool: asterisk-1, asterisk-2 unchanged"), "{stdout}");
    assert_eq!(register("3003", new_3003), 200, "3003 could not register through the restarted edge");
}

/// Calls to the echo extension through the edge, one after another; the calls each pool member
/// took, by name (asserting each call echoed).
fn echo_calls(stack: &Stack, members: &[&str], n: usize) -> Vec<(String, u64)> {
    let rt = runtime();
    let shared = SharedMedia::new().unwrap();
    let echo = stack.plan.dialplan.echo_extension.clone();
    let before: Vec<u64> = members.iter().map(|m| stack.processed(m)).collect();
    for i in 0..n {
        let report = rt.block_on(probe::call(&stack.sip_setup("3001", &echo, Duration::from_secs(2)), &shared));
        if !report.healthy() {
            stack.save_logs("cluster_grow");
        }
        assert_echoed(&format!("call {}", i + 1), &report, 50);
    }
    members.iter().zip(before).map(|(m, b)| (m.to_string(), stack.processed(m) - b)).collect()
}

#[test]
fn a_member_added_or_removed_by_apply_changes_the_pool_and_nothing_else() {
    let Some(stack) = Stack::start("grow", |s| s) else { return };
    let rt = runtime();
    let spec = stack.dir.path().join("astrtc.toml");
    let apply = |yes: bool| {
        let mut cmd = astrtc();
        cmd.arg("apply");
        if yes {
            cmd.arg("--yes");
        }
        let started = Instant::now();
        let out = cmd.arg("--spec").arg(&spec).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("astrtc apply{} ({:.1?}):\n{stdout}", if yes { " --yes" } else { "" }, started.elapsed());
        (out.status.code(), stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let set_pool_size = |n: u32| {
        let text = std::fs::read_to_string(&spec).unwrap();
        let edited: Vec<String> = text
            .lines()
            .map(|l| if l.starts_with("pool_size = ") { format!("pool_size = {n}") } else { l.to_string() })
            .collect();
        let edited = edited.join("\n") + "\n";
        assert!(edited.contains(&format!("\npool_size = {n}\n")), "pool_size not set to {n}: {edited}");
        std::fs::write(&spec, edited).unwrap();
    };

    // Before: a WebSocket registered at the edge, a call held through the edge to the pool, the
    // edge's container as it started.
    let Before { mut ws, edge, edge_before, held } = stack.before_a_change(&rt, "3002", Duration::from_secs(20));

    let others = ["db", "relay", "asterisk-1", "asterisk-2"];
    let others_before: Vec<String> = others.iter().map(|s| started_and_pid(&container_of(&stack, s))).collect();
    // A third member: started, and the edge's dispatcher reloads its list — nothing restarts, so
    // no --yes is needed (without a terminal a restart would be refused with exit 2).
    set_pool_size(3);
    let third = plan_for(&spec, astrtc::plan::HostFacts::detect()).unwrap().cluster.unwrap().members[2].clone();
    let (code, stdout, stderr) = apply(false);
    assert_eq!(code, Some(0), "apply refused or failed: {stdout}{stderr}");
    assert!(!stdout.contains("only a restart applies"), "{stdout}");
    assert!(stdout.contains("starting the new pool member(s) asterisk-3"), "{stdout}");
    assert!(stdout.contains("edge: unchanged, not restarted"), "{stdout}");
    let uri = format!("sip:{}:{}", third.address, stack.plan.network.sip_port);
    assert!(
        stdout.contains(&format!("edge: its dispatcher reloaded the pool in place (added {uri}; removed none)")),
        "{stdout}"
    );
    // The moment apply returns, the new member is active in the edge's dispatcher: no
    // health-check interval to wait for (compose waited for it to be healthy first).
    let flags = stack.flags_of(third.address);
    eprintln!("asterisk-3 in the edge's dispatcher as apply returned: {flags:?}; all: {:?}", stack.dispatcher_flags());
    assert!(
        flags.starts_with('A'),
        "asterisk-3 is not active in the edge's dispatcher: {:?}",
        stack.dispatcher_flags()
    );
    // And the reloaded pool is probed (`P`), the new member with the others.
    let probed = wait_until(Duration::from_secs(10), || {
        let pool = stack.dispatcher_flags();
        pool.len() == 3 && pool.iter().all(|(_, f)| f == "AP")
    });
    eprintln!("every member probed (AP) {probed:?} after apply returned: {:?}", stack.dispatcher_flags());
    assert!(probed.is_some(), "the reloaded pool is not probed: {:?}", stack.dispatcher_flags());
    let taken = echo_calls(&stack, &["asterisk-1", "asterisk-2", "asterisk-3"], 12);
    eprintln!("12 echo calls after the member was added: {taken:?}");
    for (m, n) in &taken {
        assert!(*n >= 2, "{m} took {n} of 12 calls: {taken:?}");
    }

    // Nothing else restarted: the database, the relay, the two members (same container, start and
    // PID), the edge (the same, and the WebSocket still answered) and the call held through it all.
    let others_after: Vec<String> = others.iter().map(|s| started_and_pid(&container_of(&stack, s))).collect();
    assert_eq!(others_before, others_after, "one of {others:?} was restarted");
    assert_eq!(container_of(&stack, "edge"), edge, "the edge container was replaced");
    assert_eq!(started_and_pid(&edge), edge_before, "the edge was restarted");
    assert_eq!(ws.register(), Ok(200), "the WebSocket opened before apply was closed");
    let held = rt.block_on(held).unwrap();
    if !held.healthy() {
        stack.save_logs("cluster_grow");
    }
    // 20 s at 50 packets a second: a gap of 1 s or more would fail this.
    assert_echoed("call held across apply", &held, 950);

    // Back to two: before apply, verify names the member the spec no longer has.
    set_pool_size(2);
    let (_, report) = verify(&stack, &[]);
    let (status, detail) = check_of(&report, "pool");
    eprintln!("verify before apply: pool {status}: {detail}");
    assert_eq!(status, "fail", "{detail}");
    assert!(detail.contains(&uri), "{detail}");
    // Removing a member stops it (a drain): announced, refused without --yes, done with it.
    let (code, stdout, stderr) = apply(false);
    assert_eq!(code, Some(2), "a member was removed without --yes: {stdout}{stderr}");
    assert!(stdout.contains("asterisk-3: no longer in the spec"), "{stdout}");
    assert_eq!(stack.flags_of(third.address).get(..1), Some("A"), "asterisk-3 left the dispatcher without --yes");
    let (code, stdout, stderr) = apply(true);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("edge: its dispatcher reloaded the pool in place (added none; removed {uri})")),
        "{stdout}"
    );
    let pool = stack.dispatcher_flags();
    assert_eq!(pool.len(), 2, "{pool:?}");
    assert!(pool.iter().all(|(_, f)| f.starts_with('A')), "{pool:?}");
    let ps = stack.project.run(&["ps", "--all", "--format", "{{.Service}}"]);
    assert!(!String::from_utf8_lossy(&ps.stdout).contains("asterisk-3"), "asterisk-3 was not removed");
    assert_eq!(started_and_pid(&edge), edge_before, "removing a member restarted the edge");
    assert_eq!(ws.register(), Ok(200), "removing a member closed the WebSocket");
    let taken = echo_calls(&stack, &["asterisk-1", "asterisk-2"], 4);
    assert_eq!(taken.iter().map(|(_, n)| n).sum::<u64>(), 4, "{taken:?}");
}

/// A member that stops answering (paused: no reply, no ICMP, as a hung or unplugged server) with
/// the probes far apart: the call the dispatcher gives it times out at the edge (tm's 5 s
/// `fr_timer`) and fails over to the next member; the failover marks it inactive, so the calls
/// after it go straight to the other. Every call succeeds.
#[test]
fn a_member_that_stops_answering_fails_its_call_over_and_every_call_succeeds() {
    let Some(stack) = Stack::start("failover", |s| {
        assert!(s.contains("probe_seconds = 1\n"), "the fixture's probe_seconds line was not found");
        s.replace("probe_seconds = 1\n", "probe_seconds = 60\n")
    }) else {
        return;
    };
    let members = stack.cluster().members.clone();
    let echo = stack.plan.dialplan.echo_extension.clone();
    let rt = runtime();
    let shared = SharedMedia::new().unwrap();
    // The edge restarted now, so that its next probe is a minute away: none can mark the frozen
    // member before a call does.
    let out = stack.project.run(&["restart", "edge"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = stack.project.run(&["up", "-d", "--wait", "--wait-timeout", "60", "edge"]);
    assert!(out.status.success(), "the edge did not come back: {}", String::from_utf8_lossy(&out.stderr));
    let restarted = Instant::now();
    stack.wait_all_active();
    let (hung, other) = (&members[0], &members[1]);
    let container = container_of(&stack, &hung.name);
    let before = stack.processed(&other.name);
    let out = Command::new("docker").args(["pause", &container]).output().unwrap();
    assert!(out.status.success(), "docker pause: {}", String::from_utf8_lossy(&out.stderr));
    struct Unpause(String);
    impl Drop for Unpause {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["unpause", &self.0]).output();
        }
    }
    let _unpause = Unpause(container);

    // Four calls, one after another: round robin gives the hung member one of the first two.
    for i in 0..4 {
        let started = Instant::now();
        let report = rt.block_on(probe::call(&stack.sip_setup("3001", &echo, Duration::from_secs(2)), &shared));
        eprintln!("call {} took {:.1?} in all", i + 1, started.elapsed());
        if !report.healthy() {
            stack.save_logs("cluster_failover");
        }
        assert_echoed(&format!("call {} with {} hung", i + 1, hung.name), &report, 50);
    }
    let flags = stack.dispatcher_flags();
    eprintln!(
        "the calls were over {:.1?} after the edge's restart (its first probe comes at 60 s)",
        restarted.elapsed()
    );
    let log = edge_log(&stack);
    let failovers: Vec<&str> = log.lines().filter(|l| l.contains("astrtc: pool member ")).collect();
    eprintln!("the edge's failovers: {failovers:#?}\nthe dispatcher: {flags:?}");
    let want = format!("astrtc: pool member sip:{}:", hung.address);
    assert_eq!(
        failovers.iter().filter(|l| l.contains(&want) && l.contains("(408)")).count(),
        1,
        "not exactly one call failed over from {} after a timeout: {failovers:#?}",
        hung.name
    );
    assert_eq!(failovers.len(), 1, "another member failed a call: {failovers:#?}");
    // Marked inactive by the failover itself: the next probe is up to 60 s away.
    assert!(stack.flags_of(hung.address).starts_with('I'), "{} is still active: {flags:?}", hung.name);
    assert_eq!(stack.processed(&other.name) - before, 4, "{} did not answer every call", other.name);
}

/// The edge's bans outlive a restart and a kill: each written to the database as it is made, read
/// back with its expiry as the edge starts.
#[test]
fn the_edges_bans_outlive_its_restart() {
    use crate::common::attacker::Peer;
    use crate::common::sip::{options_over_udp, Registrar};
    let Some([guesser, bystander, second]) = peers_first(["keep", "other", "kill"]) else { return };
    const BAN_SECONDS: u64 = 600;
    let Some(stack) = Stack::start("banstay", |s| {
        format!("{s}\n[security]\nban_after = 2\nfind_seconds = 60\nban_seconds = {BAN_SECONDS}\n")
    }) else {
        return;
    };
    let (sip, domain) = (stack.plan.network.sip_port, stack.plan.tls.domain.clone());
    let options = |peer: &Peer| {
        let to = peer.to(sip);
        peer.run(move || options_over_udp(to, Duration::from_secs(2)))
    };
    // Wrong passwords over UDP until the edge stops answering: exactly 2 answered.
    let guess = |peer: &Peer| {
        let to = peer.to(sip);
        let domain = domain.clone();
        peer.run(move || {
            let mut session = Registrar::udp(to, &domain, "3001", "wrong-password-xxxxxxxx").unwrap();
            (0..10).take_while(|_| session.register().is_ok()).count()
        })
    };
    let rows = || stack.sql("SELECT key_name || ' ' || (expires - extract(epoch FROM now())::int) FROM htable");
    assert!(options(&guesser).is_some(), "the edge does not answer the guesser before any guess");
    assert_eq!(guess(&guesser), 2, "wrong passwords answered before the ban");
    assert!(options(&guesser).is_none(), "the guesser is not banned");
    assert!(options(&bystander).is_some(), "the bystander is not answered");
    // The ban is in the database as soon as it is made (the edge still runs).
    let written = rows();
    eprintln!("htable rows while the edge runs (address, seconds left): {written:?}");
    assert!(written.contains(&guesser.ip.to_string()), "the ban was not written as it was made: {written:?}");

    // The edge restarts (docker compose stop, then up).
    let edge = container_of(&stack, "edge");
    let before = started_and_pid(&edge);
    // The edge stops within its grace period (compose's 5 s) by itself — exit 0, not Docker's
    // SIGKILL (137): Kamailio's shutdown (dialogs, registrations) runs.
    let stopping = Instant::now();
    let out = stack.project.run(&["stop", "edge"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exit = Command::new("docker").args(["inspect", "-f", "{{.State.ExitCode}}", &edge]).output().unwrap();
    let exit = String::from_utf8_lossy(&exit.stdout).trim().to_string();
    eprintln!("the edge stopped in {:.1?}, exit code {exit}", stopping.elapsed());
    assert_eq!(exit, "0", "the edge did not shut down by itself (137: killed at the end of its grace period)");
    let out = stack.project.run(&["up", "-d", "--wait", "--wait-timeout", "60", "edge"]);
    assert!(out.status.success(), "the edge did not come back: {}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(started_and_pid(&container_of(&stack, "edge")), before, "the edge did not restart");
    let after = rows();
    eprintln!("htable rows after the restart (address, seconds left): {after:?}");
    if !after.contains(&guesser.ip.to_string()) {
        stack.save_logs("cluster_banstay");
    }
    assert!(after.contains(&guesser.ip.to_string()), "the ban is not in the database: {after:?}");
    // The bystander is answered by the new edge; the guesser still is not.
    let back = wait_until(Duration::from_secs(10), || options(&bystander).is_some());
    assert!(back.is_some(), "the restarted edge does not answer the bystander");
    assert!(options(&guesser).is_none(), "the restart lifted the guesser's ban");
    let ipban = || stack.exec("edge", &["kamcmd", "-s", "unix:/run/kamailio/kamailio_ctl", "htable.dump", "ipban"]);
    let banned = ipban();
    eprintln!("the restarted edge's ipban: {}", banned.split_whitespace().collect::<Vec<_>>().join(" "));
    assert!(banned.contains(&guesser.ip.to_string()), "the restarted edge has no ban for the guesser: {banned}");

    // A second guesser is banned by the restarted edge, which is then killed (SIGKILL: no
    // shutdown at all) and started again: both bans hold.
    assert_eq!(guess(&second), 2, "wrong passwords answered before the second ban");
    assert!(options(&second).is_none(), "the second guesser is not banned");
    let edge = container_of(&stack, "edge");
    let out = Command::new("docker").args(["kill", "--signal", "KILL", &edge]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = stack.project.run(&["up", "-d", "--wait", "--wait-timeout", "60", "edge"]);
    assert!(out.status.success(), "the killed edge did not come back: {}", String::from_utf8_lossy(&out.stderr));
    let back = wait_until(Duration::from_secs(10), || options(&bystander).is_some());
    assert!(back.is_some(), "the edge started after the kill does not answer the bystander");
    let banned = ipban();
    eprintln!(
        "the ipban of the edge started after the kill: {}",
        banned.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    for (who, peer) in [("the first guesser", &guesser), ("the second guesser", &second)] {
        assert!(options(peer).is_none(), "the kill lifted {who}'s ban");
        assert!(
            banned.contains(&peer.ip.to_string()),
            "the edge started after the kill has no ban for {who}: {banned}"
        );
    }
}

#[test]
fn a_user_is_refused_over_a_transport_the_spec_does_not_give_it() {
    use crate::common::sip::Registrar;
    // (3002 may hold two registrations: one over its old transport, one over its new.)
    let Some(stack) = Stack::start("transport", |s| {
        s.replacen("id = \"3002\"\nkind = \"sip\"\n", "id = \"3002\"\nkind = \"sip\"\nmax_contacts = 2\n", 1)
    }) else {
        return;
    };
    let domain = stack.plan.tls.domain.clone();
    let udp = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    let wss = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.wss_port);
    let ca = stack.ca_pem();
    let over_udp =
        |user: &str| Registrar::udp(udp, &domain, user, &stack.password(user)).and_then(|mut r| r.register());
    let over_wss =
        |user: &str| Registrar::open(wss, &domain, &ca, user, &stack.password(user)).and_then(|mut r| r.register());
    // Each user over its own transport registers; over another one, with the right password, it
    // gets 403 and is not registered: the TLS phone 3010 over UDP, the browser 199 over UDP, the
    // UDP phone 3001 over WSS.
    assert_eq!(over_udp("3001"), Ok(200), "3001 over UDP (its transport)");
    assert_eq!(over_wss("199"), Ok(200), "199 over WSS (its transport)");
    for (user, how, status) in
        [("3010", "UDP", over_udp("3010")), ("199", "UDP", over_udp("199")), ("3001", "WSS", over_wss("3001"))]
    {
        eprintln!("{user} registering over {how}: {status:?}");
        assert_eq!(status, Ok(403), "{user} registering over {how}, a transport the spec does not give it");
    }
    // The browser over SIP-TLS (a port for phones) is refused as well.
    let edge_tls = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_tls_port);
    let mut tls = SipConnection::tls(edge_tls, &domain, &ca).expect("a TLS connection to the edge");
    let answer =
        register_over(&mut tls, edge_tls, "199", &stack.password("199"), "sip:199@10.77.0.9:5061;transport=tls");
    eprintln!("199 registering over TLS: {}", answer.lines().next().unwrap_or_default());
    assert!(answer.starts_with("SIP/2.0 403"), "199 registering over TLS got: {answer}");
    let rows = stack.sql("SELECT username || ' ' || contact FROM location ORDER BY username");
    eprintln!("location: {rows:?}");
    let of = |user: &str| rows.lines().filter(|l| l.starts_with(&format!("{user} "))).collect::<Vec<_>>();
    assert!(of("3010").is_empty(), "3010 was registered over UDP: {rows}");
    assert!(of("3001").iter().all(|l| !l.contains("transport=ws")), "3001 was registered over WSS: {rows}");
    assert!(of("199").len() == 1 && of("199")[0].contains("transport=ws"), "199 is not only its WSS contact: {rows}");
    // Nor can a user call over the wrong one: the TLS phone's INVITE over UDP (its offer's SDES
    // keys in the clear) gets 403 once its credentials are checked.
    let mut call =
        RawDialog::invite(udp, &domain, "3010", &stack.password("3010"), &stack.plan.dialplan.echo_extension);
    let answer = call.final_answer();
    eprintln!("3010 calling over UDP: {}", answer.lines().next().unwrap_or_default());
    assert!(answer.starts_with("SIP/2.0 403"), "3010 calling over UDP got: {answer}");

    // The spec moves 3002 from UDP to TLS while a UDP phone is registered as 3002: `astrtc apply`
    // says so, and the edge no longer rings that registration (the caller gets 480, nothing
    // reaches the phone) nor takes 3002 over UDP again.
    let phone = local_socket(Duration::from_secs(3));
    let contact = format!("sip:3002@{}", phone.local_addr().unwrap());
    let answer = register_from(&phone, udp, "3002", &stack.password("3002"), &contact);
    assert!(answer.starts_with("SIP/2.0 200"), "3002 over UDP before the change: {answer}");
    let spec = stack.dir.path().join("astrtc.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    let edited =
        text.replacen("id = \"3002\"\nkind = \"sip\"\n", "id = \"3002\"\nkind = \"sip\"\ntransport = \"tls\"\n", 1);
    assert_ne!(edited, text, "the spec edit did not take");
    std::fs::write(&spec, edited).unwrap();
    let out = astrtc().args(["apply", "--spec"]).arg(&spec).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("astrtc apply:\n{stdout}");
    assert!(out.status.success(), "apply failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 transport(s) changed: 3002)"), "{stdout}");
    let mut call = RawDialog::invite(udp, &domain, "3001", &stack.password("3001"), "3002");
    let answer = call.final_answer();
    eprintln!("a call to 3002, registered over UDP only: {}", answer.lines().next().unwrap_or_default());
    let reached = next_request(&phone, Duration::from_secs(2));
    assert!(reached.is_none(), "the call reached 3002's UDP registration: {reached:?}");
    assert!(answer.starts_with("SIP/2.0 480"), "a call to 3002 registered over UDP only got: {answer}");
    let answer = register_from(&phone, udp, "3002", &stack.password("3002"), &contact);
    assert!(answer.starts_with("SIP/2.0 403"), "3002 over UDP after the change: {answer}");
    // 3002 registers over TLS as well: a call rings that registration, and still not the UDP one.
    let mut tls_phone = SipConnection::tls(edge_tls, &domain, &ca).expect("a TLS connection to the edge");
    let tls_contact = "sip:3002@10.77.0.8:5061;transport=tls";
    let answer = register_over(&mut tls_phone, edge_tls, "3002", &stack.password("3002"), tls_contact);
    assert!(answer.starts_with("SIP/2.0 200"), "3002 over TLS after the change: {answer}");
    let _ringing = RawDialog::invite(udp, &domain, "3001", &stack.password("3001"), "3002");
    let invite = loop {
        match tls_phone.next(Duration::from_secs(5)).expect("the TLS connection stays open") {
            Some(m) if m.starts_with("INVITE ") => break Some(m),
            Some(_) => continue,
            None => break None,
        }
    };
    eprintln!("3002's TLS registration got: {:?}", invite.as_deref().and_then(|m| m.lines().next()));
    assert!(invite.is_some(), "a call to 3002 did not ring its TLS registration");
    let reached = next_request(&phone, Duration::from_secs(2));
    assert!(reached.is_none(), "the call reached 3002's UDP registration too: {reached:?}");
    // A user the database has no astrtc_user row for (written by hand) is refused, not let
    // through over any transport.
    stack.sql("DELETE FROM astrtc_user WHERE username = '3001'");
    assert_eq!(over_udp("3001"), Ok(500), "3001 without its astrtc_user row");
    let log = edge_log(&stack);
    // (Counted once per request, by the log prefix's method, CSeq and Call-ID: a retransmission
    // of one is logged again.)
    let once = |what: &[&str]| -> Vec<&str> {
        let mut requests: Vec<&str> = log
            .lines()
            .filter(|l| what.iter().all(|w| l.contains(w)))
            .filter_map(|l| l.split_once('{')?.1.split_once('}'))
            .map(|(p, _)| p)
            .collect();
        requests.sort_unstable();
        requests.dedup();
        requests
    };
    let refused: &[&str] = &["astrtc: refused", "the spec gives it"];
    for (what, want) in [(refused, 6), (&["astrtc: not ringing 3002 "], 2), (&["has no row in astrtc_user"], 1)] {
        let requests = once(what);
        assert_eq!(requests.len(), want, "the edge did not log {what:?} once for each request: {requests:#?}");
    }
}

/// A user with `max_contacts = 2` and both taken: a refresh of one keeps both; a third device's
/// REGISTER is taken (200, not the registrar's 503) and the registration refreshed longest ago
/// makes room, as Asterisk's `remove_existing` does.
#[test]
fn a_new_device_past_max_contacts_replaces_the_one_refreshed_longest_ago() {
    use std::net::UdpSocket;
    let Some(stack) = stack_with_two_contacts_for_3001("room") else { return };
    let edge = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), stack.plan.network.sip_port);
    let password = stack.password("3001");
    let phones: Vec<UdpSocket> = (0..3).map(|_| local_socket(Duration::from_secs(5))).collect();
    let contact = |i: usize| format!("sip:3001@{}", phones[i].local_addr().unwrap());
    let register = |i: usize| {
        let answer = register_from(&phones[i], edge, "3001", &password, &contact(i));
        answer.lines().next().unwrap_or_default().to_string()
    };
    let registered = || {
        let rows = stack.sql("SELECT contact FROM location WHERE username = '3001' ORDER BY contact");
        let mut v: Vec<String> = rows.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        v.sort();
        v
    };
    let want = |ids: &[usize]| {
        let mut v: Vec<String> = ids.iter().map(|i| contact(*i)).collect();
        v.sort();
        v
    };
    // The registrar keeps whole seconds: registrations a second apart, so one is the oldest.
    let next_second = || {
        let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let start = now();
        assert!(wait_until(Duration::from_secs(3), || now() > start).is_some(), "the clock stood still");
    };
    assert_eq!(register(0), "SIP/2.0 200 OK", "the first device");
    next_second();
    assert_eq!(register(1), "SIP/2.0 200 OK", "the second device");
    assert_eq!(registered(), want(&[0, 1]));
    next_second();
    // At the limit, a refresh of a registered device needs no room: both stay, and the first is
    // now the one refreshed last.
    assert_eq!(register(0), "SIP/2.0 200 OK", "the first device's refresh");
    assert_eq!(registered(), want(&[0, 1]), "a refresh at the limit removed a registration");
    next_second();
    // A third device: taken, and the second (refreshed longest ago) makes room.
    let third = register(2);
    eprintln!("a third device with max_contacts = 2: {third}");
    if third != "SIP/2.0 200 OK" {
        stack.save_logs("cluster_room");
    }
    assert_eq!(third, "SIP/2.0 200 OK", "a new device past max_contacts was refused");
    let left = registered();
    if left != want(&[0, 2]) {
        // What the edge chose, and each registration's times as the database has them.
        stack.save_logs("cluster_room");
        let chose: Vec<String> =
            edge_log(&stack).lines().filter(|l| l.contains("makes room")).map(str::to_string).collect();
        let rows = stack.sql("SELECT contact, last_modified, expires, cseq FROM location WHERE username = '3001'");
        panic!(
            "not the registration refreshed longest ago made room: left {left:?}, want {:?} (devices 0, 1, 2: \
             {:?}); the edge: {chose:?}; the location table:\n{rows}",
            want(&[0, 2]),
            (0..3).map(contact).collect::<Vec<_>>()
        );
    }
    let log = edge_log(&stack);
    let made_room = log.matches("astrtc: 3001 has 2 registrations: the one refreshed longest ago makes room").count();
    assert_eq!(
        made_room, 1,
        "the edge made room {made_room} times for one new device (a refresh taken for a new one?)"
    );

    // Two new devices at once, both past the limit, in ten rounds: each is taken and the two are
    // what is left (the edge makes room for one REGISTER of a user at a time; without that, both
    // removed the same registration and the second save found no room: 503).
    // (Every device's socket is kept to the end: a port freed could come back as a new device's,
    // whose REGISTER would then be a registered contact's refresh.)
    let mut devices: Vec<UdpSocket> = Vec::new();
    for round in 0..10 {
        next_second();
        devices.extend((0..2).map(|_| local_socket(Duration::from_secs(5))));
        let pair = &devices[devices.len() - 2..];
        let contacts: Vec<String> = pair.iter().map(|p| format!("sip:3001@{}", p.local_addr().unwrap())).collect();
        // Both challenged, then both credentials sent at once (a device not challenged within
        // 10 s of the other does not hold it up: its answer fails the round).
        let arrived = (std::sync::Mutex::new(0), std::sync::Condvar::new());
        let together = || {
            let mut n = arrived.0.lock().unwrap();
            *n += 1;
            arrived.1.notify_all();
            let _ = arrived.1.wait_timeout_while(n, Duration::from_secs(10), |n| *n < 2).unwrap();
        };
        let answers: Vec<String> = std::thread::scope(|s| {
            let threads: Vec<_> = pair
                .iter()
                .zip(&contacts)
                .map(|(sock, contact)| {
                    let (password, together) = (&password, &together);
                    s.spawn(move || {
                        let answer = register_from_then(sock, edge, "3001", password, contact, together);
                        answer.lines().next().unwrap_or_default().to_string()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        eprintln!("two new devices at once, round {round}: {answers:?}");
        if answers.iter().any(|a| a != "SIP/2.0 200 OK") {
            stack.save_logs("cluster_room");
        }
        assert_eq!(answers, ["SIP/2.0 200 OK"; 2], "round {round}: two new devices at once past max_contacts");
        let mut both = contacts.clone();
        both.sort();
        assert_eq!(registered(), both, "round {round}: not the two new devices are left");
    }
    let made_room =
        edge_log(&stack).matches("astrtc: 3001 has 2 registrations: the one refreshed longest ago makes room").count();
    assert_eq!(made_room, 21, "the edge made room {made_room} times for 21 new devices");
}

/// Length of a UDP datagram of plain G.711 RTP in 20 ms packets (12 bytes of header and 160 of
/// audio), what baresip (g711 only) and the pool send; SRTP adds its authentication tag to it.
const PLAIN_G711_RTP: usize = 172;

/// The lengths of the UDP datagrams in a capture, as tcpdump reads it.
fn udp_lengths(pcap: &Path) -> Vec<usize> {
    let out = Command::new("tcpdump").args(["-n", "-r"]).arg(pcap).arg("udp").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit_once("UDP, length ").and_then(|(_, n)| n.trim().parse().ok()))
        .collect()
}

/// Two phones' namespaces (for a TLS and a UDP phone), each routed through the host (the relay's
/// media address is one of the host's), and a cluster; None after a SKIP.
fn phones_and_stack(test: &str) -> Option<(crate::common::attacker::Peer, crate::common::attacker::Peer, Stack)> {
    let [tls_net, udp_net] = peers_first(["tlsph", "udpph"])?;
    if let Some(why) = phone_tools_missing() {
        skip(&why);
        return None;
    }
    tls_net.route_all_to_host();
    udp_net.route_all_to_host();
    let stack = Stack::start(test, |s| s)?;
    Some((tls_net, udp_net, stack))
}

/// What the TLS phone's test needs beside Docker and namespaces, if anything is missing.
fn phone_tools_missing() -> Option<String> {
    [("/usr/bin/tcpdump", "tcpdump"), ("/usr/bin/baresip", "baresip-core")]
        .into_iter()
        .find(|(tool, _)| !Path::new(tool).exists())
        .map(|(tool, package)| format!("{tool} is not installed (Debian package {package}: make deps-audit)"))
}

#[test]
fn a_tls_phone_calls_the_pool_over_srtp_and_the_edge_takes_sip_only_on_its_ports() {
    use crate::common::attacker::Peer;
    use crate::common::phone::{cleartext_in, Capture, Phone};
    let Some((tls_net, udp_net, stack)) = phones_and_stack("tlsphone") else { return };
    let plan = &stack.plan;
    let art = artifacts("cluster-tls-phone");
    let ca = stack.dir.path().join("deploy/keys/ca.crt");
    let (domain, ca_pem) = (plan.tls.domain.clone(), stack.ca_pem());

    // A call to the echo extension from baresip in `peer` as `user`, everything on its link
    // captured: baresip's log, whether the call was established, the cleartext SIP in the
    // capture, its number of packets and the lengths of its UDP datagrams.
    let captured_call = |peer: &Peer, user: &str, transport: &str, port: u16, dir: &Path, seconds: u32| {
        let pcap = dir.join(format!("{user}.pcap"));
        let capture = Capture::start(peer, "ip", pcap.clone());
        let password = stack.password(user);
        let phone = Phone { peer, user, password: &password, server_port: port, transport, ca: &ca, dir };
        let (log, established) = phone.call(&plan.dialplan.echo_extension, seconds);
        std::fs::write(dir.join("baresip.log"), &log).unwrap();
        let (bytes, packets) = capture.finish();
        (log, established, cleartext_in(&bytes), packets, udp_lengths(&pcap))
    };

    // 1. 3010 (transport = "tls") registers over TLS and calls the echo extension (a pool
    //    member) with SRTP required.
    let (log, established, seen, packets, lengths) =
        captured_call(&tls_net, "3010", "tls", plan.network.sip_tls_port, &art, 6);
    if !established {
        stack.save_logs("cluster-tls-phone");
    }
    assert!(log.contains("200 OK"), "3010 did not register over TLS through the edge:\n{log}");
    assert!(established, "the call over TLS was not established:\n{log}");
    assert!(log.contains("SRTP is Enabled"), "the call's media was not SRTP:\n{log}");
    let rms = crate::clients::received_rms(&art);
    assert!(rms > 0.01, "the TLS phone heard silence from the echo (RMS {rms})");
    let plain = lengths.iter().filter(|&&n| n == PLAIN_G711_RTP).count();
    let srtp = lengths.iter().filter(|&&n| n > PLAIN_G711_RTP && n <= PLAIN_G711_RTP + 16).count();
    eprintln!(
        "TLS phone 3010 -> echo through the edge: echo RMS {rms:.3}; {packets} packets on its link, {} UDP: \
         {srtp} of SRTP's length (RTP + tag), {plain} of plain G.711 RTP's; cleartext SIP seen: {seen:?}",
        lengths.len()
    );
    assert!(srtp >= 100, "only {srtp} SRTP-sized datagrams on the TLS phone's link: {lengths:?}");
    assert_eq!(plain, 0, "plain G.711 RTP ({PLAIN_G711_RTP} bytes) on the TLS phone's link");
    assert!(seen.is_empty(), "cleartext SIP on the TLS phone's link: {seen:?}");

    // The twin: a UDP phone's call (3001), captured the same way, shows plain RTP and SIP.
    let twin = art.join("udp-twin");
    std::fs::create_dir_all(&twin).unwrap();
    let (log, established, seen, _, lengths) = captured_call(&udp_net, "3001", "udp", plan.network.sip_port, &twin, 3);
    assert!(established, "the UDP twin's call failed:\n{log}");
    let plain = lengths.iter().filter(|&&n| n == PLAIN_G711_RTP).count();
    eprintln!("the UDP twin (3001): {plain} datagrams of plain G.711 RTP, cleartext SIP seen: {seen:?}");
    assert!(plain >= 50, "the capture missed the UDP phone's plain RTP: {lengths:?}");
    assert!(seen.contains(&"INVITE sip:"), "the capture missed the UDP phone's SIP: {seen:?}");

    // 2. SIP over TCP on the SIP port: nothing listens (connection refused), from the host and
    //    from a peer.
    let sip_tcp = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), plan.network.sip_port);
    let refused = |r: std::io::Result<std::net::TcpStream>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => true,
        Err(e) => panic!("SIP over TCP to the edge failed otherwise than refused: {e}"),
        Ok(_) => false,
    };
    let limit = Duration::from_secs(5);
    assert!(refused(std::net::TcpStream::connect_timeout(&sip_tcp, limit)), "the edge takes TCP on {sip_tcp}");
    let to = udp_net.to(plan.network.sip_port);
    let from_peer = udp_net.run(move || std::net::TcpStream::connect_timeout(&to, limit));
    assert!(refused(from_peer), "the edge takes TCP on {to}");

    // 3. Raw SIP over TLS on the WSS port: the handshake completes (the socket is TLS) but an
    //    OPTIONS gets no answer; the same OPTIONS over TLS on the SIP-over-TLS port, and over a
    //    WebSocket on the WSS port, are answered.
    let host = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let (wss, sip_tls) = (host(plan.network.wss_port), host(plan.network.sip_tls_port));
    let raw_on_wss = options_over_new_connection(wss, Over::Tls(&domain, &ca_pem), Duration::from_secs(3));
    let raw_on_sip_tls = options_over_new_connection(sip_tls, Over::Tls(&domain, &ca_pem), Duration::from_secs(3));
    let ws_on_wss = options_over_new_connection(wss, Over::Wss(&domain, &ca_pem), Duration::from_secs(3));
    eprintln!("OPTIONS answered: raw TLS on the WSS port {raw_on_wss}, raw TLS on the SIP-TLS port {raw_on_sip_tls}, WebSocket on the WSS port {ws_on_wss}");
    assert!(!raw_on_wss, "raw SIP over TLS on the WSS port {wss} is answered");
    assert!(raw_on_sip_tls, "SIP over TLS on {sip_tls} is not answered");
    assert!(ws_on_wss, "SIP over a WebSocket on {wss} is not answered");

    // 4. `astrtc verify` checks the edge's SIP-over-TLS certificate as it does Asterisk's.
    let (_, report) = verify(&stack, &[]);
    let (status, detail) = check_of(&report, "sip tls");
    eprintln!("verify: sip tls {status}: {detail}");
    assert_eq!(status, "pass", "{detail}");
    assert!(detail.contains(&format!(":{}, certificate for {domain}", plan.network.sip_tls_port)), "{detail}");
}

#[test]
fn a_tls_phone_and_a_browser_call_each_other_with_sdes_on_one_side_and_dtls_on_the_other() {
    use crate::common::phone::Phone;
    if let Some(reason) = tools_missing().or_else(phone_tools_missing) {
        skip(&reason);
        return;
    }
    let Some([seat, tls_net]) = peers_first(["brow", "tlsph"]) else { return };
    seat.route_all_to_host();
    tls_net.route_all_to_host();
    let Some(stack) = Stack::start("tlsbrowser", |s| s) else { return };
    let art = artifacts("cluster-tls-phone-to-browser");
    let (_page_dir, page) = demo_page(&stack);
    let ca = stack.dir.path().join("deploy/keys/ca.crt");
    let home = browser_home(Some(&ca));
    let browsers = Browsers { stack: &stack, seat: &seat, home: home.path(), page: &page };
    let before: Vec<u64> = stack.cluster().members.iter().map(|m| stack.processed(&m.name)).collect();

    // The browser (198) answers one call; 3010 calls it over TLS with SRTP required.
    let callee = browser(&browsers, "198", None, 5, &art.join("browser"));
    let registered = wait_until(Duration::from_secs(30), || {
        stack.sql("SELECT count(*) FROM location WHERE username = '198'").trim() == "1"
    });
    assert!(registered.is_some(), "the browser never registered at the edge");
    let pw = stack.password("3010");
    let phone = Phone {
        peer: &tls_net,
        user: "3010",
        password: &pw,
        server_port: stack.plan.network.sip_tls_port,
        transport: "tls",
        ca: &ca,
        dir: &art,
    };
    let (log, established) = phone.call("198", 9);
    std::fs::write(art.join("baresip.log"), &log).unwrap();
    let (r, ok) = finish(callee);
    stack.save_logs("cluster-tls-phone-to-browser");
    let last = r["samples"].as_array().and_then(|s| s.last()).cloned().unwrap_or(Value::Null);
    eprintln!(
        "TLS phone 3010 -> browser 198: phone established {established}; browser ok {ok}, DTLS {}, codec {}, \
         packets received {}, sent {}",
        last["dtlsState"], last["codec"], last["packetsReceived"], last["packetsSent"]
    );
    assert!(established, "the TLS phone's call to the browser was not established:\n{log}");
    assert!(log.contains("SRTP is Enabled"), "the TLS phone's media was not SRTP:\n{log}");
    let rms = crate::clients::received_rms(&art);
    eprintln!("the TLS phone heard the browser at RMS {rms:.3}");
    assert!(ok, "the browser failed: {r:#}");
    assert_eq!(last["dtlsState"], "connected", "{last}");
    let received = last["packetsReceived"].as_u64().unwrap_or(0);
    assert!(received >= 100, "the browser received only {received} packets from the TLS phone");
    assert!(rms > 0.01, "the TLS phone heard silence from the browser (RMS {rms})");

    // The other way: the browser calls 3010, which answers on its TLS connection.
    let callee_dir = art.join("tls-callee");
    let child = answering(&stack, &Phone { dir: &callee_dir, ..phone }, 40);
    let (r, ok) = finish(browser(&browsers, "198", Some("3010"), 5, &art.join("browser-caller")));
    let log = Phone::stop(child);
    std::fs::write(callee_dir.join("baresip.log"), &log).unwrap();
    stack.save_logs("cluster-tls-phone-to-browser");
    let last = r["samples"].as_array().and_then(|s| s.last()).cloned().unwrap_or(Value::Null);
    let rms = crate::clients::decoded_rms(&callee_dir);
    eprintln!(
        "browser 198 -> TLS phone 3010: browser ok {ok}, DTLS {}, packets received {}; the phone heard RMS {rms:.3?}",
        last["dtlsState"], last["packetsReceived"]
    );
    assert!(ok, "the browser's call to the TLS phone failed: {r:#}");
    assert_eq!(last["dtlsState"], "connected", "{last}");
    let received = last["packetsReceived"].as_u64().unwrap_or(0);
    assert!(received >= 100, "the browser received only {received} packets from the TLS phone");
    let media = crate::common::phone::media_lines(&log);
    assert!(log.contains("Call established"), "the TLS phone did not answer the browser:\n{media}");
    assert!(log.contains("SRTP is Enabled"), "the TLS phone's media from the browser was not SRTP:\n{media}");
    assert!(rms.is_some_and(|rms| rms > 0.01), "the TLS phone heard silence from the browser (RMS {rms:?}):\n{media}");
    let after: Vec<u64> = stack.cluster().members.iter().map(|m| stack.processed(&m.name)).collect();
    assert_eq!(before, after, "a call between users went through the pool");
}

#[test]
fn a_tls_phone_and_a_udp_phone_call_each_other_with_srtp_on_the_tls_leg_and_rtp_on_the_other() {
    use crate::common::phone::Phone;
    let Some((tls_net, udp_net, stack)) = phones_and_stack("tlstoudp") else { return };
    let plan = &stack.plan;
    let art = artifacts("cluster-tls-phone-to-udp-phone");
    let ca = stack.dir.path().join("deploy/keys/ca.crt");
    let before: Vec<u64> = stack.cluster().members.iter().map(|m| stack.processed(&m.name)).collect();
    let (udp_pw, tls_pw) = (stack.password("3001"), stack.password("3010"));
    let dirs = ["tls-caller", "udp-callee", "udp-caller", "tls-callee"].map(|d| art.join(d));
    let phone = |tls: bool, dir: usize| Phone {
        peer: if tls { &tls_net } else { &udp_net },
        user: if tls { "3010" } else { "3001" },
        password: if tls { &tls_pw } else { &udp_pw },
        server_port: if tls { plan.network.sip_tls_port } else { plan.network.sip_port },
        transport: if tls { "tls" } else { "udp" },
        ca: &ca,
        dir: &dirs[dir],
    };
    // 3010 (TLS, SRTP required) calls 3001 (UDP); then 3001 calls 3010, whose answer comes back
    // over its TLS connection (the edge gives it the connection's alias, as a browser's).
    phone_calls_phone(&stack, &phone(true, 0), &phone(false, 1));
    phone_calls_phone(&stack, &phone(false, 2), &phone(true, 3));
    let after: Vec<u64> = stack.cluster().members.iter().map(|m| stack.processed(&m.name)).collect();
    assert_eq!(before, after, "a call between users went through the pool");
}

/// `phone` answering whatever call comes for `seconds`, once registered at the edge by this run of
/// baresip (a row an earlier run of the same user may have left is not it).
fn answering(stack: &Stack, phone: &crate::common::phone::Phone, seconds: u32) -> std::process::Child {
    let rows = || stack.sql(&format!("SELECT ruid FROM location WHERE username = '{}'", phone.user));
    let before = rows();
    let child = phone.answer(seconds);
    let registered = wait_until(Duration::from_secs(20), || {
        rows().lines().map(str::trim).any(|r| !r.is_empty() && before.lines().all(|b| b.trim() != r))
    });
    assert!(registered.is_some(), "{} ({}) never registered at the edge", phone.user, phone.transport);
    child
}

/// `callee` registers and answers; `caller` calls it for 9 s: both calls established, SRTP on
/// the TLS phone's leg only, each phone hearing the other's tone. On failure the message opens
/// with what each phone's link carried (media only: UDP but SIP and DNS), then each phone's log in one
/// line, so a cut log still shows which hop lost the media.
fn phone_calls_phone(stack: &Stack, caller: &crate::common::phone::Phone, callee: &crate::common::phone::Phone) {
    use crate::common::phone::{media_lines, media_summary, Capture};
    let what = format!("{} phone {} -> {} phone {}", caller.transport, caller.user, callee.transport, callee.user);
    // Media only: UDP but SIP (port 5080) and DNS.
    let capture = |phone: &crate::common::phone::Phone| {
        Capture::start(phone.peer, "udp and not port 5080 and not port 53", phone.dir.join("media.pcap"))
    };
    let captures = [capture(caller), capture(callee)];
    // (Answering for up to 45 s, stopped once the call is over: a slow registration on a loaded
    // host (up to 20 s) must not end it mid-call.)
    let answering = answering(stack, callee, 45);
    let (log, established) = caller.call(callee.user, 9);
    std::fs::write(caller.dir.join("baresip.log"), &log).unwrap();
    let callee_log = crate::common::phone::Phone::stop(answering);
    std::fs::write(callee.dir.join("baresip.log"), &callee_log).unwrap();
    stack.save_logs("cluster-tls-phone-to-udp-phone");
    let links: Vec<String> = captures
        .into_iter()
        .zip([("caller", caller), ("callee", callee)])
        .map(|(c, (who, phone))| {
            let ip = phone.peer.ip;
            let n = c.finish_counting(&[&format!("src host {ip}"), &format!("dst host {ip}")]);
            format!("the {who} sent {} and received {} media packets", n[0], n[1])
        })
        .collect();
    let (by_caller, by_callee) = (crate::clients::decoded_rms(caller.dir), crate::clients::decoded_rms(callee.dir));
    let facts = format!(
        "{what}: {}; the caller heard RMS {by_caller:.3?}, the callee {by_callee:.3?} (None: no decoded audio \
         dumped)\n  caller: {}\n  callee: {}",
        links.join(", "),
        media_summary(&log),
        media_summary(&callee_log)
    );
    eprintln!("{facts}");
    let logs = format!("the caller's media log:\n{}\nthe callee's:\n{}", media_lines(&log), media_lines(&callee_log));
    assert!(established, "{facts}\nthe call was not established:\n{log}");
    assert!(callee_log.contains("Call established"), "{facts}\nthe callee did not answer:\n{callee_log}");
    for (phone, log) in [(caller, &log), (callee, &callee_log)] {
        let srtp = log.contains("SRTP is Enabled");
        assert_eq!(
            srtp,
            phone.transport == "tls",
            "{facts}\nSRTP on the {} phone's leg: {srtp}:\n{log}",
            phone.transport
        );
    }
    for (who, rms) in [("caller", by_caller), ("callee", by_callee)] {
        assert!(rms.is_some_and(|rms| rms > 0.01), "{facts}\nthe {who} heard silence\n{logs}");
    }
}
