//! Networks the tests build for themselves: a client in its own network namespace behind a
//! router namespace that translates it to a public address of its own (a home or office NAT, a
//! new source port per mapping), the router connected to this host by a veth pair — so a client "on another network" reaches a
//! deployment that runs on the host network, and the test decides what the path between them
//! lets through: a firewall that drops a UDP range, or a cloud-style 1:1 NAT where the server is
//! reachable only at a public address the router translates.
//!
//! Traffic never leaves this host: the router forwards only to this host's own addresses (or
//! only translated traffic, in the 1:1 NAT), the client's networks (its private one and its
//! public address) are routed from the host to the router, which passes back only replies, and
//! nothing is translated to the host's uplink. Everything a topology makes — two namespaces (with their
//! veths and nftables tables inside), the host end of the link, the route — is removed when it is
//! dropped, also when the test panics. Names and address blocks are unique per topology, so
//! tests run in parallel. Addresses: 100.64.0.0/10 (carrier-grade NAT space) for the link — the
//! server's own "private" address is the host end — and the client's network; 198.51.100.0/24 for
//! the client's public address; 203.0.113.0/24 for the server's public address, which exists only
//! inside the topology's namespaces.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::{skip, tool_missing};

static SLOTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The server's public address in a 1:1 NAT topology (inside the namespaces only).
pub const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// How the client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerPath {
    /// Routed: the client reaches every address of this host (its eth0, docker0, the link).
    Routed,
    /// A cloud 1:1 NAT: the server is reachable only at [`PUBLIC`], which the router translates
    /// to the host end of the link; its own (private) addresses are not reachable from outside.
    OneToOneNat,
}

/// What the path between client and server is, before it is built.
#[derive(Debug, Clone)]
pub struct PathSpec {
    server: ServerPath,
    drop_udp: Option<(u16, u16)>,
}

/// A client behind a masquerading router; see the module header.
pub struct ClientNetwork {
    id: String,
    /// The client's namespace (run programs there with [`ClientNetwork::command`]).
    pub client_ns: String,
    router_ns: String,
    host_if: String,
    lan: String,
    /// The address the client dials to reach the server.
    pub server_addr: IpAddr,
    /// The host end of the link (the server's own address on it).
    pub host_link_addr: Ipv4Addr,
    /// The client's own address (private, behind the router).
    pub client_addr: Ipv4Addr,
    /// The address the client's traffic appears from (the router's public address).
    pub client_public: Ipv4Addr,
    /// The DNS server in the client's namespace ([`ClientNetwork::resolve`]).
    dns: Mutex<Option<std::process::Child>>,
}

/// A client behind a NAT that reaches every address of this host.
pub fn client_behind_nat() -> PathSpec {
    PathSpec { server: ServerPath::Routed, drop_udp: None }
}

/// A client behind a NAT that reaches the server only at [`PUBLIC`] (a cloud's 1:1 NAT).
pub fn client_behind_nat_to_public_server() -> PathSpec {
    PathSpec { server: ServerPath::OneToOneNat, drop_udp: None }
}

impl PathSpec {
    /// A firewall on the path that drops UDP to ports `start`-`end` (both directions).
    pub fn dropping_udp(mut self, start: u16, end: u16) -> PathSpec {
        self.drop_udp = Some((start, end));
        self
    }

    /// A firewall on the path that drops all UDP (an office network that lets only TCP out).
    pub fn dropping_all_udp(self) -> PathSpec {
        self.dropping_udp(1, 65535)
    }

    /// Builds it; `None` (after a counted skip) when this host cannot (not root, no `ip` or
    /// `nft`). Panics on a failing step, after removing what was made.
    pub fn build(self) -> Option<ClientNetwork> {
        if tool_missing(std::path::Path::new("/usr/sbin/nft"), "apt-get install nftables; make deps-net")
            || tool_missing(std::path::Path::new("/usr/sbin/ip"), "apt-get install iproute2; make deps-net")
        {
            return None;
        }
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            skip("building network namespaces needs root");
            return None;
        }
        let slot = take_slot();
        let (a, b) = (64 + (slot >> 8) as u8, (slot & 0xff) as u8);
        let id = format!("{:05x}", u32::from(slot) * 16 + std::process::id() % 16);
        let host_link_addr = Ipv4Addr::new(100, a, b, 1);
        let client_addr = Ipv4Addr::new(100, a, b, 130);
        let net = ClientNetwork {
            client_ns: format!("astrtc-{id}-client"),
            router_ns: format!("astrtc-{id}-router"),
            host_if: format!("ath{id}"),
            lan: format!("100.{a}.{b}.128/25"),
            server_addr: match self.server {
                ServerPath::Routed => IpAddr::V4(host_link_addr),
                ServerPath::OneToOneNat => IpAddr::V4(PUBLIC),
            },
            host_link_addr,
            client_addr,
            client_public: Ipv4Addr::new(198, 51, 100, b),
            id,
            dns: Mutex::new(None),
        };
        net.create(&self, a, b);
        Some(net)
    }
}

