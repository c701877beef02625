//! ACME issuance against a real ACME server: Debian's Pebble (Let's Encrypt's test server),
//! started here on loopback with a TLS certificate from a throwaway local CA.
//!
//! Needs `pebble` (`make deps-acme`). Outside CI, a missing pebble skips these tests with a
//! message; in CI they fail.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use astrtc::certs::acme::{self, AcmeRequest};
use astrtc::certs::cert_facts;
use astrtc::media::sip::{SipError, SipMessage, Transport, UserAgent};
use astrtc::media::ws::WsConn;

use crate::common::docker::{deployment, ensure_guard, ensure_image, ensure_sidecar, ComposeProject};
use crate::common::pebble::{pebble, start_pebble, start_pebble_with, Pebble};
use crate::common::ports::free_port;
use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn http01_issues_a_certificate_that_chains_to_pebbles_root() {
    let Some(pebble) = pebble() else { return };
    let state = tempfile::tempdir().unwrap();
    let req = pebble.request(&["localhost"], state.path());
    let started = Instant::now();
    let cert = acme::issue(&req).await.unwrap_or_else(|e| panic!("{e:?}\n{}", pebble.log())).cert;
    eprintln!("HTTP-01 issuance took {:.2?}", started.elapsed());

    let leaf = cert_facts(&cert.chain_pem).unwrap();
    assert_eq!(leaf.dns_names.iter().collect::<Vec<_>>(), ["localhost"]);
    let key = rcgen::KeyPair::from_pem(&cert.key_pem).unwrap();
    assert_eq!(leaf.spki_der, rcgen::PublicKeyData::subject_public_key_info(&key), "key does not match");
    // leaf <- intermediate <- root (from Pebble's management API).
    let chain: Vec<_> =
        x509_parser::pem::Pem::iter_from_buffer(cert.chain_pem.as_bytes()).map(|p| p.unwrap()).collect();
    assert!(chain.len() >= 2, "no intermediate in the chain");
    let root_pem = pebble.root_pem();
    let (_, root) = x509_parser::pem::parse_x509_pem(root_pem.as_bytes()).unwrap();
    let root = root.parse_x509().unwrap();
    let certs: Vec<_> = chain.iter().map(|p| p.parse_x509().unwrap()).collect();
    certs[0].verify_signature(Some(certs[1].public_key())).expect("leaf signed by the intermediate");
    certs.last().unwrap().verify_signature(Some(root.public_key())).expect("chain ends at Pebble's root");

    // The account is kept (mode 0600) and reused: a second order does not create a new one.
    let account = std::fs::read(&req.account_file).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&req.account_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let again = acme::issue(&req).await.unwrap().cert;
    assert_ne!(cert_facts(&again.chain_pem).unwrap().serial, leaf.serial);
    assert_eq!(std::fs::read(&req.account_file).unwrap(), account, "a new account was created");
    // The responder is gone once the order is done: its port is free again.
    assert!(TcpListener::bind(pebble.http01).is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_responder_is_a_clear_validation_error() {
    let Some(pebble) = pebble() else { return };
    let state = tempfile::tempdir().unwrap();
    let mut req = pebble.request(&["localhost"], state.path());
    // Our responder listens elsewhere than where Pebble validates.
    req.method = acme::ChallengeMethod::Http01 { listen: SocketAddr::from(([127, 0, 0, 1], free_port())) };
    req.timeout = Duration::from_secs(15);
    let err = acme::issue(&req).await.expect_err("validation must fail");
    let msg = format!("{err}");
    assert!(msg.starts_with("validation of localhost failed"), "{msg}");
    // Usually "connection refused (…:connection)"; another test may own the port meanwhile.
    assert!(msg.contains("urn:ietf:params:acme:error:"), "{msg}");
}

/// A DNS hook for pebble-challtestsrv, as a user would write one for their DNS provider. Each
/// call is logged (`ACTION NAME VALUE`) to the hook's path + `.log`. `behaviour`: "ok"; "wrong"
/// publishes a wrong value; "fail" fails like a provider API error; "fail-second" fails so on its
/// second `add` only.
fn write_hook(dir: &Path, management: u16, behaviour: &str) -> std::path::PathBuf {
    let hook = dir.join(format!("dns-hook-{behaviour}"));
    std::fs::write(
        &hook,
        format!(
            r#"#!/usr/bin/env python3
import json, os, sys, urllib.request
action, name, value = sys.argv[1:4]
log = sys.argv[0] + ".log"
adds = sum(1 for line in open(log) if line.startswith("add ")) if os.path.exists(log) else 0
with open(log, "a") as f:
    f.write(f"{{action}} {{name}} {{value}}\n")
behaviour = "{behaviour}"
if behaviour == "fail" or (behaviour == "fail-second" and action == "add" and adds == 1):
    sys.stderr.write("provider API: zone example.test not found\n")
    sys.exit(3)
if behaviour == "wrong" and action == "add":
    value = "not-" + value
path = "/set-txt" if action == "add" else "/clear-txt"
body = {{"host": name + ".", "value": value}}
urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:{management}" + path, json.dumps(body).encode(), method="POST"))
"#
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    hook
}

fn hook_method(hook: std::path::PathBuf) -> acme::ChallengeMethod {
    acme::ChallengeMethod::Dns01 { hook: Some(hook), resolvers: vec![], wait: Duration::from_secs(10) }
}

#[tokio::test(flavor = "multi_thread")]
async fn dns01_through_a_hook_issues_the_wildcard_certificate() {
    let Some(pebble) = start_pebble(true, false) else { return };
    let state = tempfile::tempdir().unwrap();
    let hook = write_hook(state.path(), pebble.dns_management.unwrap(), "ok");
    let mut req = pebble.request(&["example.test", "*.example.test"], state.path());
    req.method = acme::ChallengeMethod::Dns01 { hook: Some(hook), resolvers: vec![], wait: Duration::from_secs(10) };
    let started = Instant::now();
    let cert = acme::issue(&req).await.unwrap_or_else(|e| panic!("{e:?}\n{}", pebble.log())).cert;
    eprintln!("DNS-01 issuance (2 names) took {:.2?}", started.elapsed());
    let names: Vec<_> = cert_facts(&cert.chain_pem).unwrap().dns_names.into_iter().collect();
    assert_eq!(names, ["*.example.test", "example.test"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_txt_value_or_a_failing_hook_is_a_clear_error() {
    let Some(pebble) = start_pebble(true, false) else { return };
    let state = tempfile::tempdir().unwrap();
    let mut req = pebble.request(&["example.test"], state.path());
    req.method = hook_method(write_hook(state.path(), pebble.dns_management.unwrap(), "wrong"));
    req.timeout = Duration::from_secs(15);
    let wrong = acme::issue(&req).await.expect_err("a wrong TXT value must fail");
    let msg = wrong.to_string();
    assert!(msg.starts_with("validation of example.test failed") && msg.contains("unauthorized"), "{msg}");

    req.method = hook_method(write_hook(state.path(), pebble.dns_management.unwrap(), "fail"));
    let failed = acme::issue(&req).await.expect_err("a failing hook must abort the order");
    let msg = failed.to_string();
    assert!(
        msg.contains("dns-hook-fail add _acme-challenge.example.test") && msg.contains("zone example.test not found"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn issuance_survives_nonce_rejection_and_slow_validation() {
    let Some(pebble) = start_pebble(false, true) else { return };
    let state = tempfile::tempdir().unwrap();
    let mut req = pebble.request(&["localhost"], state.path());
    req.timeout = Duration::from_secs(60);
    let started = Instant::now();
    let issued = acme::issue(&req).await.unwrap_or_else(|e| panic!("{e:?}\n{}", pebble.log()));
    eprintln!(
        "with 30% nonce rejection and VA delays: issued in {:.1?}, {} order(s)",
        started.elapsed(),
        issued.attempts
    );
    assert!(issued.attempts <= acme::MAX_ATTEMPTS);
    assert_eq!(cert_facts(&issued.cert.chain_pem).unwrap().dns_names.len(), 1);
}

#[test]
fn certs_issue_writes_the_keys_layout_and_renews_only_when_due() {
    let Some(pebble) = pebble() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ok = astrtc()
        .args(["init", "--tls", "acme", "--acme-email", "ops@example.test", "--domain", "localhost"])
        .args(["--acme-directory", &pebble.directory])
        .arg("--acme-ca")
        .arg(pebble.dir.path().join("ca/ca.crt"))
        .args(["--http-port", &pebble.http01.port().to_string(), "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let spec = dir.path().join("astrtc.toml");
    let keys = dir.path().join("deploy/keys");
    let issue = |extra: &[&str]| {
        astrtc().args(["certs", "issue", "--spec"]).arg(&spec).arg("--keys").arg(&keys).args(extra).output().unwrap()
    };
    let started = Instant::now();
    let out = issue(&[]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), pebble.log());
    eprintln!("`astrtc certs issue` (HTTP-01) took {:.2?}", started.elapsed());
    let mode = |f: &str| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(keys.join(f)).unwrap().permissions()) & 0o777
    };
    assert_eq!((mode("asterisk.key"), mode("asterisk.pem"), mode("asterisk.crt")), (0o640, 0o640, 0o644));
    let crt = std::fs::read_to_string(keys.join("asterisk.crt")).unwrap();
    let key = std::fs::read_to_string(keys.join("asterisk.key")).unwrap();
    assert_eq!(std::fs::read_to_string(keys.join("asterisk.pem")).unwrap(), format!("{crt}{key}"));
    assert_eq!(cert_facts(&crt).unwrap().dns_names.into_iter().collect::<Vec<_>>(), ["localhost"]);

    // Not due: nothing changes, for `issue` and for `renew`.
    let out = issue(&[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not due"));
    let out = astrtc().args(["certs", "renew", "--spec"]).arg(&spec).arg("--keys").arg(&keys).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("not due"));
    assert_eq!(std::fs::read_to_string(keys.join("asterisk.crt")).unwrap(), crt);

    // A render carries the certificate over and stays current.
    let deploy = dir.path().join("deploy");
    assert!(astrtc()
        .args(["render", "--spec"])
        .arg(&spec)
        .arg("--out")
        .arg(&deploy)
        .output()
        .unwrap()
        .status
        .success());
    assert_eq!(std::fs::read_to_string(keys.join("asterisk.crt")).unwrap(), crt);
    let check = astrtc().args(["render", "--check", "--spec"]).arg(&spec).arg("--out").arg(&deploy).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));

    // A failed renewal (responder on the wrong port) exits 1 and leaves the files untouched.
    let text = std::fs::read_to_string(&spec).unwrap();
    let wrong = text.replace(&format!("http_port = {}", pebble.http01.port()), &format!("http_port = {}", free_port()));
    assert_ne!(wrong, text);
    std::fs::write(&spec, wrong).unwrap();
    // A new account: authorizations belong to an account, so the CA cannot hand back the valid
    // one from the first order (Pebble did once in CI for another test, despite AUTHZREUSE=0).
    std::fs::remove_dir_all(dir.path().join(".astrtc/acme")).unwrap();
    let out = issue(&["--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("validation of localhost failed"));
    assert_eq!(std::fs::read_to_string(keys.join("asterisk.crt")).unwrap(), crt);
    assert_eq!(std::fs::read_to_string(keys.join("asterisk.key")).unwrap(), key);
}

/// `astrtc certs renew` (cron-safe): a 90-day certificate with 40 days left is not due under the
/// default policy (a third of the lifetime) and nothing is written; with `renew_before_days = 45`
/// it is due and Pebble's certificate replaces it; after that, not due again, nothing written.
#[test]
fn certs_renew_renews_only_a_due_certificate() {
    let Some(pebble) = pebble() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = acme_spec(&pebble, dir.path(), "http-01", "localhost", |t| t);
    let keys = dir.path().join("keys");
    let old = certs::make(&["localhost"], certs::days(-50)..certs::days(40), None);
    certs::store(&keys, &old.cert_pem, &old.key_pem);
    let renew = || astrtc().args(["certs", "renew", "--spec"]).arg(&spec).arg("--keys").arg(&keys).output().unwrap();
    let not_due = |what: &str| {
        let before = certs::listing(&keys);
        let out = renew();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success() && stdout.contains("; not due"), "{what}: {stdout}");
        assert_eq!(certs::listing(&keys), before, "{what}: renew wrote something");
    };
    not_due("40 of 90 days left, default policy");

    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, with_acme_lines(text, "renew_before_days = 45")).unwrap();
    let out = renew();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}\n{}", String::from_utf8_lossy(&out.stderr), pebble.log());
    assert!(stdout.starts_with(&format!("wrote {}", keys.display())), "{stdout}");
    let new = std::fs::read_to_string(keys.join("asterisk.crt")).unwrap();
    let (was, now) = (cert_facts(&old.cert_pem).unwrap(), cert_facts(&new).unwrap());
    assert_ne!(now.serial, was.serial);
    assert_ne!(now.issuer_der, was.issuer_der, "not issued by Pebble");
    assert_eq!(now.dns_names.into_iter().collect::<Vec<_>>(), ["localhost"]);
    let key = std::fs::read_to_string(keys.join("asterisk.key")).unwrap();
    assert!(astrtc::certs::store::key_matches(&key, &now.spki_der));
    not_due("Pebble's fresh certificate, renew_before_days = 45");
}

/// DNS-01 records a hook added are removed when the order fails: after the CA refused a wrong
/// value, and after the hook itself failed on the second of two names. The hook is called with
/// `remove NAME VALUE` for exactly what it added, and the DNS server no longer answers with it.
#[tokio::test(flavor = "multi_thread")]
async fn dns_hook_records_are_removed_after_a_failed_order() {
    let Some(pebble) = start_pebble(true, false) else { return };
    let (management, dns) = (pebble.dns_management.unwrap(), pebble.dns.unwrap());
    let state = tempfile::tempdir().unwrap();
    let txt = |name: &str| {
        let name = name.to_string();
        async move { astrtc::certs::dns::txt_at(&name, &[dns]).await.unwrap() }
    };
    let calls = |log: &Path| -> Vec<Vec<String>> {
        std::fs::read_to_string(log).unwrap().lines().map(|l| l.split(' ').map(str::to_string).collect()).collect()
    };

    // The CA refuses the order (wrong value published).
    let hook = write_hook(state.path(), management, "wrong");
    let log = hook.with_extension("log");
    let mut req = pebble.request(&["wrong.example.test"], state.path());
    req.method = hook_method(hook);
    req.timeout = Duration::from_secs(15);
    let err = acme::issue(&req).await.expect_err("a wrong TXT value must fail").to_string();
    assert!(err.starts_with("validation of wrong.example.test failed"), "{err}");
    let record = "_acme-challenge.wrong.example.test";
    let c = calls(&log);
    assert_eq!(c.len(), 2, "{c:?}");
    assert_eq!((c[0][0].as_str(), c[0][1].as_str()), ("add", record), "{c:?}");
    assert_eq!(c[1], ["remove".to_string(), record.to_string(), c[0][2].clone()], "{c:?}");
    assert_eq!(txt(record).await, Vec::<String>::new(), "the record is still published");

    // The hook fails on the second name: the first name's record is removed.
    let hook = write_hook(state.path(), management, "fail-second");
    let log = hook.with_extension("log");
    let mut req = pebble.request(&["a.example.test", "b.example.test"], state.path());
    req.method = hook_method(hook);
    let err = acme::issue(&req).await.expect_err("a failing hook must abort the order").to_string();
    assert!(err.contains("zone example.test not found"), "{err}");
    let c = calls(&log);
    assert_eq!(c.len(), 3, "{c:?}");
    assert_eq!((c[0][0].as_str(), c[1][0].as_str()), ("add", "add"), "{c:?}");
    assert_eq!(c[2], ["remove".to_string(), c[0][1].clone(), c[0][2].clone()], "only the added record goes: {c:?}");
    assert_eq!(txt(&c[0][1]).await, Vec::<String>::new(), "the first record is still published");

    // The lookup does see a record that is there (so "gone" above means gone).
    set_txt(management, "_acme-challenge.control.example.test", "present");
    assert_eq!(txt("_acme-challenge.control.example.test").await, ["present"]);
}

/// An ACME-mode spec pointed at `pebble`, made by `astrtc init`, with `edit` applied to its text.
pub(crate) fn acme_spec(
    pebble: &Pebble,
    dir: &Path,
    challenge: &str,
    domain: &str,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    let out = astrtc()
        .args(["init", "--tls", "acme", "--acme-email", "ops@example.test", "--domain", domain])
        .args(["--acme-directory", &pebble.directory, "--challenge", challenge])
        .arg("--acme-ca")
        .arg(pebble.dir.path().join("ca/ca.crt"))
        .args(["--http-port", &pebble.http01.port().to_string(), "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let spec = dir.join("astrtc.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    let edited = edit(text.clone());
    std::fs::write(&spec, edited).unwrap();
    spec
}

/// Adds lines right after `challenge = "…"` in `[tls.acme]`.
pub(crate) fn with_acme_lines(text: String, lines: &str) -> String {
    let at = text.find("\nchallenge = ").expect("acme table") + 1;
    let eol = at + text[at..].find('\n').unwrap() + 1;
    format!("{}{lines}\n{}", &text[..eol], &text[eol..])
}

/// Lines of a child's stream, as they come.
pub(crate) fn lines_of(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stream)).map_while(Result::ok) {
            eprintln!("  | {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns it and everything seen before.
pub(crate) fn wait_line(
    rx: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    within: Duration,
) -> (String, Vec<String>) {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return (line, seen),
            Ok(line) => seen.push(line),
            Err(_) => panic!("no line containing {needle:?} within {within:?}; seen:\n{}", seen.join("\n")),
        }
    }
}

fn set_txt(management: u16, name: &str, value: &str) {
    let body = serde_json::json!({"host": format!("{name}."), "value": value}).to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", management)).unwrap();
    std::io::Write::write_all(
        &mut s,
        format!(
            "POST /set-txt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn manual_dns01_prints_the_record_and_waits_until_it_is_visible() {
    let Some(pebble) = start_pebble(true, false) else { return };
    let dir = tempfile::tempdir().unwrap();
    let resolver = pebble.dns.unwrap();
    let spec = acme_spec(&pebble, dir.path(), "dns-01", "example.test", |t| {
        with_acme_lines(t, &format!("dns_resolvers = [\"{resolver}\"]\ndns_timeout = 60"))
    });
    let keys = dir.path().join("keys");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("astrtc"))
        .args(["certs", "issue", "--spec"])
        .arg(&spec)
        .arg("--keys")
        .arg(&keys)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = lines_of(child.stderr.take().unwrap());
    let (record, _) = wait_line(&err, " IN TXT ", Duration::from_secs(30));
    // `    _acme-challenge.example.test. 60 IN TXT "VALUE"`
    let fields: Vec<&str> = record.split_whitespace().collect();
    assert_eq!(fields[0], "_acme-challenge.example.test.");
    let value = fields[4].trim_matches('"');
    assert_eq!(value.len(), 43, "base64url SHA-256: {value}");
    // astrtc waits (asks the resolver) and does not tell the CA before the record exists.
    let started = Instant::now();
    wait_line(&err, "waiting until 1 TXT record(s) are visible", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3)); // a person taking their time at the DNS console
    assert!(child.try_wait().unwrap().is_none(), "astrtc did not wait for the record");
    set_txt(pebble.dns_management.unwrap(), "_acme-challenge.example.test", value);
    let (visible, _) = wait_line(&err, "visible after", Duration::from_secs(20));
    eprintln!("manual DNS-01: {visible} ({:.1?} after the record was made)", started.elapsed());
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", pebble.log());
    wait_line(&err, "may be removed now", Duration::from_secs(5));
    let crt = std::fs::read_to_string(keys.join("asterisk.crt")).unwrap();
    assert_eq!(cert_facts(&crt).unwrap().dns_names.into_iter().collect::<Vec<_>>(), ["example.test"]);

    // A record that never appears: a clear error naming it, exit 1, the files untouched. A name
    // never validated before, so the CA cannot hand back a still-valid authorization (seen once
    // in CI for the same name, even with PEBBLE_AUTHZREUSE=0).
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("dns_timeout = 60", "dns_timeout = 3")
        .replace("domain = \"example.test\"", "domain = \"never.example.test\"");
    std::fs::write(&spec, text).unwrap();
    let out =
        astrtc().args(["certs", "issue", "--force", "--spec"]).arg(&spec).arg("--keys").arg(&keys).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        pebble.log()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("_acme-challenge.never.example.test") && stderr.contains("was not visible"), "{stderr}");
    assert_eq!(std::fs::read_to_string(keys.join("asterisk.crt")).unwrap(), crt);
}

/// A certificate for `names` from a throwaway CA, valid for `days`, in the keys layout.
pub(crate) fn short_lived_cert(keys: &Path, names: &[&str], days: i64) -> String {
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let layout = astrtc::certs::CertLayout { chain_pem: cert.pem(), key_pem: key.serialize_pem(), ca_pem: None };
    let access = astrtc::plan::SecretAccess { gid: 0, chown: false, group_add: None };
    astrtc::certs::store::write(keys, &layout, access).unwrap();
    layout.chain_pem
}

fn spawn_watch(
    spec: &Path,
    keys: &Path,
) -> (Child, std::sync::mpsc::Receiver<String>, std::sync::mpsc::Receiver<String>) {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("astrtc"))
        .args(["certs", "watch", "--retry-initial", "1", "--retry-max", "4", "--spec"])
        .arg(spec)
        .arg("--keys")
        .arg(keys)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines_of(child.stdout.take().unwrap());
    let err = lines_of(child.stderr.take().unwrap());
    (child, out, err)
}

#[test]
fn watch_rides_out_an_outage_with_backoff_and_keeps_the_current_certificate() {
    let Some(mut pebble) = pebble() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = acme_spec(&pebble, dir.path(), "http-01", "localhost", |t| with_acme_lines(t, "renew_before_days = 30"));
    let keys = dir.path().join("keys");
    // A certificate that is due (10 days left, renewal 30 days before expiry), then an outage.
    let old = short_lived_cert(&keys, &["localhost"], 10);
    pebble.stop();
    let (mut watch, out, err) = spawn_watch(&spec, &keys);
    let mut failures = Vec::new();
    for n in 1..=3 {
        let (line, _) = wait_line(&err, &format!("failure {n} in a row"), Duration::from_secs(30));
        failures.push(Instant::now());
        assert!(
            line.contains("the current certificate stays in place (10 days left)") || line.contains("(9 days left)"),
            "{line}"
        );
        // The old certificate is still there, and still usable for the health check.
        assert_eq!(std::fs::read_to_string(keys.join("asterisk.crt")).unwrap(), old);
        let check = astrtc().args(["certs", "check", "--spec"]).arg(&spec).arg("--keys").arg(&keys).output().unwrap();
        assert!(check.status.success());
    }
    // Exponential: 1 s after the first failure, 2 s after the second (then 4 s, the cap).
    let gaps: Vec<Duration> = failures.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("retry gaps during the outage: {gaps:?}");
    assert!(gaps[0] >= Duration::from_millis(950) && gaps[1] >= Duration::from_millis(1950), "{gaps:?}");
    pebble.start_again();
    let started = Instant::now();
    let (wrote, _) = wait_line(&out, "wrote ", Duration::from_secs(30));
    eprintln!("renewed {:.1?} after the ACME server came back: {wrote}", started.elapsed());
    let new = std::fs::read_to_string(keys.join("asterisk.crt")).unwrap();
    assert_ne!(new, old);
    // Pebble's 5-year certificate is not due for years: the watch sleeps (at most 12 h per check).
    wait_line(&out, "next check in 12 h", Duration::from_secs(5));
    assert!(watch.try_wait().unwrap().is_none());
    let _ = watch.kill();
    let _ = watch.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_with_the_sidecar_serves_pebbles_certificate_and_renews_without_dropping_sessions() {
    if docker_off() {
        return;
    }
    let Some(pebble) = pebble() else { return };
    let (dir, _) = deployment();
    // The same deployment in ACME mode, pointed at Pebble (HTTP-01 on Pebble's validation port).
    let spec = dir.path().join("astrtc.toml");
    let text = std::fs::read_to_string(&spec).unwrap().replace("name = \"astrtc-test\"", "name = \"astrtc-acme-test\"");
    let text = text.replace("[tls]\n", "[tls]\nmode = \"acme\"\n")
        + &format!(
            "\n[tls.acme]\nemail = \"ops@example.test\"\ndirectory = \"{}\"\nca_bundle = \"{}\"\nhttp_port = {}\n",
            pebble.directory,
            pebble.dir.path().join("ca/ca.crt").display(),
            pebble.http01.port()
        );
    std::fs::write(&spec, text).unwrap();
    let deploy = dir.path().join("deploy");
    let out = astrtc().args(["render", "--spec"]).arg(&spec).arg("--out").arg(&deploy).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan = crate::common::plan_for(&spec, astrtc::plan::HostFacts::detect()).unwrap();
    ensure_image();
    ensure_sidecar();
    ensure_guard();

    // Contract: `docker compose up --wait` returns once Asterisk is healthy, which it can only
    // become after the sidecar has a certificate.
    let project = ComposeProject { dir: deploy.clone() };
    let started = Instant::now();
    let up = project.run(&["up", "-d", "--wait"]);
    let logs = || String::from_utf8_lossy(&project.run(&["logs", "--no-color"]).stdout).into_owned();
    assert!(up.status.success(), "{}\n{}\n{}", String::from_utf8_lossy(&up.stderr), logs(), pebble.log());
    eprintln!("docker compose up --wait (ACME via Pebble, first issuance included): {:.1?}", started.elapsed());

    // 8089 serves the Pebble-issued certificate: it chains to Pebble's root for the domain.
    let root = pebble.root_pem();
    let wss = SocketAddr::from(([127, 0, 0, 1], plan.network.wss_port));
    let served =
        astrtc::verify::tls::check_tls(wss, "localhost", &root).unwrap_or_else(|e| panic!("{e:?}\n{}", logs()));
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", "-T", "certs"];
        all.extend_from_slice(args);
        let o = project.run(&all);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let in_volume = exec(&["cat", "/var/lib/astrtc/keys/asterisk.crt"]);
    assert_eq!(served.leaf.serial, cert_facts(&in_volume).unwrap().serial);
    assert_eq!(
        exec(&["stat", "-L", "-c", "%a %u:%g", "/var/lib/astrtc/keys/asterisk.key"]).trim(),
        "640 10061:10060",
        "the key is for the sidecar and the asterisk group only"
    );

    // Rotation under load: a registered WSS session keeps re-registering while the certificate
    // is renewed; Asterisk is not restarted.
    let asterisk_id = String::from_utf8_lossy(&project.run(&["ps", "-q", "asterisk"]).stdout).trim().to_string();
    let state = |id: &str| {
        let o = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}} {{.RestartCount}} {{.State.StartedAt}}", id])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let before = state(&asterisk_id);
    let password = plan.endpoints.iter().find(|e| e.id == "199").unwrap().password.expose().to_string();
    let conn = WsConn::connect(wss, "localhost", &root, "/ws").await.unwrap();
    let mut session = UserAgent::new(Transport::wss(conn), "199", &password, "localhost");
    session.register(60).await.expect("registered before the renewal");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let code = |r: Result<SipMessage, SipError>| r.ok().and_then(|m| m.code()).unwrap_or(0);
            let mut codes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                codes.push(code(session.register(60).await));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            codes.push(code(session.register(0).await));
            session.close().await;
            codes
        })
    };
    let issued = exec(&["astrtc", "certs", "issue", "--force"]);
    let renewed = Instant::now();
    let new_serial = cert_facts(&exec(&["cat", "/var/lib/astrtc/keys/asterisk.crt"])).unwrap().serial;
    assert_ne!(new_serial, served.leaf.serial, "{issued}");
    loop {
        if astrtc::verify::tls::check_tls(wss, "localhost", &root).is_ok_and(|r| r.leaf.serial == new_serial) {
            break;
        }
        assert!(renewed.elapsed() < Duration::from_secs(30), "the renewed certificate was never served\n{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reload_time = renewed.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let codes = load.await.unwrap();
    eprintln!(
        "renewal served {reload_time:.1?} after `certs issue` returned (reloader polls every 5 s); {} REGISTERs on \
         the session opened before the renewal, answers: {:?}",
        codes.len(),
        codes.iter().collect::<BTreeSet<_>>()
    );
    assert!(codes.len() >= 3 && codes.iter().all(|&c| c == 200), "the WSS session broke: {codes:?}");
    assert_eq!(state(&asterisk_id), before, "Asterisk was restarted");
    assert!(logs().contains("astrtc-reload: reloaded: module reload http: keys/asterisk.crt"), "no reload in the logs");
}

/// `n` issuances: how long each took and how many orders each needed.
async fn timed_issuances(req: &AcmeRequest, n: usize) -> (Vec<Duration>, Vec<u32>) {
    let (mut times, mut orders) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let issued = acme::issue(req).await.unwrap();
        times.push(t.elapsed());
        orders.push(issued.attempts);
    }
    (times, orders)
}

/// Benchmark, not a test: run by `make bench` (`--ignored`). Issuance times against Pebble on
/// loopback, and orders needed under nonce rejection. Reports figures; asserts only success.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: make bench"]
async fn bench_acme_issuance() {
    fn summary(name: &str, mut times: Vec<Duration>) {
        times.sort();
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{name}: n={} min {:.0} ms, median {:.0} ms, max {:.0} ms",
            times.len(),
            ms(&times[0]),
            ms(&times[times.len() / 2]),
            ms(times.last().unwrap())
        );
    }
    let Some(pebble) = pebble() else { return };
    let state = tempfile::tempdir().unwrap();
    let req = pebble.request(&["localhost"], state.path());
    acme::issue(&req).await.unwrap(); // account creation, not timed
    summary("HTTP-01, 1 name", timed_issuances(&req, 10).await.0);
    drop(pebble);

    let Some(pebble) = start_pebble(true, false) else { return };
    let state = tempfile::tempdir().unwrap();
    let mut req = pebble.request(&["example.test", "*.example.test"], state.path());
    req.method = acme::ChallengeMethod::Dns01 {
        hook: Some(write_hook(state.path(), pebble.dns_management.unwrap(), "ok")),
        resolvers: vec![pebble.dns.unwrap()],
        wait: Duration::from_secs(30),
    };
    acme::issue(&req).await.unwrap();
    let times = timed_issuances(&req, 10).await.0;
    summary("DNS-01 via hook + propagation check, example.test + *.example.test", times);
    drop(pebble);

    let Some(pebble) = start_pebble(false, true) else { return };
    let state = tempfile::tempdir().unwrap();
    let mut req = pebble.request(&["localhost"], state.path());
    req.timeout = Duration::from_secs(60);
    let (times, orders) = timed_issuances(&req, 5).await;
    summary("HTTP-01 with 30 % nonce rejection and 0-15 s validation delays", times);
    println!("  orders per issuance (1 = no whole-order retry): {orders:?}");
}

/// The sidecar image binds the HTTP-01 port 80 as its non-root user with only
/// CAP_NET_BIND_SERVICE (a file capability on the binary), as compose runs it; with
/// no-new-privileges the capability is not granted and binding fails.
#[test]
fn the_sidecar_image_answers_http01_on_port_80_without_root() {
    if docker_off() {
        return;
    }
    if TcpListener::bind("0.0.0.0:80").is_err() {
        skip("port 80 is in use on this host, or this user may not bind it (CI runs as root)");
        return;
    }
    let Some(pebble) = start_pebble_with(false, false, None, Some(80)) else { return };
    ensure_sidecar();
    let dir = tempfile::tempdir().unwrap();
    let config = astrtc::plan::Acme {
        names: vec!["localhost".into()],
        email: "ops@example.test".into(),
        directory: pebble.directory.clone(),
        ca_bundle: Some("/etc/astrtc/acme-ca.pem".into()),
        challenge: astrtc::spec::AcmeChallenge::Http01,
        http_port: 80,
        dns_hook: None,
        dns_resolvers: vec![],
        dns_timeout: 600,
        renew_before_days: None,
        account_dir: "/var/lib/astrtc/acme".into(),
    };
    std::fs::write(dir.path().join("acme.toml"), toml::to_string(&config).unwrap()).unwrap();
    std::fs::copy(pebble.dir.path().join("ca/ca.crt"), dir.path().join("acme-ca.pem")).unwrap();
    for f in ["", "acme.toml", "acme-ca.pem"] {
        let mode = if f.is_empty() { 0o755 } else { 0o644 };
        std::fs::set_permissions(dir.path().join(f), std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let issue = |extra: &[&str]| {
        Command::new("docker")
            .args(["run", "--rm", "--network", "host", "--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE"])
            .args(extra)
            .arg("-v")
            .arg(format!("{}:/etc/astrtc:ro", dir.path().display()))
            .args([astrtc::image::SIDECAR_IMAGE, "certs", "issue"])
            .output()
            .unwrap()
    };
    let out = issue(&[]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("wrote /var/lib/astrtc/keys"), "{text}\n{}", pebble.log());
    let out = issue(&["--security-opt", "no-new-privileges:true"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("failed to listen for HTTP-01 on 0.0.0.0:80"), "{text}");
}
