//! Machines "on the Internet" for the security audit: each [`Peer`] is a network namespace linked
//! to this host by its own veth pair, with its own address, so a deployment on the host network
//! sees every peer as a distinct source (the guard bans one and spares another). The deployment
//! is reached at the host's end of the link ([`Peer::server`]).
//!
//! Addresses come from 198.18.0.0/15 (RFC 2544, benchmarking: never routed), one /30 per peer,
//! chosen by process id and a counter and checked against the host's addresses; names carry the
//! process id, so tests running at once never collide. Traffic stays on the links: nothing is
//! routed or masqueraded out of the host. Dropping a peer kills what still runs inside it and
//! removes the namespace, both ends of the link and its `/etc/netns` entry, also when the test
//! panicked. (A general harness for namespaces, routers and NAT is being built apart; this one
//! is only what the audit needs.)

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A host in its own network namespace, linked to this one.
pub struct Peer {
    /// The namespace's name.
    pub ns: String,
    host_if: String,
    /// This host's address on the link: where the peer reaches the deployment.
    pub server: Ipv4Addr,
    /// The peer's own address: the source a deployment sees.
    pub ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("iproute2 runs")
}

fn must(args: &[&str]) {
    let out = ip(args);
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Whether this host has network namespaces to give (root, iproute2).
pub fn available() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("iproute2 (`ip`) is not installed".into()),
    }
}

impl Peer {
    /// A new peer; `role` (a few letters) only helps reading `ip netns` while a test runs.
    pub fn new(role: &str) -> Peer {
        let pid = std::process::id();
        let taken = String::from_utf8_lossy(&ip(&["-4", "-o", "addr"]).stdout).into_owned();
        loop {
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            // 32768 /30 blocks in 198.18.0.0/15.
            let block = (pid.wrapping_mul(97).wrapping_add(n)) % 32768;
            let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block * 4;
            let (server, peer) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
            if taken.contains(&format!(" {server}/")) || taken.contains(&format!(" {peer}/")) {
                continue;
            }
            let ns = format!("astrtc-{role}-{pid}-{n}");
            let host_if = format!("ax{pid:x}{n:x}");
            let peer_if = format!("{host_if}p");
            if Command::new("ip")
                .args(["link", "show", &host_if])
                .stderr(Stdio::null())
                .output()
                .unwrap()
                .status
                .success()
            {
                continue;
            }
            must(&["netns", "add", &ns]);
            let p = Peer { ns: ns.clone(), host_if: host_if.clone(), server, ip: peer };
            must(&["link", "add", &host_if, "type", "veth", "peer", "name", &peer_if]);
            must(&["link", "set", &peer_if, "netns", &ns]);
            must(&["addr", "add", &format!("{server}/30"), "dev", &host_if]);
            must(&["link", "set", &host_if, "up"]);
            for args in [
                vec!["addr", "add", &format!("{peer}/30"), "dev", &peer_if],
                vec!["link", "set", &peer_if, "up"],
                vec!["link", "set", "lo", "up"],
            ] {
                let mut full = vec!["-n", ns.as_str()];
                full.extend(args.iter().copied());
                must(&full);
            }
            return p;
        }
    }

    /// Routes everything from the peer through this host (a default route via [`Peer::server`]),
    /// so it reaches every address of the host, e.g. a relay's advertised media address. Its
    /// traffic still ends on the host: nothing is forwarded or masqueraded.
    pub fn route_all_to_host(&self) {
        must(&["-n", &self.ns, "route", "add", "default", "via", &self.server.to_string()]);
    }

    /// The peer's network as `address/30`, e.g. for `security.allow`.
    pub fn network(&self) -> String {
        format!("{}/30", Ipv4Addr::from(u32::from(self.ip) & !3))
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it opens are the peer's.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = PathBuf::from("/run/netns").join(&self.ns);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
            let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {}: {}", path.display(), std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// This host's end of the link (to capture the peer's traffic).
    pub fn link(&self) -> &str {
        &self.host_if
    }

    /// The deployment's `port` as this peer reaches it.
    pub fn to(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.server, port))
    }

    /// Runs sipvicious' `svcrack` from here against `user` at the deployment's SIP `port` (UDP)
    /// with passwords 1..=`guesses`; it gives up 5 s after the last answer. Returns its output
    /// ("since we last received a response" in it: it was cut off).
    pub fn svcrack(&self, port: u16, user: &str, guesses: u32) -> String {
        let out = self
            .command("svcrack")
            .args(["-u", user, "-r", &format!("1-{guesses}"), "-p", &port.to_string(), "--maximumtime", "5"])
            .arg(self.server.to_string())
            .output()
            .unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Whatever a test started in there and left running (never anything else: the namespace
        // is this peer's own).
        let pids = ip(&["netns", "pids", &self.ns]);
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: plain kill(2) of a process inside this peer's namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.ns));
    }
}
