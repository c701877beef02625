//! Real clients against the image this repository builds: the demo softphone
//! (images/asterisk/phone, served by Asterisk itself) in Debian's headless chromium driven by
//! playwright-core, and baresip as a plain SIP phone. The browser trusts the generated `ca.crt`
//! through an NSS database; no certificate errors are ignored.
//!
//! Needs Docker, chromium, certutil, baresip and tests/clients/node_modules (`make deps-clients`).
//! Outside CI, missing tools skip these tests (counted); in CI they fail. Artifacts (Asterisk
//! log, browser console, getStats samples, baresip log) go to target/astrtc-artifacts/<test>/.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use astrtc::plan::Plan;
use astrtc::testing::{self, AsteriskContainer};
use serde_json::Value;

use crate::common::docker::{deployment, ensure_image};
use crate::common::*;

pub(crate) fn tools_missing() -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (what, ok) in [
        ("chromium", Path::new("/usr/bin/chromium").exists()),
        ("certutil", which("certutil")),
        ("baresip", which("baresip")),
        ("node", which("node")),
        ("playwright-core", root.join("tests/clients/node_modules/playwright-core").exists()),
    ] {
        if !ok {
            return Some(format!("{what} is not installed (make deps-clients)"));
        }
    }
    None
}

fn which(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn artifacts(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/astrtc-artifacts").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn save_logs(asterisk: &AsteriskContainer, dir: &Path) {
    if let Ok(log) = asterisk.logs().await {
        std::fs::write(dir.join("asterisk.log"), log).unwrap();
    }
}

/// A HOME whose NSS database trusts `ca` (or nothing, when `ca` is None).
pub(crate) fn browser_home(ca: Option<&Path>) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let db = home.path().join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db_arg = format!("sql:{}", db.display());
    let ok = Command::new("certutil").args(["-d", &db_arg, "-N", "--empty-password"]).status().unwrap();
    assert!(ok.success());
    if let Some(ca) = ca {
        let ok = Command::new("certutil")
            .args(["-d", &db_arg, "-A", "-t", "C,,", "-n", "astrtc-test-ca", "-i"])
            .arg(ca)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    home
}

pub(crate) struct BrowserCall<'a> {
    pub plan: &'a Plan,
    pub home: &'a Path,
    pub user: &'a str,
    pub target: &'a str,
    pub seconds: u32,
    pub artifacts: &'a Path,
    /// Run the browser inside this network namespace (it must resolve the domain, or map it).
    pub netns: Option<&'a str>,
    /// Send the browser to this address for the plan's domain (Chromium's host resolver rules;
    /// they also cover `localhost`, which Chromium otherwise never looks up).
    pub map_host: Option<std::net::IpAddr>,
    /// What goes into the phone's "ICE servers" field (an iceServers entry, JSON).
    pub ice_servers: Option<&'a str>,
}

/// Runs tests/clients/browser-call.mjs; returns its JSON result and exit status.
pub(crate) fn browser_call(c: &BrowserCall<'_>) -> (Value, bool, Duration) {
    let port = c.plan.network.wss_port;
    let domain = &c.plan.tls.domain;
    let password = &c.plan.endpoints.iter().find(|e| e.id == c.user).unwrap().password.expose();
    let profile = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut node = match c.netns {
        Some(ns) => {
            let mut node = Command::new("ip");
            node.args(["netns", "exec", ns, "node"]);
            node
        }
        None => Command::new("node"),
    };
    node.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")).arg("browser-call.mjs");
    if let Some(addr) = c.map_host {
        node.args(["--map-host", &addr.to_string()]);
    }
    if let Some(servers) = c.ice_servers {
        node.args(["--ice-servers-env", "ASTRTC_TEST_ICE_SERVERS"]).env("ASTRTC_TEST_ICE_SERVERS", servers);
    }
    let out = node
        .args(["--page", &format!("https://{domain}:{port}/static/phone/index.html")])
        .args(["--wss", &format!("wss://{domain}:{port}/ws")])
        .args(["--user", c.user, "--password-env", "ASTRTC_TEST_PASSWORD", "--target", c.target])
        .args(["--seconds", &c.seconds.to_string()])
        .arg("--profile")
        .arg(profile.path())
        .arg("--artifacts")
        .arg(c.artifacts)
        .env("HOME", c.home)
        .env("ASTRTC_TEST_PASSWORD", password)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let json: Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("browser-call printed no JSON ({e}): {text}"));
    (json, out.status.success(), elapsed)
}

