//! The bundled TURN relay — the compose `turn` service (Debian's coturn in `images/turn`) beside
//! Asterisk, rendered from the spec's `[turn]` — proven with real clients in networks the tests
//! build (`tests/common/netns.rs`: a client namespace behind a router namespace; traffic stays in
//! them and on this host):
//!
//! 1. the client reaches only the TURN ports (UDP to the RTP range dropped): without TURN the
//!    browser's ICE fails; with the credentials `astrtc turn-credentials` prints it connects
//!    through a relay candidate, DTLS, opus, audio both ways; `verify --call --relay` likewise;
//! 2. all UDP from the client dropped: TURN over TLS (`turns:`) carries the call (and TURN over
//!    UDP cannot: the negative twin);
//! 3. a symmetric NAT with UDP allowed: the call connects (the pair is reported);
//! 4. the server behind a cloud 1:1 NAT with `network.public_address`: Asterisk's candidates
//!    carry the public address and the browser connects without TURN (the unset case is
//!    `media::behind_a_one_to_one_nat_the_public_address_must_be_set_and_right`);
//! 5. an ACME renewal (Pebble) during a TURN-over-TLS call: new TLS connections get the new
//!    certificate, the call keeps its audio;
//!
//! and the relay is not open: loopback, private and other special peers are refused (Asterisk's
//! own address, inside a denied range, is allowed), nothing reaches a loopback service through
//! it, TCP relays are refused, a user over its quota is refused, expired or foreign credentials
//! are refused, and coturn listens on nothing but its TURN ports.
//!
//! Figures (ICE time to connected, candidate pairs, renewal times) are printed, not asserted.

use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use astrtc::media::probe::RelayProblem;
use astrtc::media::turn::{Allocation, Link, TurnError, TurnServer, TurnTransport};
use astrtc::media::{CallFailure, Leg};
use astrtc::plan::Plan;
use serde_json::Value;

use crate::clients::{artifacts, assert_media_flowed, browser_call, browser_home, tools_missing, BrowserCall};
use crate::common::docker::{deployment_with, ensure_guard, ensure_image, ensure_sidecar, ensure_turn, ComposeProject};
use crate::common::netns::{client_behind_nat, client_behind_nat_to_public_server, ClientNetwork, PUBLIC};
use crate::common::*;
use crate::media::{assert_healthy, check, failed, failure, remedy, verify_call, verify_call_held};

/// The name the deployments here carry in their certificate and clients in the namespaces
/// resolve (Chromium maps `localhost` to loopback, whatever the namespace's hosts file says).
const DOMAIN: &str = "pbx.astrtc.test";
/// The TURN secret of the host-alt-ports fixture's secrets file.
const SECRET: &str = "fixture-turn-shared-secret-0123456789abcdef";

/// A compose deployment (Asterisk and the bundled TURN relay) of the host-alt-ports fixture on
/// free ports, for clients in `net`.
struct Stack {
    // First: `docker compose down` runs in the directory, before it is removed.
    project: ComposeProject,
    dir: tempfile::TempDir,
    plan: Plan,
}

impl Stack {
    fn turn(&self) -> &astrtc::plan::TurnService {
        self.plan.turn.as_ref().unwrap()
    }

    fn logs(&self, service: &str) -> String {
        String::from_utf8_lossy(&self.project.run(&["logs", "--no-color", service]).stdout).into_owned()
    }

    fn container(&self, service: &str) -> String {
        String::from_utf8_lossy(&self.project.run(&["ps", "-q", service]).stdout).trim().to_string()
    }
}

/// The `[turn]` section of a test deployment: free ports, a relay range of its own, and the
/// server's address on `net`'s link as the one private peer the relay may reach.
fn turn_section(net: &ClientNetwork, extra: &str) -> String {
    let (port, tls_port, relay) = (ports::free_port(), ports::free_port(), ports::free_range(20));
    format!(
        "\n[turn]\nmode = \"bundled\"\nport = {port}\ntls_port = {tls_port}\nrelay_start = {relay}\nrelay_end = {}\n\
         allowed_peers = [\"{}\"]\n{extra}",
        relay + 19,
        net.host_link_addr
    )
}

