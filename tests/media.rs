//! `astrtc verify --call` against real deployments of the image: a call as each kind of endpoint
//! (WebRTC over WSS with ICE, DTLS-SRTP and opus; plain SIP over UDP with G.711) to the echo
//! extension, from this host and from a client behind a NAT in namespaces the test builds.
//! Each diagnosed failure has a deliberately broken deployment or path that must fail for its
//! named reason, and a healthy twin that must pass, so the result means something: a wrong
//! password (401 loop), a codec mismatch (488), the RTP range dropped by a firewall, a server
//! behind a 1:1 NAT without `network.public_address` (or its `local_address`), and one with a
//! wrong one; and `--relay` through a coturn TURN server where the RTP range is blocked (and with
//! a TURN password the server does not know).
//!
//! Figures (setup times, RTT, jitter) are printed, never asserted: `bench` is for figures.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use astrtc::media::probe::RelayProblem;
use astrtc::media::{CallFailure, Leg};
use astrtc::testing;
use astrtc::verify::{Check, Report, Status};

use crate::common::docker::{deployment, deployment_with, ensure_image};
use crate::common::netns::{client_behind_nat, client_behind_nat_to_public_server, ClientNetwork, PUBLIC};
use crate::common::turn::Coturn;
use crate::common::*;

/// Seconds each call is held: long enough for the media to show, short enough for ICE to be
/// given up quickly when the path is broken.
const HOLD: &str = "3";

/// Runs `astrtc verify --call --json` (in `net`'s client namespace when given) against `host`;
/// prints the report as the CLI prints it for humans, and returns the exit code and report.
pub(crate) fn verify_call(dir: &Path, host: &str, net: Option<&ClientNetwork>, extra: &[&str]) -> (i32, Report) {
    verify_call_held(dir, host, net, HOLD, extra)
}

/// [`verify_call`] holding each call `hold` seconds.
pub(crate) fn verify_call_held(
    dir: &Path,
    host: &str,
    net: Option<&ClientNetwork>,
    hold: &str,
    extra: &[&str],
) -> (i32, Report) {
    let exe = assert_cmd::cargo::cargo_bin("astrtc");
    let mut cmd = match net {
        Some(n) => n.command(&exe),
        None => Command::new(&exe),
    };
    cmd.arg("verify").arg("--spec").arg(dir.join("astrtc.toml")).arg("--out").arg(dir.join("deploy"));
    cmd.args(["--host", host, "--json", "--call", "--hold", hold]).args(extra);
    let out = cmd.output().unwrap();
    let report: Report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("no JSON report ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    let place = net.map(|n| format!(" from {} behind a NAT", n.client_addr)).unwrap_or_default();
    eprintln!("$ astrtc verify --call --host {host}{place}\n{report}");
    (out.status.code().unwrap_or(-1), report)
}

pub(crate) fn check<'a>(report: &'a Report, name: &str) -> &'a Check {
    report.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}: {report}"))
}

pub(crate) fn failed(report: &Report) -> Vec<&str> {
    report.checks.iter().filter(|c| c.status == Status::Fail).map(|c| c.name.as_str()).collect()
}

pub(crate) fn failure(c: &Check) -> CallFailure {
    c.call.as_ref().and_then(|r| r.failure.clone()).unwrap_or_else(|| panic!("{} did not fail: {c:?}", c.name))
}

pub(crate) fn remedy(c: &Check) -> &str {
    c.remedy.as_deref().unwrap_or_default()
}