/// A /24 of 100.64.0.0/10 not used by this process nor routed on this host.
fn take_slot() -> u16 {
    let mut taken = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    let routes = String::from_utf8_lossy(&Command::new("ip").args(["-4", "route", "show"]).output().unwrap().stdout)
        .into_owned()
        + &String::from_utf8_lossy(&Command::new("ip").args(["-4", "addr", "show"]).output().unwrap().stdout);
    let start = (std::process::id() as u16).wrapping_mul(97);
    for i in 0..16384u16 {
        let slot = start.wrapping_add(i) % 16384;
        let prefix = format!("100.{}.{}.", 64 + (slot >> 8), slot & 0xff);
        let public = format!("198.51.100.{} ", slot & 0xff);
        let same_public = taken.iter().any(|t| t & 0xff == slot & 0xff);
        if !taken.contains(&slot) && !same_public && !routes.contains(&prefix) && !routes.contains(&public) {
            taken.insert(slot);
            return slot;
        }
    }
    panic!("no free /24 in 100.64.0.0/10 for a test network");
}

/// Runs a command that must succeed.
fn run(args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{args:?} failed: {}{}", String::from_utf8_lossy(&out.stderr), stdin.unwrap_or(""));
}

/// This host's IPv4 addresses (the router may forward only to them).
fn host_addrs() -> Vec<String> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next().map(str::to_string))
        .filter(|a| a != "127.0.0.1")
        .collect()
}

impl ClientNetwork {
    fn create(&self, spec: &PathSpec, a: u8, b: u8) {
        let (cl, rt, id) = (self.client_ns.as_str(), self.router_ns.as_str(), self.id.as_str());
        let (router_wan, router_lan, client_if) = (format!("atr{id}"), format!("atl{id}"), format!("atc{id}"));
        let in_router = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", rt];
            all.extend_from_slice(args);
            run(&all, None)
        };
        run(&["ip", "netns", "add", rt], None);
        run(&["ip", "netns", "add", cl], None);
        // Host <-> router.
        run(&["ip", "link", "add", &self.host_if, "type", "veth", "peer", "name", &router_wan], None);
        run(&["ip", "link", "set", &router_wan, "netns", rt], None);
        run(&["ip", "addr", "add", &format!("{}/30", self.host_link_addr), "dev", &self.host_if], None);
        run(&["ip", "link", "set", &self.host_if, "up"], None);
        // Asterisk sends ICE checks (and, before ICE completes, its first DTLS flight) to the
        // client's private address: they go to the router, which drops them as the client's NAT
        // would. (A blackhole route would make sendto fail, which Asterisk's DTLS does not
        // survive — unlike the real case, where the datagram just goes nowhere.) The client's
        // public address leads to the router too.
        run(&["ip", "route", "add", &self.lan, "via", &format!("100.{a}.{b}.2")], None);
        run(&["ip", "route", "add", &self.client_public.to_string(), "via", &format!("100.{a}.{b}.2")], None);
        in_router(&["ip", "addr", "add", &format!("100.{a}.{b}.2/30"), "dev", &router_wan]);
        in_router(&["ip", "link", "set", &router_wan, "up"]);
        in_router(&["ip", "link", "set", "lo", "up"]);
        in_router(&["ip", "route", "add", "default", "via", &self.host_link_addr.to_string()]);
        in_router(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // Only replies (translated back by conntrack before routing) reach the client's public
        // address; anything else sent to it stops here instead of bouncing back to the host.
        in_router(&["ip", "route", "add", "blackhole", &self.client_public.to_string()]);
        // Router <-> client.
        run(
            &["ip", "link", "add", &router_lan, "netns", rt, "type", "veth", "peer", "name", &client_if, "netns", cl],
            None,
        );
        in_router(&["ip", "addr", "add", &format!("100.{a}.{b}.129/25"), "dev", &router_lan]);
        in_router(&["ip", "link", "set", &router_lan, "up"]);
        let in_client = |args: &[&str]| {
            let mut all = vec!["ip", "netns", "exec", cl];
            all.extend_from_slice(args);
            run(&all, None)
        };
        in_client(&["ip", "addr", "add", &format!("{}/25", self.client_addr), "dev", &client_if]);
        in_client(&["ip", "link", "set", &client_if, "up"]);
        in_client(&["ip", "link", "set", "lo", "up"]);
        in_client(&["ip", "route", "add", "default", "via", &format!("100.{a}.{b}.129")]);
        // The router's rules: masquerade with a random port per mapping, the path's firewall, and
        // forwarding only to this host (or, behind a 1:1 NAT, only what was translated).
        let drop = spec
            .drop_udp
            .map(|(s, e)| format!("udp dport {s}-{e} drop\n    udp sport {s}-{e} drop"))
            .unwrap_or_default();
        let (dnat, allow) = match spec.server {
            ServerPath::Routed => {
                (String::new(), format!("iifname \"{router_lan}\" ip daddr {{ {} }} accept", host_addrs().join(", ")))
            }
            ServerPath::OneToOneNat => (
                format!("ip daddr {PUBLIC} dnat to {}", self.host_link_addr),
                format!("iifname \"{router_lan}\" ct status dnat accept"),
            ),
        };
        let public = self.client_public;
        let rules = format!(
            "table ip astrtc {{\n  chain pre {{\n    type nat hook prerouting priority -100;\n    {dnat}\n  }}\n  \
             chain post {{\n    type nat hook postrouting priority 100;\n    oifname \"{router_wan}\" snat to {public} fully-random\n  }}\n  \
             chain forwarding {{\n    type filter hook forward priority 0; policy drop;\n    {drop}\n    \
             ct state established,related accept\n    {allow}\n  }}\n}}\n"
        );
        run(&["ip", "netns", "exec", rt, "nft", "-f", "-"], Some(&rules));
    }