/// Renders and starts the stack (`docker compose up -d --wait`): the spec edited by `edit`
/// (besides a project name of its own, the test domain and `[turn]`).
fn stack(net: &ClientNetwork, domain: &str, turn_extra: &str, edit: impl FnOnce(String) -> String) -> Option<Stack> {
    if docker_off() {
        return None;
    }
    let section = turn_section(net, turn_extra);
    let (dir, _) = deployment_with(|s| {
        let named = s.replace("name = \"astrtc-test\"", &format!("name = \"astrtc-turn-{}\"", ports::free_port()));
        edit(named.replace("domain = \"localhost\"", &format!("domain = \"{domain}\""))) + &section
    });
    let spec = dir.path().join("astrtc.toml");
    let plan = plan_for(&spec, astrtc::plan::HostFacts::detect()).unwrap();
    assert!(plan.turn.as_ref().is_some_and(|t| t.bundled.is_some()), "the stack has no bundled TURN");
    ensure_image();
    ensure_turn();
    if plan.guard.is_some() {
        ensure_guard();
    }
    if plan.tls.acme.is_some() {
        ensure_sidecar();
    }
    let project = ComposeProject { dir: dir.path().join("deploy") };
    let started = Instant::now();
    let up = project.run(&["up", "-d", "--wait"]);
    let stack = Stack { project, dir, plan };
    assert!(
        up.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&up.stderr),
        stack.logs("turn"),
        stack.logs("asterisk")
    );
    eprintln!("docker compose up --wait (Asterisk and TURN): {:.1?}", started.elapsed());
    Some(stack)
}