/// A healthy call: answered, media both ways, matched, little loss (figures printed, not judged).
pub(crate) fn assert_healthy(c: &Check, leg: Leg) {
    assert_eq!(c.status, Status::Pass, "{c:#?}");
    let call = c.call.as_ref().unwrap();
    assert_eq!(call.leg, leg);
    assert!(call.failure.is_none());
    let m = call.media.as_ref().unwrap();
    assert!(m.sent > 0 && m.matched > 0, "{m:?}");
    assert!(call.first_rtp_ms.is_some() && m.rtt_ms.is_some());
    assert!(call.hangup.as_deref().unwrap_or_default().starts_with("BYE answered 200"), "{call:?}");
    match leg {
        Leg::Webrtc => {
            assert_eq!(call.codec.as_deref(), Some("opus/48000/2"));
            assert!(call.ice_connected_ms.is_some() && call.dtls_connected_ms.is_some());
            assert!(call.pair.is_some(), "no candidate pair named");
            assert!(!call.remote_candidates.is_empty());
        }
        Leg::Sip => {
            assert_eq!(call.codec.as_deref(), Some("PCMU/8000"));
            assert!(call.rtp_path.is_some());
        }
    }
}

/// The image, a deployment of `edit`ed fixture spec started on the host network.
async fn started(
    edit: impl FnOnce(&str) -> String,
) -> Option<(tempfile::TempDir, astrtc::plan::Plan, testing::AsteriskContainer)> {
    if docker_off() {
        return None;
    }
    let (dir, plan) = deployment_with(edit);
    ensure_image();
    let asterisk = testing::start(&plan, &dir.path().join("deploy")).await.expect("container becomes healthy");
    Some((dir, plan, asterisk))
}