/// Asserts a browser call carried media both ways for `seconds` and ended with a clean BYE.
pub(crate) fn assert_media_flowed(r: &Value, seconds: u32) {
    assert_eq!(r["ok"], true, "{r:#}");
    let samples = r["samples"].as_array().unwrap();
    assert!(!samples.is_empty());
    let last = samples.last().unwrap();
    assert_eq!(last["dtlsState"], "connected", "{last}");
    assert_eq!(last["codec"], "audio/opus", "{last}");
    // Inbound RTP keeps increasing for the whole window, not just at the start.
    let at =
        |t: u64| samples.iter().find(|s| s["t"].as_u64().unwrap() >= t).unwrap()["packetsReceived"].as_u64().unwrap();
    let window = u64::from(seconds) * 1000;
    assert!(last["t"].as_u64().unwrap() >= window - 300, "sampled for too short a time");
    let (p1, p2, p3) = (at(500), at(window / 2), last["packetsReceived"].as_u64().unwrap());
    let sent: Vec<u64> = samples.iter().map(|s| s["packetsSent"].as_u64().unwrap_or(0)).collect();
    // On a stall, say how the media travelled over time: a changed candidate pair or ICE state is
    // the usual cause (an interface coming or going on the host under the browser).
    let pairs: Vec<String> = samples
        .iter()
        .map(|s| {
            let p = &s["pair"];
            format!(
                "{}:{}->{}:{} {}",
                p["local"]["address"], p["local"]["port"], p["remote"]["address"], p["remote"]["port"], s["iceState"]
            )
        })
        .fold(Vec::new(), |mut seen, p| {
            if seen.last() != Some(&p) {
                seen.push(p);
            }
            seen
        });
    assert!(
        p1 < p2 && p2 < p3,
        "inbound RTP stalled: {p1} {p2} {p3} (sent over time: {sent:?}; candidate pair and ICE state over time: {pairs:?}; ICE states: {})",
        r["iceStates"]
    );
    let rate = p3 as f64 / (last["t"].as_f64().unwrap() / 1000.0);
    assert!(rate > 30.0, "only {rate:.0} packets/s");
    assert_eq!(r["endCause"], "Terminated", "not a clean BYE: {r:#}");
}

fn start_baresip(
    plan: &Plan,
    user: &str,
    listen_port: u16,
    dial: Option<&str>,
    seconds: u32,
    dir: &Path,
) -> std::process::Child {
    let cfg = dir.join("baresip");
    std::fs::create_dir_all(&cfg).unwrap();
    let snd = crate::common::phone::audio_dir(dir);
    std::fs::write(
        cfg.join("config"),
        format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{listen_port}\naudio_player aubridge,nil\n\
             audio_source ausine,440\naudio_alert aubridge,nil\nausrc_srate 48000\nauplay_srate 48000\n\
             ausrc_channels 2\nauplay_channels 2\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\n\
             module ausine.so\nmodule aubridge.so\nmodule sndfile.so\nmodule_app account.so\nmodule_app menu.so\n\
             snd_path {}\n",
            snd.display()
        ),
    )
    .unwrap();
    let password = &plan.endpoints.iter().find(|e| e.id == user).unwrap().password.expose();
    let sip = plan.network.sip_port;
    std::fs::write(
        cfg.join("accounts"),
        format!("<sip:{user}@127.0.0.1:{sip};transport=udp>;auth_pass={password};answermode=auto;regint=60\n"),
    )
    .unwrap();
    std::fs::write(cfg.join("contacts"), "").unwrap();
    let log = std::fs::File::create(dir.join("baresip.log")).unwrap();
    let mut cmd = Command::new("baresip");
    cmd.arg("-f").arg(&cfg).args(["-t", &seconds.to_string()]);
    if let Some(target) = dial {
        cmd.args(["-e", &format!("/dial sip:{target}@127.0.0.1:{sip}")]);
    }
    cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap()
}

/// RMS (0..1) of the decoded audio baresip dumped (16-bit PCM WAV), skipping the first second.
pub(crate) fn received_rms(dir: &Path) -> f64 {
    decoded_rms(dir).unwrap_or_else(|| panic!("baresip wrote no decoded audio in {}", dir.display()))
}

/// [`received_rms`], or `None` when baresip wrote no decoded audio (baresip 1.0 opens its dump
/// files when a call's audio starts, with a header only) or its file has no complete header.
/// Panics when the directory holds files but no decoded dump: their names were not baresip's.
pub(crate) fn decoded_rms(dir: &Path) -> Option<f64> {
    let snd = dir.join("baresip-audio");
    let files: Vec<PathBuf> = std::fs::read_dir(&snd).ok()?.map(|e| e.unwrap().path()).collect();
    let Some(wav) = files.iter().find(|p| p.to_string_lossy().ends_with("-dec.wav")) else {
        assert!(files.is_empty(), "baresip's audio dumps in {} are not named *-dec.wav: {files:?}", snd.display());
        return None;
    };
    let bytes = std::fs::read(wav).unwrap();
    // A file cut short (baresip killed while writing it) counts as nothing decoded.
    if bytes.len() < 44 || &bytes[0..4] != b"RIFF" {
        return None;
    }
    let channels = u16::from_le_bytes([bytes[22], bytes[23]]) as usize;
    let rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]) as usize;
    assert_eq!(u16::from_le_bytes([bytes[34], bytes[35]]), 16, "expected 16-bit PCM");
    let samples: Vec<i16> = bytes[44..].chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let skip = (rate * channels).min(samples.len());
    let tail = &samples[skip..];
    if tail.is_empty() {
        return Some(0.0);
    }
    Some((tail.iter().map(|s| (f64::from(*s) / 32768.0).powi(2)).sum::<f64>() / tail.len() as f64).sqrt())
}

