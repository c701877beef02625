//! `astrtc bench calls` against a real deployment of the image: a short run of each kind of call
//! (webrtc-echo, sip-echo, webrtc-to-sip with the bench's own answering phone) at a small level
//! must set up every call and report a whole, sane report — structure and success are asserted,
//! never timing or CPU figures (those are measurements of a shared host: `make bench` prints
//! them). Its negative twin: the same run with a password the deployment does not know sets up
//! nothing and exits 1. Bad input (an unknown kind, a level beyond the RTP range, the WSS session
//! limit or another kind's endpoint) exits 2 before any call is placed. The deployment sets
//! `performance.opus_complexity`, and the image's opus encoder is shown to take it. The WebRTC
//! kinds run with their calls' media on shared ports (one per core, the default; once three)
//! and, once, with a socket per call; and calls placed through two [`WebrtcPort`]s must take
//! them in turn and each get their own echo back.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use astrtc::bench::{BenchReport, Kind};
use astrtc::media::session::Offer;
use astrtc::media::webrtc_port::WebrtcPort;
use astrtc::media::{netif, CallFailure, CallSetup, LegSetup, SharedMedia};
use astrtc::plan::Plan;
use astrtc::testing;

use crate::common::docker::{deployment_with, ensure_image};
use crate::common::*;

/// Calls per level and window seconds of the short runs.
const LEVEL: &str = "5";
const HOLD: &str = "3";

/// Runs `astrtc bench calls` against the deployment in `dir`; exit code, report (when written),
/// everything printed.
fn bench(dir: &Path, container: &str, kind: &str, extra: &[&str]) -> (i32, Option<BenchReport>, String) {
    let json = dir.join(format!("bench-{kind}.json"));
    let plot = dir.join(format!("bench-{kind}.svg"));
    // Never a report left by an earlier run of the same kind.
    let _ = std::fs::remove_file(&json);
    let out = astrtc()
        .args(["bench", "calls", "--spec"])
        .arg(dir.join("astrtc.toml"))
        .arg("--out")
        .arg(dir.join("deploy"))
        .args(["--host", "127.0.0.1", "--container", container, "--kind", kind, "--levels", LEVEL, "--hold", HOLD])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plot)
        .args(extra)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("$ astrtc bench calls --kind {kind} --levels {LEVEL} --hold {HOLD}\n{text}");
    let report = std::fs::read_to_string(&json).ok().map(|t| serde_json::from_str(&t).expect("the JSON is a report"));
    if report.is_some() {
        let svg = std::fs::read_to_string(&plot).expect("the plot is written with the JSON");
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"), "{svg}");
        assert!(svg.contains(kind), "the plot names the run");
    }
    (out.status.code().unwrap_or(-1), report, text)
}

