//! A real ACME server for the tests: Debian's Pebble (Let's Encrypt's test server), started on
//! loopback on free ports with a TLS certificate from a throwaway local CA, and with
//! pebble-challtestsrv as its DNS server for DNS-01. Stopped when dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use astrtc::certs::acme::{self, AcmeRequest};
use astrtc::certs::local_ca::LocalCa;

use super::ports::free_port;

/// A running Pebble.
pub struct Pebble {
    child: Child,
    challtestsrv: Option<Child>,
    /// Management API of pebble-challtestsrv (DNS-01 tests).
    pub dns_management: Option<u16>,
    /// pebble-challtestsrv's DNS server.
    pub dns: Option<SocketAddr>,
    /// How Pebble was started, to start it again after an outage.
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// Its working directory: config, TLS CA (`ca/ca.crt`), log.
    pub dir: tempfile::TempDir,
    /// The ACME directory URL.
    pub directory: String,
    /// Pebble's management API.
    pub management: SocketAddr,
    /// Where Pebble sends HTTP-01 validations.
    pub http01: SocketAddr,
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

/// Pebble without faults or DNS.
pub fn pebble() -> Option<Pebble> {
    start_pebble(false, false)
}

/// Pebble, with pebble-challtestsrv as DNS and/or with faults.
pub fn start_pebble(with_dns: bool, faults: bool) -> Option<Pebble> {
    start_pebble_with(with_dns, faults, None, None)
}

/// Waits until a TCP port on loopback accepts connections.
pub fn wait_port(port: u16, what: &str) {
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
pub fn start_pebble_with(with_dns: bool, faults: bool, va_sleep: Option<u32>, http01: Option<u16>) -> Option<Pebble> {
    if super::tool_missing(Path::new("/usr/bin/pebble"), "make deps-acme") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    // Pebble ships no TLS certificate: make one for localhost, from a CA the client trusts.
    let ca = LocalCa::load_or_create(&dir.path().join("ca"), "pebble").unwrap();
    let tls = ca.leaf(&["localhost".to_string()], None).unwrap();
    std::fs::write(dir.path().join("tls.crt"), &tls.chain_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &tls.key_pem).unwrap();
    let (api, mgmt, tls_alpn) = (free_port(), free_port(), free_port());
    let http01 = http01.unwrap_or_else(free_port);
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
    let (mut challtestsrv, mut dns_management, mut dns_args, mut dns_addr) = (None, None, Vec::new(), None);
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
        dns_addr = Some(SocketAddr::from(([127, 0, 0, 1], dns)));
        dns_args = vec!["-dnsserver".to_string(), format!("127.0.0.1:{dns}")];
    }
    let mut args = dns_args;
    args.extend(["-config".to_string(), dir.path().join("pebble.json").display().to_string()]);
    let mut envs: Vec<(String, String)> = vec![
        ("PEBBLE_VA_NOSLEEP".into(), if faults || va_sleep.is_some() { "0" } else { "1" }.into()),
        ("PEBBLE_WFE_NONCEREJECT".into(), if faults { "30" } else { "0" }.into()),
        // Never reuse a valid authorization: every order must prove control again.
        ("PEBBLE_AUTHZREUSE".into(), "0".into()),
    ];
    if let Some(secs) = va_sleep {
        envs.push(("PEBBLE_VA_SLEEPTIME".into(), secs.to_string()));
    }
    let child = spawn_pebble(dir.path(), &args, &envs, log);
    let p = Pebble {
        child,
        challtestsrv,
        dns_management,
        dns: dns_addr,
        args,
        envs,
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

fn spawn_pebble(dir: &Path, args: &[String], envs: &[(String, String)], log: std::fs::File) -> Child {
    Command::new("/usr/bin/pebble")
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

impl Pebble {
    /// An outage: the ACME server stops answering.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server is back, on the same ports and with the same (in-memory) state lost, as after
    /// a restart.
    pub fn start_again(&mut self) {
        let log = std::fs::OpenOptions::new().append(true).open(self.dir.path().join("pebble.log")).unwrap();
        self.child = spawn_pebble(self.dir.path(), &self.args, &self.envs, log);
    }

    /// Pebble's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// An HTTP-01 request for `names` against this Pebble.
    pub fn request(&self, names: &[&str], account_dir: &Path) -> AcmeRequest {
        AcmeRequest {
            directory: self.directory.clone(),
            email: Some("ops@example.test".into()),
            server_roots: Some(self.dir.path().join("ca/ca.crt")),
            names: names.iter().map(|n| n.to_string()).collect(),
            method: acme::ChallengeMethod::Http01 { listen: self.http01 },
            account_file: acme::account_file(account_dir, &self.directory),
            timeout: Duration::from_secs(30),
            progress: acme::Progress::default(),
        }
    }

    /// Pebble's issuing root (it changes every run), from the management interface.
    pub fn root_pem(&self) -> String {
        let ca = std::fs::read_to_string(self.dir.path().join("ca/ca.crt")).unwrap();
        let addr = self.management;
        let mut tls = astrtc::verify::tls::https_get(addr, "localhost", &ca, "/roots/0").unwrap();
        tls.retain(|c| c != '\r');
        tls.split_once("\n\n").map(|(_, body)| body.to_string()).unwrap_or(tls)
    }
}
