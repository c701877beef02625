//! Browsers and phones calling each other and the echo extension through the edge and the relay
//! (proofs 1, 2 and 16 to 18 in `cluster`'s doc).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use astrtc::media::probe::{self, CallFailure, CallSetup};
use astrtc::media::session::SharedMedia;
use serde_json::Value;

use crate::clients::{artifacts, browser_home, tools_missing};
use crate::common::*;

use super::{
    assert_echoed, check_of, container_of, edge_log, figures, local_socket, options_over_new_connection, peers_first,
    runtime, verify, wait_until, Over, Stack,
};

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
    let before: Vec<u64> = stack.members().iter().map(|m| stack.processed(&m.name)).collect();
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
    let after: Vec<u64> = stack.members().iter().map(|m| stack.processed(&m.name)).collect();
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
    let echoed: u64 = stack.members().iter().map(|m| stack.processed(&m.name)).sum::<u64>() - after.iter().sum::<u64>();
    assert_eq!(echoed, 1, "the echo call did not go to the pool");
}

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

/// Packets rtpengine has relayed in userspace since it started (its ng `statistics` command,
/// `totalstatistics.relayedpackets_user`; counted when a call ends).
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
    let members = stack.members();
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

/// The relay down (stopped with `docker stop`): a call through the edge, SIP or WebRTC, is
/// refused `503 Media Relay Unavailable` and no pool member is called — not set up with SDP the
/// relay never took (the pool's plain RTP answered to a browser, DTLS offered to the pool) — and
/// the edge logs why; once the relay is back and the edge's `rtpengine.ping` takes it in again,
/// a call is echoed.
#[test]
fn with_the_relay_down_a_call_is_refused_503_and_after_it_is_back_echoed() {
    let Some(stack) = Stack::start("relaydown", |s| s) else { return };
    let echo = stack.plan.dialplan.echo_extension.clone();
    let members: Vec<String> = stack.members().iter().map(|m| m.name.clone()).collect();
    let rt = runtime();
    let shared = SharedMedia::new().unwrap();
    let call = |setup: CallSetup| rt.block_on(probe::call(&setup, &shared));
    assert_echoed("before the relay stops", &call(stack.sip_setup("3001", &echo, Duration::from_secs(1))), 25);

    let relay = container_of(&stack, "relay");
    assert!(!relay.is_empty(), "no relay container");
    let stop = Command::new("docker").args(["stop", "-t", "5", &relay]).output().unwrap();
    assert!(stop.status.success(), "docker stop {relay}: {}", String::from_utf8_lossy(&stop.stderr));
    let taken_before: Vec<u64> = members.iter().map(|m| stack.processed(m)).collect();
    // The call before counted (the figure is read, not a parse failure's 0).
    assert!(taken_before.iter().sum::<u64>() >= 1, "no pool member counted the call before: {taken_before:?}");
    for (kind, setup) in [
        ("SIP", stack.sip_setup("3001", &echo, Duration::from_secs(1))),
        ("WebRTC", stack.webrtc_setup("199", &echo, Duration::from_secs(1))),
    ] {
        let report = call(setup);
        let refused = matches!(
            &report.failure,
            Some(CallFailure::Rejected { method, code: 503, reason, .. })
                if method == "INVITE" && reason == "Media Relay Unavailable"
        );
        if !refused {
            stack.save_logs("cluster_relay_down");
        }
        assert!(
            refused,
            "a {kind} call with the relay down was not refused 503 Media Relay Unavailable: {:?}\n{}",
            report.failure,
            report.ladder.join("\n")
        );
    }
    let taken_after: Vec<u64> = members.iter().map(|m| stack.processed(m)).collect();
    assert_eq!(taken_after, taken_before, "a pool member was called with the relay down");
    let log = edge_log(&stack);
    assert!(
        log.contains("astrtc: the media relay did not take the offer (INVITE from")
            && log.contains("refused 503 Media Relay Unavailable"),
        "the edge did not log why it refused:\n{log}"
    );

    let start = Command::new("docker").args(["start", &relay]).output().unwrap();
    assert!(start.status.success(), "docker start {relay}: {}", String::from_utf8_lossy(&start.stderr));
    // The edge takes the relay back in when a ping of its own is answered (a call after the
    // module's 10 s would retry it too); a failed ping exits kamcmd non-zero.
    let back = wait_until(Duration::from_secs(30), || {
        let out = stack.project.run(&[
            "exec",
            "-T",
            "edge",
            "kamcmd",
            "-s",
            "unix:/run/kamailio/kamailio_ctl",
            "rtpengine.ping",
            "all",
        ]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("success")
    });
    assert!(back.is_some(), "the edge never took the restarted relay back in");
    eprintln!("the relay answered the edge's ping {:.1?} after its start", back.unwrap());
    let report = call(stack.sip_setup("3001", &echo, Duration::from_secs(1)));
    if !report.healthy() {
        stack.save_logs("cluster_relay_down");
    }
    assert_echoed("after the relay is back", &report, 25);
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
    let before: Vec<u64> = stack.members().iter().map(|m| stack.processed(&m.name)).collect();

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
    let after: Vec<u64> = stack.members().iter().map(|m| stack.processed(&m.name)).collect();
    assert_eq!(before, after, "a call between users went through the pool");
}

#[test]
fn a_tls_phone_and_a_udp_phone_call_each_other_with_srtp_on_the_tls_leg_and_rtp_on_the_other() {
    use crate::common::phone::Phone;
    let Some((tls_net, udp_net, stack)) = phones_and_stack("tlstoudp") else { return };
    let plan = &stack.plan;
    let art = artifacts("cluster-tls-phone-to-udp-phone");
    let ca = stack.dir.path().join("deploy/keys/ca.crt");
    let before: Vec<u64> = stack.members().iter().map(|m| stack.processed(&m.name)).collect();
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
    let after: Vec<u64> = stack.members().iter().map(|m| stack.processed(&m.name)).collect();
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