#[tokio::test(flavor = "multi_thread")]
async fn both_kinds_of_endpoint_call_the_echo_and_get_their_audio_back() {
    let Some((dir, _plan, asterisk)) = started(|s| s.to_string()).await else { return };
    let (code, report) = verify_call(dir.path(), "127.0.0.1", None, &["--container", asterisk.id()]);
    assert_eq!(code, 0, "{report}");
    assert!(failed(&report).is_empty());
    assert_healthy(check(&report, "call 199"), Leg::Webrtc);
    assert_healthy(check(&report, "call 3001"), Leg::Sip);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_named_for_both_kinds_not_retried_forever() {
    let Some((dir, _plan, _asterisk)) = started(|s| s.to_string()).await else { return };
    // The secrets file now says something the running deployment does not use.
    let secrets = dir.path().join("astrtc.secrets.toml");
    let text = std::fs::read_to_string(&secrets).unwrap();
    let changed = text
        .replace("fixture-webrtc-199-password", "a-different-199-password")
        .replace("fixture-sip-3001-password", "a-different-3001-password");
    assert_ne!(changed, text);
    std::fs::write(&secrets, changed).unwrap();
    let (code, report) = verify_call(dir.path(), "127.0.0.1", None, &[]);
    assert_eq!(code, 1);
    assert_eq!(failed(&report), ["register 199", "call 199", "call 3001"], "{report}");
    for (name, id) in [("call 199", "199"), ("call 3001", "3001")] {
        let c = check(&report, name);
        assert!(
            matches!(failure(c), CallFailure::AuthRejected { ref method, code: 401, attempts: 2 } if method == "REGISTER"),
            "{c:#?}"
        );
        assert!(remedy(c).contains(&format!("wrong password for endpoint {id}")), "{c:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_codec_mismatch_names_what_each_side_offered() {
    // The WebRTC endpoint allows only G.722 (the call offers opus), the SIP endpoint only GSM
    // (the call offers G.711 µ-law).
    let Some((dir, _plan, _asterisk)) = started(|s| {
        s.replacen("kind = \"webrtc\"\n", "kind = \"webrtc\"\ncodecs = [\"g722\"]\n", 1).replacen(
            "id = \"3001\"\nkind = \"sip\"\n",
            "id = \"3001\"\nkind = \"sip\"\ncodecs = [\"gsm\"]\n",
            1,
        )
    })
    .await
    else {
        return;
    };
    let (code, report) = verify_call(dir.path(), "127.0.0.1", None, &[]);
    assert_eq!(code, 1);
    assert_eq!(failed(&report), ["call 199", "call 3001"], "{report}");
    for (name, offered, allows, add) in
        [("call 199", "opus/48000/2", "g722", "add opus"), ("call 3001", "PCMU/8000", "gsm", "add ulaw")]
    {
        let c = check(&report, name);
        assert!(matches!(failure(c), CallFailure::Rejected { code: 488, .. }), "{c:#?}");
        assert!(c.detail.contains("no codec in common"), "{c:#?}");
        assert!(c.detail.contains(offered) && c.detail.contains(&format!("allows {allows}")), "{c:#?}");
        assert!(remedy(c).contains(add), "{c:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn from_behind_a_nat_both_kinds_get_audio_and_a_firewall_dropping_the_rtp_range_is_named() {
    let Some((dir, plan, _asterisk)) = started(|s| s.to_string()).await else { return };
    let (start, end) = (plan.rtp.start, plan.rtp.end);

    // The healthy twin: the same NAT with nothing blocked.
    let Some(open) = client_behind_nat().build() else { return };
    let (code, report) = verify_call(dir.path(), &open.server_addr.to_string(), Some(&open), &[]);
    assert_eq!(code, 0, "{report}");
    assert_healthy(check(&report, "call 199"), Leg::Webrtc);
    assert_healthy(check(&report, "call 3001"), Leg::Sip);
    // Our checks reach Asterisk through the NAT: it sees the router's mapping, a peer-reflexive
    // candidate, and answers it.
    drop(open);

    let Some(blocked) = client_behind_nat().dropping_udp(start, end).build() else { return };
    let (code, report) = verify_call(dir.path(), &blocked.server_addr.to_string(), Some(&blocked), &[]);
    assert_eq!(code, 1);
    assert_eq!(failed(&report), ["call 199", "call 3001"], "signalling must still work: {report}");
    let range = format!("UDP {start}-{end} (the spec's rtp.start-rtp.end) is probably blocked");
    let webrtc = check(&report, "call 199");
    assert!(matches!(failure(webrtc), CallFailure::IceNotConnected { .. }), "{webrtc:#?}");
    assert!(remedy(webrtc).contains(&range), "{webrtc:#?}");
    assert!(webrtc.detail.contains("the server is reachable, its media ports are not"), "{webrtc:#?}");
    let sip = check(&report, "call 3001");
    assert_eq!(failure(sip), CallFailure::NoMediaBack, "{sip:#?}");
    assert!(sip.detail.contains("none came back"), "{sip:#?}");
    assert!(remedy(sip).contains(&range), "{sip:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_one_to_one_nat_the_public_address_must_be_set_and_right() {
    // Without network.public_address Asterisk offers its own (private) addresses, which a client
    // outside cannot reach.
    let Some((dir, _plan, asterisk)) = started(|s| s.to_string()).await else { return };
    let Some(net) = client_behind_nat_to_public_server().build() else { return };
    let (code, report) = verify_call(dir.path(), &PUBLIC.to_string(), Some(&net), &[]);
    assert_eq!(code, 1);
    assert_eq!(failed(&report), ["call 199", "call 3001"], "{report}");
    for name in ["call 199", "call 3001"] {
        let c = check(&report, name);
        assert!(c.detail.contains("addresses this client cannot reach"), "{c:#?}");
        assert!(remedy(c).contains("no network.public_address"), "{c:#?}");
        assert!(remedy(c).contains(&format!("here {PUBLIC}")), "{c:#?}");
    }
    let webrtc = check(&report, "call 199");
    assert!(matches!(failure(webrtc), CallFailure::IceNotConnected { .. }), "{webrtc:#?}");
    assert!(remedy(webrtc).contains("network.local_address"), "{webrtc:#?}");
    assert_eq!(failure(check(&report, "call 3001")), CallFailure::NoMediaBack);
    drop(asterisk);

    // Half a fix: the public address without the server's own address it is forwarded to.
    // Signalling is fine, but Asterisk's ICE candidates are still its own addresses.
    let public = format!("[network]\npublic_address = \"{PUBLIC}\"\nlocal_nets = [\"100.64.0.0/10\"]\n");
    let Some((dir, _plan, asterisk)) = started(|s| s.replacen("[network]\n", &public, 1)).await else { return };
    let (code, report) = verify_call(dir.path(), &PUBLIC.to_string(), Some(&net), &[]);
    assert_eq!(code, 1);
    assert_eq!(failed(&report), ["call 199"], "plain SIP works with the public address alone: {report}");
    let c = check(&report, "call 199");
    assert!(c.detail.contains(&format!("Asterisk did not offer network.public_address {PUBLIC}")), "{c:#?}");
    assert!(remedy(c).contains("set network.local_address to the one the NAT forwards"), "{c:#?}");
    assert!(remedy(c).contains(&net.host_link_addr.to_string()), "{c:#?}");
    assert_healthy(check(&report, "call 3001"), Leg::Sip);
    drop(asterisk);

    // The healthy twin: the public address and the server's own address it is forwarded to.
    let public = format!("{public}local_address = \"{}\"\n", net.host_link_addr);
    let Some((dir, _plan, asterisk)) = started(|s| s.replacen("[network]\n", &public, 1)).await else { return };
    let (code, report) = verify_call(dir.path(), &PUBLIC.to_string(), Some(&net), &[]);
    assert_eq!(code, 0, "{report}");
    assert_healthy(check(&report, "call 199"), Leg::Webrtc);
    assert_healthy(check(&report, "call 3001"), Leg::Sip);
    drop(asterisk);

    // A wrong public address: Asterisk offers it, nothing answers there.
    let wrong = format!(
        "[network]\npublic_address = \"203.0.113.99\"\nlocal_nets = [\"100.64.0.0/10\"]\nlocal_address = \"{}\"\n",
        net.host_link_addr
    );
    let Some((dir, _plan, _asterisk)) = started(|s| s.replacen("[network]\n", &wrong, 1)).await else { return };
    let (code, report) = verify_call(dir.path(), &PUBLIC.to_string(), Some(&net), &[]);
    assert_eq!(code, 1);
    assert_eq!(failed(&report), ["call 199", "call 3001"], "{report}");
    for name in ["call 199", "call 3001"] {
        let c = check(&report, name);
        assert!(c.detail.contains("network.public_address 203.0.113.99, which this client cannot reach"), "{c:#?}");
        assert!(remedy(c).contains("network.public_address = \"203.0.113.99\" is probably wrong"), "{c:#?}");
        assert!(remedy(c).contains(&format!("here {PUBLIC}")), "{c:#?}");
    }
    let webrtc = check(&report, "call 199");
    assert!(matches!(failure(webrtc), CallFailure::IceNotConnected { .. }), "{webrtc:#?}");
    assert_eq!(failure(check(&report, "call 3001")), CallFailure::NoMediaBack);
}

#[test]
fn an_unknown_endpoint_is_bad_input_and_nothing_is_called() {
    let (dir, _plan) = deployment();
    let out = astrtc()
        .arg("verify")
        .arg("--spec")
        .arg(dir.path().join("astrtc.toml"))
        .args(["--call", "--endpoint", "4242"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no endpoint 4242") && err.contains("199, 3001, 3002"), "{err}");
}

/// A SIP phone over TLS is refused as a `verify --call` or bench endpoint (their SIP legs are UDP,
/// which a cluster's edge refuses such a user), before anything is called; by default the first
/// SIP phone over UDP is taken instead.
#[test]
fn a_tls_phone_is_bad_input_for_a_udp_call_and_nothing_is_called() {
    let dir = crate::common::fixture_copy("cluster-compose");
    let spec = dir.path().join("astrtc.toml");
    astrtc().current_dir(dir.path()).arg("render").arg("--spec").arg(&spec).assert().success();
    for args in [
        vec!["verify", "--call", "--endpoint", "3010"],
        vec!["bench", "calls", "--kind", "sip-echo", "--caller", "3010", "--levels", "1", "--hold", "1"],
    ] {
        let out = astrtc().current_dir(dir.path()).args(&args).arg("--spec").arg(&spec).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("3010 is a SIP phone over TLS"), "{args:?}: {err}");
    }
    // (The TLS phone put first, where "the first SIP endpoint" would take it.)
    let mut plan = crate::common::plan_for(&spec, astrtc::plan::HostFacts::detect()).unwrap();
    plan.endpoints.sort_by_key(|e| e.transport != astrtc::spec::valid::Transport::Tls);
    let picked: Vec<&str> =
        astrtc::verify::call::select_endpoints(&plan, &[]).unwrap().iter().map(|e| e.id.as_str()).collect();
    assert!(!picked.contains(&"3010"), "the default endpoints include the TLS phone: {picked:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn through_the_spec_s_turn_relay_a_blocked_rtp_range_still_carries_webrtc_audio() {
    if docker_off() {
        return;
    }
    // The TURN server listens on the server's side of the client's NAT.
    let Some(net) = client_behind_nat().build() else { return };
    let Some(turn) = Coturn::start(IpAddr::V4(net.host_link_addr), "astrtc", "fixture-turn-password-1").await else {
        return;
    };
    let spec = format!("[rtp]\nturn = \"{}\"\nturn_username = \"astrtc\"\n", turn.addr);
    let Some((dir, plan, _asterisk)) = started(|s| s.replacen("[rtp]\n", &spec, 1)).await else { return };
    net.drop_udp(plan.rtp.start, plan.rtp.end);
    let host = net.server_addr.to_string();

    // The negative twin: the same path without the relay gets no audio.
    let (code, report) = verify_call(dir.path(), &host, Some(&net), &["--endpoint", "199"]);
    assert_eq!(code, 1);
    let c = check(&report, "call 199");
    assert!(matches!(failure(c), CallFailure::IceNotConnected { .. }), "{c:#?}");
    assert!(remedy(c).contains("is probably blocked"), "{c:#?}");

    // Forced through the relay, the call works: our only candidate is the relayed one.
    let (code, report) = verify_call(dir.path(), &host, Some(&net), &["--endpoint", "199", "--relay"]);
    assert_eq!(code, 0, "{report}\n{}", turn.log());
    let c = check(&report, "call 199");
    assert_healthy(c, Leg::Webrtc);
    let call = c.call.as_ref().unwrap();
    let relay = call.relay.as_ref().expect("the relay is reported");
    assert_eq!(relay.server, turn.addr);
    let pair = call.pair.as_ref().unwrap();
    assert_eq!((pair.local.kind.as_str(), pair.local.addr), ("relay", relay.relayed), "{pair:?}");

    // The relay with a password the TURN server does not know: named as such.
    let secrets = dir.path().join("astrtc.secrets.toml");
    let text = std::fs::read_to_string(&secrets).unwrap();
    std::fs::write(&secrets, text.replace("fixture-turn-password-1", "not-the-turn-password")).unwrap();
    let (code, report) = verify_call(dir.path(), &host, Some(&net), &["--endpoint", "199", "--relay"]);
    assert_eq!(code, 1);
    let c = check(&report, "call 199");
    assert!(matches!(failure(c), CallFailure::Relay { problem: RelayProblem::Unauthorized, .. }), "{c:#?}");
    assert!(remedy(c).contains("refused user \"astrtc\" (rtp.turn_username)"), "{c:#?}");
}

#[test]
fn relay_without_a_turn_server_in_the_spec_is_bad_input() {
    let (dir, _plan) = deployment();
    let out = astrtc()
        .arg("verify")
        .arg("--spec")
        .arg(dir.path().join("astrtc.toml"))
        .args(["--call", "--relay"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // miette wraps the message at its width: compare the words.
    let err = String::from_utf8_lossy(&out.stderr).replace('│', " ");
    let err = err.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(err.contains("the spec has no [turn] nor rtp.turn"), "{err}");
}