    /// From now on, the path drops UDP to and from ports `start`-`end` (when the range is known
    /// only after the network was needed, e.g. for a TURN server's address in the spec).
    pub fn drop_udp(&self, start: u16, end: u16) {
        for dir in ["dport", "sport"] {
            let rule = format!("udp {dir} {start}-{end} drop");
            let mut args = vec!["ip", "netns", "exec", &self.router_ns, "nft", "insert", "rule", "ip", "astrtc"];
            args.extend(["forwarding", &rule]);
            run(&args, None);
        }
    }

    /// Makes `name` resolve to `addr` inside the client's namespace, for a browser that must use
    /// a name its certificate carries (Chromium maps `localhost` to loopback whatever the hosts
    /// file says): `/etc/netns/NS/hosts` (which `ip netns exec` mounts over `/etc/hosts`), and a
    /// DNS server in the namespace answering every A query with `addr` (pebble-challtestsrv on
    /// the namespace's loopback, named in `/etc/netns/NS/resolv.conf`). Measured: Chromium looks
    /// a TURN server's name up by DNS only, never in the hosts file, for TURN over UDP (no UDP
    /// relay at all without an answer); TURN over TCP fell back to the hosts file after 13 s.
    /// Returns false (after a counted skip) when pebble-challtestsrv is not installed.
    pub fn resolve(&self, name: &str, addr: IpAddr) -> bool {
        let server = std::path::Path::new("/usr/bin/pebble-challtestsrv");
        if tool_missing(server, "apt-get install pebble; make deps-acme") {
            return false;
        }
        let dir = std::path::Path::new("/etc/netns").join(&self.client_ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{addr} {name}\n")).unwrap();
        std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n").unwrap();
        let child = self
            .command(server)
            .args(["-defaultIPv4", &addr.to_string(), "-defaultIPv6", "", "-dns01", "127.0.0.1:53"])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-management", "127.0.0.1:8055"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        *self.dns.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let ss = self.command("ss").args(["-Hlun"]).output().unwrap();
            if String::from_utf8_lossy(&ss.stdout).contains("127.0.0.1:53 ") {
                return true;
            }
            assert!(std::time::Instant::now() < deadline, "the namespace's DNS server did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// `program args...` to run inside the client's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.client_ns]).arg(program);
        c
    }
}

impl Drop for ClientNetwork {
    fn drop(&mut self) {
        let public = self.client_public.to_string();
        if let Some(mut dns) = self.dns.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = dns.kill();
            let _ = dns.wait();
        }
        let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(&self.client_ns));
        // Deleting a namespace destroys its veths (and so their peers) and its nftables tables.
        for args in [
            vec!["ip", "netns", "del", self.client_ns.as_str()],
            vec!["ip", "netns", "del", self.router_ns.as_str()],
            vec!["ip", "link", "del", self.host_if.as_str()],
            vec!["ip", "route", "del", self.lan.as_str()],
            vec!["ip", "route", "del", &public],
        ] {
            let _ = Command::new(args[0]).args(&args[1..]).stderr(Stdio::null()).status();
        }
    }
}

