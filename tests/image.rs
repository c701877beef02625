//! The Asterisk image this repository builds, run for real with testcontainers: what the WebRTC
//! guides ask operators to check by hand (8089 listening with a trusted certificate, the
//! WebSocket transport, crypto/websocket/opus/srtp modules Running, the endpoints), plus a
//! deployment whose certificate does not match its domain, which must be caught.
//!
//! Needs a Docker engine (`make test` starts one). `ASTRTC_SKIP_DOCKER=1` skips these tests
//! (`make test-unit`), each counted as a skip; CI never sets it.

use std::collections::BTreeSet;

use astrtc::certs::local_ca::LocalCa;
use astrtc::certs::{cert_facts, files};
use astrtc::media::sip::{Transport, UserAgent};
use astrtc::media::ws::WsConn;
use astrtc::testing;

use crate::common::docker::{deployment, ensure_image, install_leaf_for, overwrite_keep_mode};
use crate::common::*;

fn running(rows: &[astrtc::verify::ModuleRow], name: &str) -> bool {
    rows.iter().any(|r| r.name == name && r.status == "Running")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_serves_wss_and_runs_the_webrtc_modules() {
    if docker_off() {
        return;
    }
    let (dir, plan) = deployment();
    ensure_image();
    let asterisk = testing::start(&plan, &dir.path().join("deploy")).await.expect("container becomes healthy");

    // 1. TLS on the WSS port, verified against the generated ca.crt for the spec's domain.
    let tls = asterisk.check_tls().expect("TLS verifies against ca.crt");
    let rendered =
        cert_facts(&std::fs::read_to_string(dir.path().join("deploy/keys").join(files::CERT)).unwrap()).unwrap();
    assert_eq!(tls.leaf.serial, rendered.serial, "the served leaf is the rendered one");
    assert_eq!(tls.leaf.dns_names, BTreeSet::from(["localhost".to_string()]));
    assert!(tls.chain_len >= 1);

    // 2. WebSocket upgrade with the sip subprotocol.
    assert_eq!(asterisk.check_websocket().await.expect("101 Switching Protocols"), "sip");

    // 3. Modules, parsed.
    let crypto = asterisk.modules_like("crypto").await.unwrap();
    assert!(running(&crypto, "res_crypto.so"), "{crypto:?}");
    let ws = asterisk.modules_like("websocket").await.unwrap();
    assert!(running(&ws, "res_http_websocket.so"), "{ws:?}");
    assert!(running(&ws, "res_pjsip_transport_websocket.so"), "{ws:?}");
    let opus = asterisk.modules_like("opus").await.unwrap();
    assert!(running(&opus, "codec_opus_open_source.so"), "{opus:?}");
    assert!(running(&opus, "res_format_attr_opus.so"), "{opus:?}");
    let srtp = asterisk.modules_like("srtp").await.unwrap();
    assert!(running(&srtp, "res_srtp.so"), "{srtp:?}");

    // 4. Exactly the spec's endpoints; the TLS server on the spec's port.
    let mut endpoints = asterisk.endpoints().await.unwrap();
    endpoints.sort();
    let mut expected: Vec<_> = plan.endpoints.iter().map(|e| e.id.clone()).collect();
    expected.sort();
    assert_eq!(endpoints, expected);
    assert_eq!(
        asterisk.https_binding().await.unwrap().as_deref(),
        Some(format!("0.0.0.0:{}", plan.network.wss_port).as_str())
    );
    // Plain HTTP answers on loopback only.
    let status = asterisk.rx("http show status").await.unwrap();
    assert!(status.contains(&format!("Server Enabled and Bound to 127.0.0.1:{}", plan.network.http_port)), "{status}");
    // The image runs unprivileged and carries its version labels.
    let docker = astrtc::image::connect().await.unwrap();
    let config = docker.inspect_image(&plan.image).await.unwrap().config.unwrap();
    assert_eq!(config.user.as_deref(), Some("asterisk"));
    let labels = config.labels.unwrap_or_default();
    assert_eq!(labels.get("io.astrtc.asterisk.version").map(String::as_str), Some("22.10.1"));
    assert_eq!(labels.get("io.astrtc.pjproject.version").map(String::as_str), Some("2.17"));
    // The container log is plain text for log collectors: no ANSI escape sequences.
    let logs = asterisk.logs().await.unwrap();
    assert!(logs.contains("Asterisk Ready"), "{logs}");
    // Production logging: no line per call step or registration.
    assert!(!logs.contains("    -- "), "verbose lines in the log:\n{logs}");
    // TLS: 1.2 and 1.3 only, and on 1.2 forward-secret AEAD suites only.
    let handshake = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &asterisk.wss_addr().to_string(), "-brief"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        (text.contains("CONNECTION ESTABLISHED"), text)
    };
    let (ok, text) = handshake(&["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]);
    assert!(ok, "TLS 1.2 with an AEAD suite refused:\n{text}");
    let (ok, text) = handshake(&["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"]);
    assert!(!ok, "TLS 1.2 with a CBC/SHA-1 suite accepted:\n{text}");
    let (ok, text) = handshake(&["-tls1_1", "-cipher", "ALL:@SECLEVEL=0"]);
    assert!(!ok, "TLS 1.1 accepted:\n{text}");
    assert!(!logs.contains('\u{1b}'), "the log carries escape sequences:\n{logs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_name_is_caught() {
    if docker_off() {
        return;
    }
    let (dir, plan) = deployment();
    ensure_image();
    install_leaf_for(dir.path(), &plan, "pbx.old.test");
    let asterisk = testing::start(&plan, &dir.path().join("deploy")).await.expect("container becomes healthy");
    let err = asterisk.check_tls().expect_err("a leaf for pbx.old.test must not verify for localhost");
    let msg = err.to_string();
    assert!(msg.contains("localhost") && msg.to_lowercase().contains("not valid for name"), "{msg}");
    // The WebSocket check fails the same way: a browser could not connect.
    assert!(asterisk.check_websocket().await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_build_step_is_an_error_with_its_output() {
    if docker_off() {
        return;
    }
    // A context with every expected file, whose Dockerfile fails in a RUN step: the engine still
    // answers HTTP 200 and reports the failure inside the stream.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), "FROM debian:trixie-slim\nRUN echo astrtc-step-output && exit 3\n")
        .unwrap();
    let docker = astrtc::image::connect().await.unwrap();
    let ctx = astrtc::image::BuildContext::Dir(dir.path().to_path_buf());
    let err = astrtc::image::build(&docker, &ctx, None, "astrtc-test/failing:1", &|_| {}).await.unwrap_err();
    match &err {
        astrtc::image::ImageError::BuildFailed { step, message, log_tail } => {
            assert!(step.contains("2/2"), "{step}");
            assert!(message.contains("exit") || message.contains("returned a non-zero code"), "{message}");
            assert!(log_tail.contains("astrtc-step-output"), "{log_tail}");
        }
        other => panic!("expected BuildFailed, got {other:?}"),
    }
}

#[test]
fn no_engine_is_a_clear_error() {
    let out = astrtc()
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["build", "--spec"])
        .arg(fixtures().join("host-alt-ports/astrtc.toml"))
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("no Docker engine answered at unix:///nonexistent/docker.sock"), "{err}");
    assert!(err.contains("dockerd") || err.contains("systemctl start docker"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_certificate_is_served_after_the_reloader_sees_it_and_wss_sessions_survive() {
    if docker_off() {
        return;
    }
    let (dir, plan) = deployment();
    ensure_image();
    let asterisk = testing::start(&plan, &dir.path().join("deploy")).await.expect("container becomes healthy");
    asterisk
        .spawn("ASTRTC_RELOAD_INTERVAL=1 ASTRTC_RELOAD_WATCH=keys /usr/local/bin/astrtc-reload watch")
        .await
        .unwrap();
    let asterisk_start = start_time(&asterisk.asterisk_proc("stat").await.unwrap());
    let before = asterisk.check_tls().unwrap().leaf.serial;
    // An established WSS session, with a SIP transaction before and after the renewal.
    let ca_pem = std::fs::read_to_string(dir.path().join("deploy/keys").join(files::CA)).unwrap();
    let password = plan.endpoints.iter().find(|e| e.id == "199").unwrap().password.expose().to_string();
    let conn = WsConn::connect(asterisk.wss_addr(), &plan.tls.domain, &ca_pem, "/ws").await.unwrap();
    let mut session = UserAgent::new(Transport::wss(conn), "199", &password, &plan.tls.domain);
    session.register(60).await.expect("registered before the renewal");

    // Renew in place, as cert-manager or the ACME sidecar would (same CA, new key and serial).
    let ca = LocalCa::load(&plan.tls.ca_dir).unwrap().unwrap();
    let renewed = ca.leaf(&plan.tls.names, None).unwrap();
    let keys = dir.path().join("deploy/keys");
    overwrite_keep_mode(&keys.join(files::KEY), &renewed.key_pem);
    overwrite_keep_mode(&keys.join(files::CERT), &renewed.chain_pem);
    let after = cert_facts(&renewed.chain_pem).unwrap().serial;
    assert_ne!(before, after);

    // Readiness condition: a new TLS connection sees the new serial (bounded wait).
    let started = std::time::Instant::now();
    loop {
        if asterisk.check_tls().map(|r| r.leaf.serial == after).unwrap_or(false) {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the new certificate was never served");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eprintln!("renewed certificate served {:.1?} after the files changed", started.elapsed());
    // The session opened before the reload still carries SIP.
    session.register(0).await.expect("the WSS session did not survive");
    session.close().await;
    // Reloaded, not restarted: Asterisk (the container's PID 1) started before the renewal.
    assert_eq!(start_time(&asterisk.asterisk_proc("stat").await.unwrap()), asterisk_start, "restarted");
}

/// `astrtc build` as users run it (`make up` passes the host's CA bundle with `--extra-ca`): the
/// spec's image is built and tagged. Then `--extra-ca` shown to reach the phone stage's npm: the
/// host's bundle followed by a block Node cannot load. Node names that very file — it reads it
/// only through NODE_EXTRA_CA_CERTS — keeps the certificates before the bad block, and npm
/// succeeds (on a host behind a TLS-inspecting proxy, as the build hosts are, only with them).
/// The file differs on every run, so that stage runs instead of coming from the cache.
#[test]
fn astrtc_build_tags_the_spec_image_and_hands_extra_ca_to_the_phone_stage() {
    if docker_off() {
        return;
    }
    const TAG: &str = "astrtc-test/asterisk:cli-build";
    let dir = fixture_copy("host-alt-ports");
    let spec = dir.path().join("astrtc.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    let with_image = text.replace("name = \"astrtc-test\"\n", &format!("name = \"astrtc-test\"\nimage = \"{TAG}\"\n"));
    std::fs::write(&spec, with_image).unwrap();
    ensure_image(); // the same steps: the CLI build below comes from the cache
    let _untag = Untag(TAG);
    let host_ca = astrtc::image::HOST_CA_BUNDLE;
    let out = astrtc().args(["build", "--spec"]).arg(&spec).args(["--extra-ca", host_ca]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with(&format!("built {TAG} in ")), "{stdout}");
    let label = std::process::Command::new("docker")
        .args(["image", "inspect", "-f", "{{index .Config.Labels \"io.astrtc.asterisk.version\"}}", TAG])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), astrtc::image::ASTERISK_VERSION);

    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let extra = dir.path().join("extra-ca.pem");
    let bundle = std::fs::read_to_string(host_ca).unwrap();
    let bad_block = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    std::fs::write(&extra, format!("astrtc test run {nanos}\n{bundle}{bad_block}")).unwrap();
    let out =
        astrtc().args(["build", "--verbose", "--spec"]).arg(&spec).arg("--extra-ca").arg(&extra).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(id) = phone_stage_made(&log) {
        // This run's phone-stage layers are unique to it: removed (their shared parents stay).
        let _ = std::process::Command::new("docker").args(["rmi", id]).output();
    }
    assert!(out.status.success(), "{log}");
    assert!(log.contains("Ignoring extra certs from `/src/extra-ca.pem`"), "Node did not read the extra CA:\n{log}");
}

/// The last image the phone stage made in a build (not from the cache), from a verbose build
/// log: removing it removes this build's phone-stage layers and no shared one.
fn phone_stage_made(log: &str) -> Option<&str> {
    let (mut last, mut cached) = (None, false);
    for line in log.lines().skip_while(|l| !(l.starts_with("Step ") && l.contains("extra-ca.pem ./"))) {
        if line.starts_with("Step ") {
            if line.contains(" : FROM ") {
                break;
            }
            cached = false;
            continue;
        }
        match line.strip_prefix(" ---> ") {
            Some("Using cache") => cached = true,
            Some(id) if !id.contains(' ') && !cached => last = Some(id),
            _ => {}
        }
    }
    last
}

/// Removes a test's image tag when dropped (the image stays under its other tags).
struct Untag(&'static str);

impl Drop for Untag {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["rmi", self.0]).output();
    }
}

/// A process's start time (clock ticks after boot) from its `/proc/PID/stat`.
fn start_time(stat: &str) -> String {
    stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(19)).unwrap_or_default().to_string()
}