async fn wait_registered(asterisk: &AsteriskContainer, aor: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let contacts = asterisk.rx("pjsip show contacts").await.unwrap();
        if contacts.lines().any(|l| l.trim_start().starts_with(&format!("Contact:  {aor}/"))) {
            return;
        }
        assert!(Instant::now() < deadline, "{aor} did not register:\n{contacts}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_and_sip_phone_calls() {
    if docker_off() {
        return;
    }
    if let Some(why) = tools_missing() {
        skip(&why);
        return;
    }
    let suite = Instant::now();
    let (dir, plan) = deployment();
    ensure_image();
    let asterisk = testing::start(&plan, &dir.path().join("deploy")).await.expect("container becomes healthy");
    let ca = dir.path().join("deploy/keys/ca.crt");
    let home = browser_home(Some(&ca));

    // 1. Browser echo call: 199 over WSS calls 600.
    let art = artifacts("browser-echo");
    let (r, ok, took) = browser_call(&BrowserCall {
        plan: &plan,
        home: home.path(),
        user: "199",
        target: &plan.dialplan.echo_extension,
        seconds: 3,
        artifacts: &art,
        netns: None,
        map_host: None,
        ice_servers: None,
    });
    save_logs(&asterisk, &art).await;
    assert!(ok, "{r:#}");
    assert_media_flowed(&r, 3);
    eprintln!(
        "browser echo: registered {:.0} ms, confirmed {:.0} ms, first RTP {:.0} ms, {} packets, {:.1?}",
        r["registeredMs"].as_f64().unwrap(),
        r["confirmedMs"].as_f64().unwrap(),
        r["firstRtpMs"].as_f64().unwrap(),
        r["samples"].as_array().unwrap().last().unwrap()["packetsReceived"],
        took
    );

    // 2. Plain SIP: baresip registers as 3001 over UDP and calls 600; what comes back is not silence.
    let art = artifacts("sip-echo");
    let mut phone =
        start_baresip(&plan, "3001", crate::common::ports::free_port(), Some(&plan.dialplan.echo_extension), 6, &art);
    let status = phone.wait().unwrap();
    save_logs(&asterisk, &art).await;
    assert!(status.success(), "baresip failed; see {}", art.display());
    let log = std::fs::read_to_string(art.join("baresip.log")).unwrap();
    assert!(log.contains("200 OK"), "3001 did not register:\n{log}");
    assert!(log.contains("Call established"), "{log}");
    let rms = received_rms(&art);
    eprintln!("sip echo: received RMS {rms:.3}");
    assert!(rms > 0.01, "baresip heard silence (RMS {rms})");

    // 3. Transcoding: the browser (opus) calls 3001 (baresip, PCMU, auto-answer); audio both ways.
    let art = artifacts("transcoding");
    let mut phone = start_baresip(&plan, "3001", crate::common::ports::free_port(), None, 20, &art);
    wait_registered(&asterisk, "3001").await;
    let (r, ok, _) = browser_call(&BrowserCall {
        plan: &plan,
        home: home.path(),
        user: "199",
        target: "3001",
        seconds: 3,
        artifacts: &art,
        netns: None,
        map_host: None,
        ice_servers: None,
    });
    let _ = phone.kill();
    let _ = phone.wait();
    save_logs(&asterisk, &art).await;
    assert!(ok, "{r:#}");
    assert_media_flowed(&r, 3);
    let level =
        r["samples"].as_array().unwrap().iter().map(|s| s["audioLevelIn"].as_f64().unwrap_or(0.0)).fold(0.0, f64::max);
    assert!(level > 0.01, "the browser heard silence from the SIP phone (level {level})");
    let log = std::fs::read_to_string(art.join("baresip.log")).unwrap();
    assert!(log.contains("PCMU"), "the SIP leg did not use G.711 u-law:\n{log}");
    let rms = received_rms(&art);
    assert!(rms > 0.01, "the SIP phone heard silence from the browser (RMS {rms})");

    // 4. An untrusted CA: the browser fails fast, with the reason.
    let art = artifacts("untrusted-ca");
    let untrusting = browser_home(None);
    let (r, ok, took) = browser_call(&BrowserCall {
        plan: &plan,
        home: untrusting.path(),
        user: "199",
        target: &plan.dialplan.echo_extension,
        seconds: 1,
        artifacts: &art,
        netns: None,
        map_host: None,
        ice_servers: None,
    });
    assert!(!ok, "a browser that does not trust the CA must fail: {r:#}");
    let err = r["errors"][0].as_str().unwrap();
    assert!(err.contains("ERR_CERT_AUTHORITY_INVALID"), "{err}");
    assert!(took < Duration::from_secs(15), "failing took {took:?}");
    eprintln!("real-client suite: {:.1?}", suite.elapsed());
}
