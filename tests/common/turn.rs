//! A TURN server for a test: Debian's coturn (`turnserver`) on an address and free ports the test
//! chooses, with one long-term-credential user, started in the foreground and killed when
//! dropped. Ready once it answers a STUN Binding request.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{ports, tool_missing};

/// A running coturn.
pub struct Coturn {
    child: Child,
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Coturn {
    /// Starts coturn on `ip` with user `user`:`password`; `None` (after a counted skip) when it
    /// is not installed.
    pub async fn start(ip: IpAddr, user: &str, password: &str) -> Option<Coturn> {
        if tool_missing(Path::new("/usr/bin/turnserver"), "apt-get install coturn; make deps-net") {
            return None;
        }
        let port = ports::free_port();
        let relay = ports::free_range(20);
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("/usr/bin/turnserver")
            .args(["-n", "--lt-cred-mech", "--realm=astrtc.test", "--no-tls", "--no-dtls", "--no-cli", "--simple-log"])
            .args(["--no-tcp-relay", "--fingerprint"])
            .arg(format!("--listening-ip={ip}"))
            .arg(format!("--relay-ip={ip}"))
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={relay}"))
            .arg(format!("--max-port={}", relay + 19))
            .arg(format!("--user={user}:{password}"))
            .arg(format!("--pidfile={}", dir.path().join("turn.pid").display()))
            .arg(format!("--log-file={}", dir.path().join("turn.log").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver starts");
        let turn = Coturn { child, addr: SocketAddr::new(ip, port), dir };
        // Readiness: a STUN Binding request is answered.
        let started = Instant::now();
        let sock = tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0)).await.unwrap();
        while astrtc::media::turn::binding(&sock, turn.addr).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "coturn never answered:\n{}", turn.log());
        }
        Some(turn)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("turn.log")).unwrap_or_default()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