/// `astrtc turn-credentials --json`: the iceServers entry a browser gets.
fn ice_servers(stack: &Stack, user: &str) -> Value {
    let out = astrtc()
        .args(["turn-credentials", "--spec"])
        .arg(stack.dir.path().join("astrtc.toml"))
        .args(["--user", user, "--ttl", "10m", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The entry with only the URLs that start with `scheme` and carry `transport`.
fn only(entry: &Value, scheme: &str, transport: &str) -> String {
    let mut e = entry.clone();
    let urls: Vec<Value> = e["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u.as_str().unwrap().starts_with(scheme) && u.as_str().unwrap().ends_with(transport))
        .cloned()
        .collect();
    assert_eq!(urls.len(), 1, "{entry}");
    e["urls"] = Value::Array(urls);
    e.to_string()
}

/// The demo phone in Chromium inside `net`: 199 calls the echo extension for 3 s.
fn browser(stack: &Stack, net: &ClientNetwork, ice: Option<&str>, name: &str) -> (Value, bool) {
    let home = browser_home(Some(&stack.dir.path().join("deploy/keys/ca.crt")));
    let art = artifacts(name);
    let (r, ok, took) = browser_call(&BrowserCall {
        plan: &stack.plan,
        home: home.path(),
        user: "199",
        target: &stack.plan.dialplan.echo_extension,
        seconds: 3,
        artifacts: &art,
        netns: Some(&net.client_ns),
        map_host: None,
        ice_servers: ice,
    });
    std::fs::write(art.join("asterisk.log"), stack.logs("asterisk")).unwrap();
    std::fs::write(art.join("turn.log"), stack.logs("turn")).unwrap();
    let pair = &r["pair"];
    eprintln!(
        "browser {name}: ok {ok}, ICE {:?} (connected {} ms after the call started), pair {} {}:{} ({}) -> {} {}:{}, \
         {took:.1?}",
        r["iceStates"].as_array().map(|a| a.iter().map(|s| s["state"].as_str().unwrap_or("")).collect::<Vec<_>>()),
        r["iceConnectedMs"].as_f64().map(|v| format!("{v:.0}")).unwrap_or("-".into()),
        pair["local"]["type"],
        pair["local"]["address"],
        pair["local"]["port"],
        pair["local"]["relayProtocol"],
        pair["remote"]["type"],
        pair["remote"]["address"],
        pair["remote"]["port"],
    );
    (r, ok)
}

/// A browser call that carried audio both ways through a relay it reached over `protocol`.
fn assert_relayed(r: &Value, protocol: &str) {
    assert_media_flowed(r, 3);
    let last = r["samples"].as_array().unwrap().last().unwrap();
    assert!(last["packetsSent"].as_u64().unwrap() > 100, "{last}");
    assert_eq!(r["pair"]["local"]["type"], "relay", "{r:#}");
    assert_eq!(r["pair"]["local"]["relayProtocol"], protocol, "{r:#}");
}

fn tools_ok() -> bool {
    if let Some(why) = tools_missing() {
        skip(&why);
        return false;
    }
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_reaches_only_the_turn_ports_gets_its_audio_through_the_relay() {
    if docker_off() || !tools_ok() {
        return;
    }
    let Some(net) = client_behind_nat().build() else { return };
    let Some(stack) = stack(&net, DOMAIN, "", |s| s) else { return };
    net.drop_udp(stack.plan.rtp.start, stack.plan.rtp.end);
    if !net.resolve(DOMAIN, net.server_addr) {
        return;
    }
    let host = net.server_addr.to_string();

    // astrtc's own call: fails the same way without the relay, passes through it.
    let (code, report) = verify_call(stack.dir.path(), &host, Some(&net), &["--endpoint", "199"]);
    assert_eq!(code, 1, "{report}");
    assert!(matches!(failure(check(&report, "call 199")), CallFailure::IceNotConnected { .. }));
    let (code, report) = verify_call(stack.dir.path(), &host, Some(&net), &["--endpoint", "199", "--relay"]);
    assert_eq!(code, 0, "{report}\n{}", stack.logs("turn"));
    let c = check(&report, "call 199");
    assert_healthy(c, Leg::Webrtc);
    let call = c.call.as_ref().unwrap();
    let relay = call.relay.as_ref().unwrap();
    assert_eq!((relay.server, relay.transport.as_str()), (SocketAddr::new(net.server_addr, stack.turn().port), "udp"));
    assert_eq!(call.pair.as_ref().unwrap().local.kind, "relay");
    // Asterisk offers its other addresses too; the relay may not reach them (403), which does
    // not stop the call.
    eprintln!("verify --relay: ICE {:?} ms, refused peers {:?}", call.ice_connected_ms, relay.refused);

    // The negative twin: no ICE servers, so only host candidates; the path drops UDP to the
    // RTP range: the call is answered, ICE fails.
    let (r, ok) = browser(&stack, &net, None, "turn-1-no-turn");
    assert!(!ok, "{r:#}");
    assert_eq!(r["iceFailed"], true, "{r:#}");
    assert!(r["errors"][0].as_str().unwrap().contains("ICE failed"), "{r:#}");
    let failed_after = r["iceStates"].as_array().unwrap().last().unwrap()["ms"].clone();
    eprintln!("without TURN: ICE failed {failed_after} ms after the call started");

    // With the credentials `astrtc turn-credentials` prints: a relayed pair, audio both ways.
    let entry = ice_servers(&stack, "browser-1");
    let (r, ok) = browser(&stack, &net, Some(&entry.to_string()), "turn-1-relay");
    assert!(ok, "{r:#}");
    assert_relayed(&r, "udp");
    assert_eq!(r["pair"]["remote"]["address"], net.host_link_addr.to_string(), "{r:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_all_udp_blocked_turn_over_tls_carries_the_call() {
    if docker_off() || !tools_ok() {
        return;
    }
    let Some(net) = client_behind_nat().dropping_all_udp().build() else { return };
    let Some(stack) = stack(&net, DOMAIN, "", |s| s) else { return };
    if !net.resolve(DOMAIN, net.server_addr) {
        return;
    }
    let host = net.server_addr.to_string();

    // The negative twin: TURN over UDP cannot get out.
    let (code, report) = verify_call(stack.dir.path(), &host, Some(&net), &["--endpoint", "199", "--relay"]);
    assert_eq!(code, 1, "{report}");
    let c = check(&report, "call 199");
    assert!(matches!(failure(c), CallFailure::Relay { problem: RelayProblem::Unreachable, .. }), "{c:#?}");
    assert!(remedy(c).contains("nothing answers TURN"), "{c:#?}");

    // TURN over TLS (turns:, the deployment's certificate), only that URL.
    let entry = ice_servers(&stack, "browser-2");
    let (r, ok) = browser(&stack, &net, Some(&only(&entry, "turns:", "tcp")), "turn-2-tls");
    assert!(ok, "{r:#}");
    assert_relayed(&r, "tls");

    for transport in ["tls", "tcp"] {
        let (code, report) = verify_call(
            stack.dir.path(),
            &host,
            Some(&net),
            &["--endpoint", "199", "--relay", "--relay-transport", transport],
        );
        // SIP over UDP cannot get out either: verify says so, and only that fails.
        assert_eq!((code, failed(&report)), (1, vec!["sip udp"]), "{report}\n{}", stack.logs("turn"));
        let c = check(&report, "call 199");
        assert_healthy(c, Leg::Webrtc);
        let call = c.call.as_ref().unwrap();
        assert_eq!(call.relay.as_ref().unwrap().transport, transport);
        eprintln!("verify --relay over {transport}: ICE connected {:?} ms", call.ice_connected_ms);
    }

    // The TLS port serves the deployment's certificate, verified for the domain against its CA,
    // with TLS 1.2 or 1.3 (the config turns 1.0 and 1.1 off; rustls offers neither anyway).
    let ca = std::fs::read_to_string(stack.dir.path().join("deploy/keys/ca.crt")).unwrap();
    let tls_addr = SocketAddr::new(net.server_addr, stack.turn().tls_port.unwrap());
    let tls = astrtc::verify::tls::check_tls(tls_addr, DOMAIN, &ca).unwrap();
    eprintln!("TURN over TLS: {}, certificate for {DOMAIN}", tls.protocol);
    assert!(["TLSv1_2", "TLSv1_3"].contains(&tls.protocol.as_str()), "{}", tls.protocol);
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_symmetric_nat_with_udp_allowed_the_call_connects() {
    if docker_off() || !tools_ok() {
        return;
    }
    // The router maps every flow to a new random port (nftables `snat ... fully-random`).
    let Some(net) = client_behind_nat().build() else { return };
    let Some(stack) = stack(&net, DOMAIN, "", |s| s) else { return };
    if !net.resolve(DOMAIN, net.server_addr) {
        return;
    }
    let entry = ice_servers(&stack, "browser-3");
    let (r, ok) = browser(&stack, &net, Some(&entry.to_string()), "turn-3-symmetric");
    assert!(ok, "{r:#}");
    assert_media_flowed(&r, 3);
    let (code, report) =
        verify_call(stack.dir.path(), &net.server_addr.to_string(), Some(&net), &["--endpoint", "199"]);
    assert_eq!(code, 0, "{report}");
    let c = check(&report, "call 199");
    assert_healthy(c, Leg::Webrtc);
    let pair = c.call.as_ref().unwrap().pair.clone().unwrap();
    eprintln!(
        "symmetric NAT: browser pair {} -> {}; verify --call pair {} -> {} (ICE {:?} ms)",
        r["pair"]["local"]["type"],
        r["pair"]["remote"]["type"],
        pair.local,
        pair.remote,
        c.call.as_ref().unwrap().ice_connected_ms
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_cloud_one_to_one_nat_asterisk_offers_the_public_address_and_needs_no_turn() {
    if docker_off() || !tools_ok() {
        return;
    }
    let Some(net) = client_behind_nat_to_public_server().build() else { return };
    let public = format!(
        "[network]\npublic_address = \"{PUBLIC}\"\nlocal_nets = [\"100.64.0.0/10\"]\nlocal_address = \"{}\"\n",
        net.host_link_addr
    );
    let Some(stack) = stack(&net, DOMAIN, "", |s| s.replacen("[network]\n", &public, 1)) else { return };
    if !net.resolve(DOMAIN, IpAddr::V4(PUBLIC)) {
        return;
    }
    // No ICE servers: the browser's only way is Asterisk's public candidate.
    let (r, ok) = browser(&stack, &net, None, "turn-4-one-to-one");
    assert!(ok, "{r:#}");
    assert_media_flowed(&r, 3);
    assert_eq!(r["pair"]["remote"]["address"], PUBLIC.to_string(), "{r:#}");
    let (code, report) = verify_call(stack.dir.path(), &PUBLIC.to_string(), Some(&net), &["--endpoint", "199"]);
    assert_eq!(code, 0, "{report}");
    let c = check(&report, "call 199");
    assert_healthy(c, Leg::Webrtc);
    let call = c.call.as_ref().unwrap();
    assert!(call.remote_candidates.iter().any(|k| k.addr.ip() == IpAddr::V4(PUBLIC)), "{call:?}");
    assert_eq!(call.pair.as_ref().unwrap().remote.addr.ip(), IpAddr::V4(PUBLIC));
    // coturn behind the same NAT reports its relayed addresses with the public address.
    let turn = std::fs::read_to_string(stack.dir.path().join("deploy/turn/turnserver.conf")).unwrap();
    assert!(turn.contains(&format!("external-ip={PUBLIC}/{}", net.host_link_addr)), "{turn}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acme_renewal_during_a_turn_over_tls_call_is_served_to_new_connections_and_the_call_keeps_its_audio() {
    if docker_off() {
        return;
    }
    let Some(pebble) = crate::common::pebble::pebble() else { return };
    let Some(net) = client_behind_nat().dropping_all_udp().build() else { return };
    // ACME mode against Pebble (HTTP-01 on Pebble's validation port, name localhost: Pebble
    // resolves it), the TURN service reading the certificate from the sidecar's volume.
    let acme = format!(
        "\n[tls.acme]\nemail = \"ops@example.test\"\ndirectory = \"{}\"\nca_bundle = \"{}\"\nhttp_port = {}\n",
        pebble.directory,
        pebble.dir.path().join("ca/ca.crt").display(),
        pebble.http01.port()
    );
    let Some(stack) = stack(&net, "localhost", "", |s| s.replace("[tls]\n", "[tls]\nmode = \"acme\"\n") + &acme) else {
        return;
    };
    let root = pebble.root_pem();
    let tls_addr = SocketAddr::new(net.server_addr, stack.turn().tls_port.unwrap());
    let served = || astrtc::verify::tls::check_tls(tls_addr, "localhost", &root).map(|r| r.leaf.serial);
    let before = served().unwrap_or_else(|e| panic!("TURN over TLS does not serve Pebble's certificate: {e:?}"));

    // A 25 s call through TURN over TLS from a network without UDP; the certificate is renewed
    // 5 s into it.
    let ca = stack.dir.path().join("pebble-root.pem");
    std::fs::write(&ca, &root).unwrap();
    let call = {
        let (dir, host, ca) = (stack.dir.path().to_path_buf(), net.server_addr.to_string(), ca.display().to_string());
        let net = &net;
        std::thread::scope(|scope| {
            let call = scope.spawn(move || {
                let extra = ["--endpoint", "199", "--relay", "--relay-transport", "tls", "--ca", ca.as_str()];
                verify_call_held(&dir, &host, Some(net), "25", &extra)
            });
            std::thread::sleep(Duration::from_secs(5));
            let issue = stack.project.run(&["exec", "-T", "certs", "astrtc", "certs", "issue", "--force"]);
            assert!(issue.status.success(), "{}", String::from_utf8_lossy(&issue.stderr));
            let renewed = Instant::now();
            let after = loop {
                match served() {
                    Ok(serial) if serial != before => break serial,
                    _ => {}
                }
                assert!(renewed.elapsed() < Duration::from_secs(30), "never served the renewed certificate");
                std::thread::sleep(Duration::from_millis(100));
            };
            eprintln!("TURN over TLS served the renewed certificate {:.1?} after `certs issue`", renewed.elapsed());
            assert_ne!(after, before);
            call.join().unwrap()
        })
    };
    let (code, report) = call;
    assert_eq!((code, failed(&report)), (1, vec!["sip udp"]), "{report}\n{}", stack.logs("turn"));
    let c = check(&report, "call 199");
    assert_healthy(c, Leg::Webrtc);
    let call = c.call.as_ref().unwrap();
    assert_eq!(call.relay.as_ref().unwrap().transport, "tls");
    let m = call.media.as_ref().unwrap();
    // 25 s of 20 ms packets, matched by their echo: the TLS connection and the allocation lived
    // through the reload.
    assert!(m.matched > 1000, "{m:?}");
    assert!(stack.logs("turn").contains("sent SIGUSR2 to coturn"), "{}", stack.logs("turn"));
    eprintln!("renewal during the call: {m:?}");
}

/// Credentials for `user` from the shared secret, `ttl` from `now`.
fn server(addr: SocketAddr, user: &str, secret: &str, ttl: Duration, now: SystemTime) -> TurnServer {
    let c = astrtc::turn::mint(secret, user, ttl, now);
    TurnServer { addr, username: c.username, password: c.password, transport: TurnTransport::Udp }
}

fn rejected(r: Result<Allocation, TurnError>) -> (u16, String) {
    match r {
        Err(TurnError::Rejected { code, reason, .. } | TurnError::Unauthorized { code, reason, .. }) => (code, reason),
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_is_not_open_loopback_private_peers_tcp_relays_and_users_over_quota_are_refused() {
    if docker_off() {
        return;
    }
    let Some(net) = client_behind_nat().build() else { return };
    let Some(stack) = stack(&net, DOMAIN, "user_quota = 2\n", |s| s) else { return };
    let addr = SocketAddr::new(net.server_addr, stack.turn().port);
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let bind = || async { tokio::net::UdpSocket::bind(SocketAddr::new(net.server_addr, 0)).await.unwrap() };

    let sock = bind().await;
    let mut alloc = Allocation::new(&mut Link::Udp(&sock), &server(addr, "probe", SECRET, hour, now)).await.unwrap();
    // Peers it must refuse: loopback, private, link-local, and CGNAT space other than the
    // server's own address (which is in 100.64.0.0/10 too, and allowed by turn.allowed_peers).
    let mut refusals = Vec::new();
    for peer in ["127.0.0.1", "127.0.0.53", "10.1.2.3", "172.17.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.99"] {
        let ip: IpAddr = peer.parse().unwrap();
        match alloc.permit(&mut Link::Udp(&sock), &[ip]).await {
            Err(TurnError::Rejected { code: 403, reason, .. }) => refusals.push(format!("{peer}: 403 {reason}")),
            other => panic!("the relay let us permit {peer}: {other:?}"),
        }
    }
    alloc.permit(&mut Link::Udp(&sock), &[net.server_addr]).await.expect("Asterisk's address is allowed");

    // Nothing reaches a loopback service through it (asked the server's HTTP port and a UDP
    // service of this test's own); the allowed address does get the datagram, so the silence
    // means something.
    let loopback = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    let allowed = StdUdpSocket::bind(SocketAddr::new(net.server_addr, 0)).unwrap();
    for s in [&loopback, &allowed] {
        s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    }
    let http = SocketAddr::from(([127, 0, 0, 1], stack.plan.network.http_port));
    for to in [http, loopback.local_addr().unwrap(), allowed.local_addr().unwrap()] {
        sock.send_to(&alloc.wrap(to, b"through the relay"), addr).await.unwrap();
    }
    let mut buf = [0u8; 64];
    let got = allowed.recv_from(&mut buf).expect("the allowed peer gets the relayed datagram");
    assert_eq!(&buf[..got.0], b"through the relay");
    assert_eq!(got.1.ip(), net.server_addr, "relayed from the server's address");
    assert!(loopback.recv_from(&mut buf).is_err(), "a loopback service got a datagram through the relay");

    // No TCP relays (RFC 6062): a connection to the HTTP port cannot even be asked for.
    let tcp_sock = bind().await;
    let (code, reason) = rejected(
        Allocation::with_protocol(&mut Link::Udp(&tcp_sock), &server(addr, "probe", SECRET, hour, now), 6).await,
    );
    assert_eq!(code, 442, "{reason}");
    refusals.push(format!("TCP relay allocation: {code} {reason}"));

    // Quota: user_quota = 2 allocations at once for one user.
    let quota = server(addr, "quota", SECRET, hour, now);
    let (s1, s2, s3) = (bind().await, bind().await, bind().await);
    let _a1 = Allocation::new(&mut Link::Udp(&s1), &quota).await.unwrap();
    let _a2 = Allocation::new(&mut Link::Udp(&s2), &quota).await.unwrap();
    let (code, reason) = rejected(Allocation::new(&mut Link::Udp(&s3), &quota).await);
    assert_eq!(code, 486, "{reason}");
    refusals.push(format!("third allocation of one user: {code} {reason}"));

    // Expired credentials, and credentials made with another secret.
    let s4 = bind().await;
    let expired = server(addr, "late", SECRET, hour, now - 2 * hour);
    let (code, reason) = rejected(Allocation::new(&mut Link::Udp(&s4), &expired).await);
    assert_eq!(code, 401, "{reason}");
    refusals.push(format!("credentials expired an hour ago: {code} {reason}"));
    let s5 = bind().await;
    let foreign = server(addr, "mallory", "not-the-shared-secret-of-this-server-0123", hour, now);
    let (code, reason) = rejected(Allocation::new(&mut Link::Udp(&s5), &foreign).await);
    assert_eq!(code, 401, "{reason}");
    refusals.push(format!("credentials from another secret: {code} {reason}"));
    eprintln!("refused:\n  {}", refusals.join("\n  "));

    // coturn listens on its TURN ports and nothing else (no CLI on 5766, no web admin); the
    // relay range holds the allocations' sockets.
    let pid =
        Command::new("docker").args(["inspect", "-f", "{{.State.Pid}}", &stack.container("turn")]).output().unwrap();
    let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
    let relay = stack.turn().bundled.as_ref().unwrap();
    let ss = Command::new("ss").args(["-Hlntup"]).output().unwrap();
    let mut listening: Vec<String> = String::from_utf8_lossy(&ss.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port: u16 = f.get(4)?.rsplit(':').next()?.parse().ok()?;
            let proto = f.first()?;
            (!(relay.relay_start..=relay.relay_end).contains(&port)).then(|| format!("{port}/{proto}"))
        })
        .collect();
    listening.sort();
    listening.dedup();
    let t = stack.turn();
    let mut want = vec![format!("{}/tcp", t.port), format!("{}/udp", t.port), format!("{}/tcp", t.tls_port.unwrap())];
    want.sort();
    assert_eq!(listening, want, "coturn listens on more than its TURN ports");
}

/// The TURN image: its size, its user, and that it refuses to start without its secret.
#[test]
fn the_turn_image_is_small_runs_as_its_own_user_and_needs_its_secret() {
    if docker_off() {
        return;
    }
    ensure_turn();
    let inspect = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Size}} {{.Config.User}}", astrtc::image::TURN_IMAGE])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout).trim().to_string();
    let (size, user) = text.split_once(' ').unwrap();
    let mb = size.parse::<f64>().unwrap() / 1e6;
    eprintln!("{}: {mb:.1} MB, user {user}", astrtc::image::TURN_IMAGE);
    assert_eq!(user, format!("{}:{}", astrtc::image::TURN_UID, astrtc::image::ASTERISK_UID));
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("turnserver.conf"), "listening-port=3478\n").unwrap();
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "none", "-v"])
        .arg(format!("{}:/etc/coturn:ro", empty.path().display()))
        .arg(astrtc::image::TURN_IMAGE)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth-secret is missing"));
}