/// A seat on a Docker network: a namespace whose only interface is a veth plugged into that
/// network's bridge, with an address of its subnet that no container there has (from the top;
/// Docker allocates from the bottom) — what a client container started with
/// `--network NAME` has. A browser there sees no other interface, so the Docker networks other
/// tests create and remove on the host cannot take its media path away mid-call. Removed (the
/// namespace, and with it both ends of the veth) when dropped, also when the test panics.
pub struct BridgeSeat {
    /// The namespace (run programs there with `ip netns exec`).
    pub ns: String,
}

impl BridgeSeat {
    /// Plugs a new namespace into Docker network `network`; `None` (after a counted skip) when
    /// this host cannot (not root, no `ip`). Panics on a failing step, after removing what was made.
    pub fn on_docker_network(network: &str) -> Option<BridgeSeat> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        if tool_missing(std::path::Path::new("/usr/sbin/ip"), "apt-get install iproute2; make deps-net") {
            return None;
        }
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            skip("building network namespaces needs root");
            return None;
        }
        remove_stale_seats();
        let format = "{{.Id}} {{range .IPAM.Config}}{{.Subnet}} {{end}}| {{range .Containers}}{{.IPv4Address}} {{end}}";
        let out = Command::new("docker").args(["network", "inspect", network, "--format", format]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "docker network inspect {network}: {}", String::from_utf8_lossy(&out.stderr));
        let (head, used) = text.trim().split_once('|').unwrap_or_else(|| panic!("unexpected inspect output: {text}"));
        let mut words = head.split_whitespace();
        let id = words.next().unwrap_or_else(|| panic!("no network id: {text}"));
        let subnet = words.find(|s| !s.contains(':')).unwrap_or_else(|| panic!("no IPv4 subnet: {text}"));
        let (base, len) = subnet.split_once('/').unwrap();
        let (base, len): (Ipv4Addr, u32) = (base.parse().unwrap(), len.parse().unwrap());
        assert!(len <= 28, "subnet {subnet} too small for a seat");
        // Addresses from the top of the subnet down (Docker hands them out from the bottom): the
        // first that no container on the network has and no other seat took.
        static TAKEN: std::sync::Mutex<BTreeSet<Ipv4Addr>> = std::sync::Mutex::new(BTreeSet::new());
        let used: Vec<&str> = used.split_whitespace().map(|a| a.split('/').next().unwrap_or(a)).collect();
        let top = (u32::from(base) | (u32::MAX >> len)) - 1;
        let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
        let addr = (0..8)
            .map(|i| Ipv4Addr::from(top - i))
            .find(|a| !used.contains(&a.to_string().as_str()) && !taken.contains(a))
            .unwrap_or_else(|| panic!("no free address at the top of {subnet}"));
        taken.insert(addr);
        drop(taken);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{:05x}{n:x}", std::process::id() & 0xfffff);
        let seat = BridgeSeat { ns: format!("astrtc-seat-{tag}") };
        let (host_end, seat_end) = (format!("asb{tag}"), format!("asn{tag}"));
        let bridge = format!("br-{}", &id[..12]);
        let cidr = format!("{addr}/{len}");
        let ns = seat.ns.as_str();
        run(&["ip", "netns", "add", ns], None);
        run(&["ip", "link", "add", &host_end, "type", "veth", "peer", "name", &seat_end, "netns", ns], None);
        run(&["ip", "link", "set", &host_end, "master", &bridge, "up"], None);
        for args in [
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "addr", "add", &cidr, "dev", &seat_end],
            vec!["ip", "link", "set", &seat_end, "up"],
        ] {
            let mut all = vec!["ip", "netns", "exec", ns];
            all.extend(args);
            run(&all, None);
        }
        Some(seat)
    }
}

/// Removes the seats of test processes that are gone (killed before their drop ran): a seat's
/// name carries its process id.
fn remove_stale_seats() {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    for name in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(tag) = name.strip_prefix("astrtc-seat-") else { continue };
        let pid = tag.get(..5).and_then(|h| u32::from_str_radix(h, 16).ok());
        let alive = |pid: u32| {
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .any(|p| p & 0xfffff == pid)
        };
        if pid.is_some_and(|pid| !alive(pid)) {
            let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for BridgeSeat {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).stderr(Stdio::null()).status();
    }
}
