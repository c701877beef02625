//! ACME issuance against a real ACME server: Debian's Pebble (Let's Encrypt's test server),
//! started here on loopback with a TLS certificate from a throwaway local CA.
//!
//! Needs `pebble` (`make deps-acme`). Outside CI, a missing pebble skips these tests with a
//! message; in CI they fail.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use astrtc::certs::acme::{self, AcmeRequest};
use astrtc::certs::cert_facts;
use astrtc::certs::local_ca::LocalCa;

struct Pebble {
    child: Child,
    challtestsrv: Option<Child>,
    /// Management API of pebble-challtestsrv (DNS-01 tests).
    dns_management: Option<u16>,
    dir: tempfile::TempDir,
    directory: String,
    management: SocketAddr,
    http01: SocketAddr,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(c) = &mut self.challtestsrv {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn pebble() -> Option<Pebble> {
    start_pebble(false, false)
}

/// Waits until a TCP port on loopback accepts connections.
fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pebble, and with `with_dns` pebble-challtestsrv as its DNS server (answers A queries with
/// 127.0.0.1 and serves the TXT records the DNS-01 hook sets).
/// With `faults`, Pebble rejects 30 % of nonces and delays validations randomly (0-15 s), as
/// its authors recommend for testing clients.
fn start_pebble(with_dns: bool, faults: bool) -> Option<Pebble> {
    if !Path::new("/usr/bin/pebble").exists() {
        assert!(std::env::var_os("CI").is_none(), "pebble is not installed (make deps-acme)");
        eprintln!("skipping: pebble is not installed (make deps-acme)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    // Pebble ships no TLS certificate: make one for localhost, from a CA the client trusts.
    let ca = LocalCa::load_or_create(&dir.path().join("ca"), "pebble").unwrap();
    let tls = ca.leaf(&["localhost".to_string()], None).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &tls.chain_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &tls.key_pem).unwrap();
    let (api, mgmt, http01, tls_alpn) = (free_port(), free_port(), free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{api}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt}"),
        "certificate": dir.path().join("tls.crt"),
        "privateKey": dir.path().join("tls.key"),
        "httpPort": http01,
        "tlsPort": tls_alpn,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false
    }});
    std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
    let log = std::fs::File::create(dir.path().join("pebble.log")).unwrap();
    let (mut challtestsrv, mut dns_management, mut dns_args) = (None, None, Vec::new());
    if with_dns {
        let (dns, mgmt) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("challtestsrv.log")).unwrap();
        challtestsrv = Some(
            Command::new("/usr/bin/pebble-challtestsrv")
                .args([
                    "-defaultIPv6",
                    "",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                ])
                .args(["-dns01", &format!("127.0.0.1:{dns}"), "-management", &format!("127.0.0.1:{mgmt}")])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_port(mgmt, "pebble-challtestsrv");
        dns_management = Some(mgmt);
        dns_args = vec!["-dnsserver".to_string(), format!("127.0.0.1:{dns}")];
    }
    let child = Command::new("/usr/bin/pebble")
        .args(&dns_args)
        .arg("-config")
        .arg(dir.path().join("pebble.json"))
        .env("PEBBLE_VA_NOSLEEP", if faults { "0" } else { "1" })
        .env("PEBBLE_WFE_NONCEREJECT", if faults { "30" } else { "0" })
        // Never reuse a valid authorization: every order must prove control again.
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let p = Pebble {
        child,
        challtestsrv,
        dns_management,
        directory: format!("https://localhost:{api}/dir"),
        management: SocketAddr::from(([127, 0, 0, 1], mgmt)),
        http01: SocketAddr::from(([127, 0, 0, 1], http01)),
        dir,
    };
    // Readiness: the API port accepts connections.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", api)).is_err() {
        assert!(Instant::now() < deadline, "pebble did not start: {}", p.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(p)
}

impl Pebble {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    fn request(&self, names: &[&str], account_dir: &Path) -> AcmeRequest {
        AcmeRequest {
            directory: self.directory.clone(),
            email: Some("ops@example.test".into()),
            server_roots: Some(self.dir.path().join("ca/ca.crt")),
            names: names.iter().map(|n| n.to_string()).collect(),
            method: acme::ChallengeMethod::Http01 { listen: self.http01 },
            account_file: acme::account_file(account_dir, &self.directory),
            timeout: Duration::from_secs(30),
        }
    }

    /// Pebble's issuing root (it changes every run), from the management interface.
    fn root_pem(&self) -> String {
        let ca = std::fs::read_to_string(self.dir.path().join("ca/ca.crt")).unwrap();
        let addr = self.management;
        let mut tls = astrtc::verify::tls::https_get(addr, "localhost", &ca, "/roots/0").unwrap();
        tls.retain(|c| c != '\r');
        tls.split_once("\n\n").map(|(_, body)| body.to_string()).unwrap_or(tls)
    }
}

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

/// A DNS hook for pebble-challtestsrv, as a user would write one for their DNS provider.
/// `behaviour`: "ok"; "wrong" publishes a wrong value; "fail" fails like a provider API error.
fn write_hook(dir: &Path, management: u16, behaviour: &str) -> std::path::PathBuf {
    let hook = dir.join(format!("dns-hook-{behaviour}"));
    std::fs::write(
        &hook,
        format!(
            r#"#!/usr/bin/env python3
import json, sys, urllib.request
action, name, value = sys.argv[1:4]
behaviour = "{behaviour}"
if behaviour == "fail":
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

#[tokio::test(flavor = "multi_thread")]
async fn dns01_through_a_hook_issues_the_wildcard_certificate() {
    let Some(pebble) = start_pebble(true, false) else { return };
    let state = tempfile::tempdir().unwrap();
    let hook = write_hook(state.path(), pebble.dns_management.unwrap(), "ok");
    let mut req = pebble.request(&["example.test", "*.example.test"], state.path());
    req.method = acme::ChallengeMethod::Dns01Hook { hook };
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
    req.method =
        acme::ChallengeMethod::Dns01Hook { hook: write_hook(state.path(), pebble.dns_management.unwrap(), "wrong") };
    req.timeout = Duration::from_secs(15);
    let wrong = acme::issue(&req).await.expect_err("a wrong TXT value must fail");
    let msg = wrong.to_string();
    assert!(msg.starts_with("validation of example.test failed") && msg.contains("unauthorized"), "{msg}");

    req.method =
        acme::ChallengeMethod::Dns01Hook { hook: write_hook(state.path(), pebble.dns_management.unwrap(), "fail") };
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

fn astrtc() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("astrtc").unwrap()
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
    let out = issue(&["--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("validation of localhost failed"));
    assert_eq!(std::fs::read_to_string(keys.join("asterisk.crt")).unwrap(), crt);
    assert_eq!(std::fs::read_to_string(keys.join("asterisk.key")).unwrap(), key);
}