/// A healthy short run: every call set up, with the kind's codec, figures present and in range.
fn assert_whole(kind: Kind, code: i32, report: Option<BenchReport>, text: &str) {
    assert_eq!(code, 0, "{text}");
    let r = report.expect("a report");
    assert_eq!(r.kind, kind);
    assert_eq!(r.levels.len(), 1);
    let l = &r.levels[0];
    assert_eq!((l.calls, l.set_up), (5, 5), "{l:#?}");
    assert_eq!(l.setup_percent, 100.0);
    assert!(l.failures.is_empty(), "{:?}: {:#?}", l.failures, l.failed_calls);
    let codec = match kind {
        Kind::SipEcho => "PCMU/8000",
        Kind::WebrtcEcho | Kind::WebrtcToSip => "opus/48000/2",
    };
    assert_eq!(l.codecs.get(codec), Some(&5), "{:?}", l.codecs);
    // Figures exist and are percentages and durations, whatever their values.
    assert!((0.0..=100.0).contains(&l.loss_percent));
    let (setup, jitter) = (l.setup_ms.unwrap(), l.jitter_ms.unwrap());
    assert!(setup.p50 > 0.0 && setup.p50 <= setup.p99);
    assert!(jitter.p50 >= 0.0 && jitter.p50 <= jitter.p99);
    assert!(l.answer_ms.unwrap().p50 <= setup.p50, "answered before the audio came back");
    match kind {
        // A transcoded echo comes back re-encoded: no per-packet round trip.
        Kind::WebrtcToSip => assert!(l.rtt_p50_ms.is_none()),
        _ => assert!(l.rtt_p50_ms.is_some()),
    }
    assert!(l.window_s >= 3.0);
    // The cgroup counter of the container was found and read; so was our own.
    assert!(r.asterisk_cpu_source.contains("container"), "{}", r.asterisk_cpu_source);
    assert!(l.asterisk_cpu.is_some_and(|c| c.cpu_seconds > 0.0), "{:?}", l.asterisk_cpu);
    assert!(l.generator_cpu.is_some_and(|c| c.cpu_seconds > 0.0), "{:?}", l.generator_cpu);
    match kind {
        Kind::WebrtcToSip => {
            let a = l.answered.expect("the answering phone's figures");
            assert_eq!((a.invites, a.confirmed), (5, 5), "{a:?}");
            assert!(a.echoed > 0);
        }
        _ => assert!(l.answered.is_none()),
    }
    assert!(text.contains("capacity:"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_call_runs_a_short_bench_and_a_wrong_password_sets_up_nothing() {
    if docker_off() {
        return;
    }
    // With an opus complexity in the spec: the codec's encoders must take it.
    let (dir, plan) = deployment_with(|spec| format!("{spec}\n[performance]\nopus_complexity = 3\n"));
    assert_eq!(plan.performance.opus_complexity, Some(3));
    ensure_image();
    let asterisk = testing::start(&plan, &dir.path().join("deploy")).await.expect("container becomes healthy");
    // The WebRTC kinds' media on shared ports, one per core unless told.
    let cores = std::thread::available_parallelism().unwrap().get();
    for kind in [Kind::SipEcho, Kind::WebrtcEcho, Kind::WebrtcToSip] {
        let (code, report, text) = bench(dir.path(), asterisk.id(), kind.name(), &[]);
        let ports = if kind == Kind::SipEcho { 0 } else { cores };
        assert_eq!(report.as_ref().map(|r| r.webrtc_ports), Some(ports), "{text}");
        assert_whole(kind, code, report, &text);
    }
    let (code, report, text) = bench(dir.path(), asterisk.id(), "webrtc-echo", &["--webrtc-ports", "3"]);
    assert_eq!(report.as_ref().map(|r| r.webrtc_ports), Some(3), "{text}");
    assert_whole(Kind::WebrtcEcho, code, report, &text);
    // The WebRTC calls' media with a socket and a task each, as before the shared port.
    let (code, report, text) = bench(dir.path(), asterisk.id(), "webrtc-echo", &["--webrtc-media", "per-call"]);
    assert_eq!(report.as_ref().map(|r| r.webrtc_ports), Some(0), "{text}");
    assert_whole(Kind::WebrtcEcho, code, report, &text);
    calls_through_shared_ports_each_get_their_own_echo(dir.path(), &plan).await;
    // The image's codec logs the complexity of the first encoder it makes, read back from libopus
    // (images/asterisk/build/patch-opus). That one is Asterisk's own, made at load to price the
    // translation; every later encoder (a transcoded call's) reads the same variable the same way.
    // So this proves the variable reaches libopus, not a particular call's encoder.
    let logs = asterisk.logs().await.unwrap();
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("astrtc: opus encoder complexity")).collect();
    assert_eq!(lines.len(), 1, "one line, from the first encoder: {lines:?}");
    assert!(lines[0].ends_with("astrtc: opus encoder complexity 3 (ASTRTC_OPUS_COMPLEXITY)"), "{lines:?}");

    // The negative twin: the secrets file no longer matches the running deployment.
    let secrets = dir.path().join("astrtc.secrets.toml");
    let text = std::fs::read_to_string(&secrets).unwrap();
    let changed = text.replace("fixture-webrtc-199-password", "a-different-199-password");
    assert_ne!(changed, text, "the fixture's password for 199 was not found");
    std::fs::write(&secrets, changed).unwrap();
    let (code, report, text) = bench(dir.path(), asterisk.id(), "webrtc-echo", &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no call was set up at any level"), "{text}");
    let l = &report.expect("a report even when nothing was set up").levels[0];
    assert_eq!(l.set_up, 0);
    assert_eq!(l.failures.get("auth_rejected"), Some(&5), "{:?}", l.failures);
    assert!(!l.carried);
}

/// Places [`PORT_CALLS`] WebRTC calls at once through [`PORTS`] shared [`WebrtcPort`]s, as `bench
/// calls` does: the calls must take the ports in turn (as many on each); each must connect ICE
/// from its port's address to a candidate of its own channel (no two calls the same), get DTLS up
/// with its own keys and audio back, every packet matched to one it sent. A datagram handed to
/// the wrong call's `Rtc` is a STUN check with another's username, a DTLS record of another
/// handshake or SRTP under other keys: that call fails or loses audio.
async fn calls_through_shared_ports_each_get_their_own_echo(dir: &Path, plan: &Plan) {
    const PORT_CALLS: usize = 8;
    const PORTS: usize = 2;
    let wss = SocketAddr::from(([127, 0, 0, 1], plan.network.wss_port));
    // The address bench calls offers for a server on this host: a LAN one (Asterisk never
    // offers loopback candidates).
    let ip: IpAddr = netif::host_ips(netif::CandidateSet::Lan).unwrap().into_iter().next().expect("a LAN address");
    let mut shared = SharedMedia::new().unwrap();
    let mut served = Vec::new();
    for _ in 0..PORTS {
        let (port, handle) = WebrtcPort::bind(ip).unwrap();
        served.push(tokio::spawn(port.run()));
        shared.webrtc_ports.push(handle);
    }
    let handles = shared.webrtc_ports.clone();
    let ports: Vec<SocketAddr> = handles.iter().map(|h| h.local()).collect();
    let caller = plan.endpoints.iter().find(|e| e.id == "199").expect("the fixture's WebRTC endpoint");
    let ca_pem = std::fs::read_to_string(dir.join("deploy/keys/ca.crt")).unwrap();
    let setup = Arc::new(CallSetup {
        leg: LegSetup::Webrtc { wss, ca_pem: Arc::from(ca_pem.as_str()), local_ips: vec![ip], relay: None },
        domain: plan.tls.domain.clone(),
        user: caller.id.clone(),
        password: caller.password.expose().to_string(),
        extension: plan.dialplan.echo_extension.clone(),
        hold: Duration::from_secs(4),
        register: false,
        offer: Offer::OpusThenPcmu,
        reencoded: false,
        release: None,
    });
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..PORT_CALLS {
        let (setup, shared) = (setup.clone(), shared.clone());
        calls.spawn(async move { astrtc::media::call(&setup, &shared).await });
    }
    drop(shared);
    let (mut remotes, mut per_port) = (Vec::new(), vec![0; PORTS]);
    while let Some(report) = calls.join_next().await {
        let r = report.unwrap();
        // Set up, ICE and DTLS connected, audio back. How much came back is Asterisk's echo on a
        // loaded host (it stops echoing a channel now and then, with a socket per call as well);
        // that packets came back at all, each one this call's, is the port's.
        assert!(r.failure.is_none() || matches!(r.failure, Some(CallFailure::Loss { .. })), "{r:#?}");
        assert!(r.dtls_connected_ms.is_some(), "{r:#?}");
        assert_eq!(r.codec.as_deref(), Some("opus/48000/2"));
        // Our one candidate is one of the ports'; the pair ICE chose is from it, to one of this
        // call's channel's candidates.
        let [ours] = r.local_candidates.iter().map(|c| c.addr).collect::<Vec<_>>()[..] else {
            panic!("one local candidate: {r:#?}")
        };
        let Some(port) = ports.iter().position(|p| *p == ours) else {
            panic!("the call's candidate {ours} is none of the shared ports {ports:?}")
        };
        per_port[port] += 1;
        let pair = r.pair.clone().expect("a selected pair");
        assert_eq!(pair.local.addr, ours);
        assert!(r.remote_candidates.iter().any(|c| c.addr == pair.remote.addr), "{r:#?}");
        // Every packet that came back is one this call sent.
        let m = r.media.clone().unwrap();
        assert!(m.received > 0 && m.matched == m.received, "{m:?}");
        assert!(m.rtt_ms.is_some(), "{m:?}");
        remotes.push(pair.remote.addr);
    }
    remotes.sort();
    remotes.dedup();
    assert_eq!(remotes.len(), PORT_CALLS, "each call on a channel (an Asterisk port) of its own: {remotes:?}");
    assert_eq!(per_port, [PORT_CALLS / PORTS; PORTS], "the calls take the shared ports {ports:?} in turn");
    // Each port's future ends with its last call once every handle is gone.
    drop(handles);
    for s in served {
        s.await.unwrap();
    }
}

/// Runs `bench calls` on the rendered `host-alt-ports` fixture (RTP 40000-40999: 500 channels)
/// with nothing running: bad input must be refused before anything is sent.
fn refused(edit: impl FnOnce(&str) -> String, args: &[&str]) -> String {
    let dir = fixture_copy("host-alt-ports");
    let spec = dir.path().join("astrtc.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, edit(&text)).unwrap();
    let out = astrtc()
        .args(["bench", "calls", "--spec"])
        .arg(&spec)
        .args(["--host", "127.0.0.1", "--hold", "1"])
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{args:?} must be refused as bad input:\n{text}");
    assert!(!text.contains("level 1: ramping"), "nothing may be started: {text}");
    text
}

#[test]
fn bad_input_is_refused_with_exit_2_and_says_why() {
    let same = |s: &str| s.to_string();
    let t = refused(same, &["--kind", "webrtc-to-video", "--levels", "5"]);
    assert!(t.contains("invalid value 'webrtc-to-video' for '--kind"), "{t}");
    assert!(t.contains("webrtc-echo") && t.contains("sip-echo") && t.contains("webrtc-to-sip"), "{t}");

    // 1000 ports: 500 channels, 250 transcoded calls (two channels each) or 500 echo calls.
    let t = refused(same, &["--kind", "webrtc-to-sip", "--levels", "10,251"]);
    assert!(t.contains("level 251 is more than the deployment's RTP range can carry"), "{t}");
    assert!(t.contains("40000-40999 is 1000 ports") && t.contains("at most 250 calls"), "{t}");
    let t = refused(same, &["--kind", "sip-echo", "--levels", "501"]);
    assert!(t.contains("at most 500 calls"), "{t}");

    let t =
        refused(|s| format!("{s}\n[performance]\nwss_sessions = 20\n"), &["--kind", "webrtc-echo", "--levels", "21"]);
    assert!(t.contains("performance.wss_sessions is 20"), "{t}");

    let t = refused(same, &["--kind", "webrtc-echo", "--levels", "1", "--caller", "3001"]);
    assert!(t.contains("--caller 3001: endpoint 3001 is not a webrtc endpoint"), "{t}");
    let t = refused(same, &["--kind", "webrtc-to-sip", "--levels", "1", "--callee", "4000"]);
    assert!(t.contains("--callee 4000: the spec has no endpoint 4000 (it has 199, 3001, 3002)"), "{t}");
    let t = refused(same, &["--kind", "sip-echo", "--levels", "0"]);
    assert!(t.contains("--levels"), "{t}");

    // Shared ports counted for calls that share none; no port at all; more than 64.
    let t =
        refused(same, &["--kind", "webrtc-echo", "--levels", "1", "--webrtc-media", "per-call", "--webrtc-ports", "2"]);
    assert!(t.contains("--webrtc-ports counts shared ports, and --webrtc-media per-call"), "{t}");
    assert!(t.contains("use one or the other"), "{t}");
    let t = refused(same, &["--kind", "sip-echo", "--levels", "1", "--webrtc-ports", "2"]);
    assert!(t.contains("--webrtc-ports is for the WebRTC kinds") && t.contains("sip-echo call has no"), "{t}");
    for n in ["0", "65"] {
        let t = refused(same, &["--kind", "webrtc-echo", "--levels", "1", "--webrtc-ports", n]);
        assert!(t.contains(&format!("invalid value '{n}' for '--webrtc-ports")), "{t}");
    }
}
